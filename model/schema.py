"""The event schema, defined once: each field's wire name, where it sits (top level or ``context``), its limits,
the :class:`~model.events.EventBatch` column it becomes, and the event-log column that stores it.

Validation (``server/validation.py``), the OpenAPI document (``server/openapi.py``) and the SQLite log
(``server/storage.py``) take their field lists and limits from here. A new field is added here, to
``EventBatch``, and to the log by a new migration (``server/migrations.py``); a test checks that all of them agree.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .contexts import DEVICES

MAX_ID_CHARS = 128
MAX_QUERY_CHARS = 512
MAX_TZ_OFFSET_MIN = 14 * 60


@dataclass(frozen=True)
class EventField:
    name: str  # on the wire (inside ``context`` where ``in_context``)
    batch: str  # the EventBatch column
    column: str  # the event log's column
    json_schema: dict[str, Any]
    required: bool = False
    in_context: bool = False


EVENT_FIELDS: tuple[EventField, ...] = (
    EventField("user_id", "user_ids", "user_id", {
        "type": "string", "maxLength": MAX_ID_CHARS, "description": "Your pseudonymous id (no e-mail or phone)"},
        required=True),
    EventField("action", "actions", "action", {"type": "string", "description": "One of the tenant's actions"},
               required=True),
    EventField("ts", "ts", "ts", {"type": "number", "description": "Seconds since the epoch; defaults to now"}),
    EventField("event_id", "event_ids", "event_id", {
        "type": "string", "maxLength": MAX_ID_CHARS, "description": "Makes retries idempotent"}),
    EventField("item_id", "item_ids", "item_id", {"type": "string", "maxLength": MAX_ID_CHARS}),
    EventField("category", "categories", "category", {"type": "string", "maxLength": MAX_ID_CHARS}),
    EventField("query", "queries", "query", {"type": "string", "maxLength": MAX_QUERY_CHARS}),
    EventField("device", "device", "device", {"type": "string", "enum": list(DEVICES)}, in_context=True),
    EventField("segment", "segment", "segment", {"type": "string", "description": "One of the tenant's segments"},
               in_context=True),
    EventField("tz_offset_min", "tz_offset_min", "tz_offset_min", {
        "type": "integer", "minimum": -MAX_TZ_OFFSET_MIN, "maximum": MAX_TZ_OFFSET_MIN,
        "description": "Minutes east of UTC, for the daypart"}, in_context=True),
)

TOP_LEVEL = tuple(f.name for f in EVENT_FIELDS if not f.in_context)
CONTEXT = tuple(f.name for f in EVENT_FIELDS if f.in_context)
REQUIRED = tuple(f.name for f in EVENT_FIELDS if f.required)
LOG_COLUMNS = tuple(f.column for f in EVENT_FIELDS)


def event_json_schema() -> dict[str, Any]:
    """One event as a row of ``POST /v1/events`` (JSON Schema, as OpenAPI 3.0 takes it)."""
    return {
        "type": "object",
        "required": list(REQUIRED),
        "additionalProperties": False,
        "properties": {
            **{f.name: f.json_schema for f in EVENT_FIELDS if not f.in_context},
            "context": {
                "type": "object",
                "additionalProperties": False,
                "properties": {f.name: f.json_schema for f in EVENT_FIELDS if f.in_context},
            },
        },
    }
