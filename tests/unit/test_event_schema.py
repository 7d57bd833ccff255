"""The event schema is defined once (model/schema.py): the batch columns, the event log's table, validation's
field lists and the OpenAPI document all agree with it, so a new field cannot be half-added."""
from dataclasses import fields

from model import EventBatch
from model.schema import CONTEXT, EVENT_FIELDS, LOG_COLUMNS, REQUIRED, TOP_LEVEL, event_json_schema
from server import validation
from server.openapi import build_spec
from server.storage import Store


def test_every_batch_column_is_one_field_of_the_schema_and_back():
    assert sorted(f.batch for f in EVENT_FIELDS) == sorted(f.name for f in fields(EventBatch))
    assert len({f.name for f in EVENT_FIELDS}) == len(EVENT_FIELDS)


def test_the_event_log_after_every_migration_has_exactly_the_schemas_columns(tmp_path):
    store = Store(tmp_path)
    try:
        columns = [row[1] for row in store.db.execute("PRAGMA table_info(events)")]
    finally:
        store.close()
    assert columns[:2] == ["seq", "tenant_id"] and sorted(columns[2:]) == sorted(LOG_COLUMNS)


def test_validation_accepts_exactly_the_schemas_fields():
    assert validation.ROW_FIELDS == (*TOP_LEVEL, "context") and validation.CONTEXT_FIELDS == CONTEXT
    assert set(validation.COLUMN_FIELDS) == {f.name for f in EVENT_FIELDS}
    assert validation.REQUIRED == REQUIRED == ("user_id", "action")


def test_the_openapi_event_is_the_schemas():
    event = build_spec()["components"]["schemas"]["Event"]
    assert event == event_json_schema()
    assert set(event["properties"]) == {*TOP_LEVEL, "context"}
    assert set(event["properties"]["context"]["properties"]) == set(CONTEXT)
