"""Wire bodies to validated columns: every bad (index, field) is reported, nothing half-applied."""
from __future__ import annotations

import base64
import math
import re
from typing import Any, Callable, NamedTuple

import numpy as np

from model import DEVICES, EventBatch, TenantConfig, schema
from model.config import SIGNAL_TYPES
from model.schema import MAX_ID_CHARS, MAX_QUERY_CHARS, MAX_TZ_OFFSET_MIN

from .codecs import MSGPACK, decode
from .errors import ApiError, invalid_field
from .typed_events import decode_rows

PAST_WINDOW_S = 7 * 86400.0
FUTURE_SKEW_S = 300.0

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# Phone numbers: international form (+ or 00 then 8-15 digits), or digits broken up by the separators
# people write phones with. Plain digit strings stay valid ids: numeric user ids are common.
_PHONE_INTL = re.compile(r"^(\+|00)[\d\s().-]{7,22}$")
_PHONE_SEPARATED = re.compile(r"^\(?\d{2,5}\)?([\s.-]\(?\d{2,5}\)?){2,5}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Ids made only of these characters can be neither e-mail addresses nor phone numbers.
_PLAIN_ID = re.compile(rf"(?!00)[A-Za-z0-9_:]{{1,{MAX_ID_CHARS}}}")

ROW_FIELDS = (*schema.TOP_LEVEL, "context")
CONTEXT_FIELDS = schema.CONTEXT
COLUMN_FIELDS = schema.TOP_LEVEL + schema.CONTEXT
STATE_FIELDS = ("category", "query", "page")
REQUIRED = schema.REQUIRED

Problem = tuple[int, str, str]


def _not_unicode(text: str) -> bool:
    """True for text that holds a lone UTF-16 surrogate (JSON escapes or a percent-decoded path can)."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


_NOT_UNICODE = "must be valid Unicode text (no lone surrogates)"


def _finite_number(v: Any) -> bool:
    """An int or float that is a finite float64 (JSON integers can have hundreds of digits)."""
    if not _is_number(v):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def user_id_problem(value: Any) -> str | None:
    """Why ``value`` is not an acceptable pseudonymous user id, or None."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return "must be a string"
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        return "integer out of range"
    text = str(value)
    if not 1 <= len(text) <= MAX_ID_CHARS:
        return f"must be 1 to {MAX_ID_CHARS} characters"
    if _not_unicode(text):
        return _NOT_UNICODE
    if _CONTROL.search(text):
        return "must not contain control characters"
    if _EMAIL.match(text):
        return "looks like an e-mail address; send your own pseudonymous id instead"
    digits = sum(ch.isdigit() for ch in text)
    if 7 <= digits <= 15 and (_PHONE_INTL.match(text) or _PHONE_SEPARATED.match(text)):
        return "looks like a phone number; send your own pseudonymous id instead"
    return None


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _optional_text(max_chars: int, allow_int: bool) -> Callable[[Any], str | None]:
    def problem(value: Any) -> str | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int) if allow_int else str):
            return "must be a string" + (" or an integer" if allow_int else "")
        if isinstance(value, str) and len(value) > max_chars:
            return f"must be at most {max_chars} characters"
        if isinstance(value, str) and _not_unicode(value):
            return _NOT_UNICODE
        if isinstance(value, int) and not -(2**63) <= value < 2**64:
            return "integer out of range"
        return None

    return problem


_ID_TEXT = _optional_text(MAX_ID_CHARS, allow_int=True)
_QUERY_TEXT = _optional_text(MAX_QUERY_CHARS, allow_int=False)


def _all_valid(values: list, check: Callable[[list], bool] | None, optional: bool) -> bool:
    """Whole-column check at C speed for the common case; any doubt goes to the per-value check."""
    if optional and values.count(None) == len(values):
        return True
    if check is None:
        return False
    try:
        return bool(check(values))
    except (TypeError, ValueError, OverflowError):
        return False


def _check_column(
    values: list,
    field: str,
    problem: Callable[[Any], str | None],
    out: list[Problem],
    fast: Callable | None = None,
    optional: bool = True,
) -> None:
    if _all_valid(values, fast, optional):
        return
    # Ids repeat a lot within a batch; each distinct value is checked once.
    verdicts: dict[Any, str | None] = {}
    for i, v in enumerate(values):
        key = (type(v), v) if isinstance(v, (str, int, float, type(None))) else None
        if key is None:
            reason = problem(v)
        elif key in verdicts:
            reason = verdicts[key]
        else:
            reason = verdicts[key] = problem(v)
        if reason:
            out.append((i, field, reason))


def _rows_to_columns(events: Any, out: list[Problem]) -> dict[str, list]:
    if not isinstance(events, list):
        raise invalid_field("events", "must be a list of event objects")
    if all(type(e) is dict for e in events):
        fields = set().union(*events)
        if not fields.issubset(ROW_FIELDS):
            for i, event in enumerate(events):
                out.extend((i, str(k)[:64], "unknown field") for k in event if k not in ROW_FIELDS)
        rows = events
    else:
        rows = []
        for i, event in enumerate(events):
            if type(event) is dict:
                out.extend((i, str(k)[:64], "unknown field") for k in event if k not in ROW_FIELDS)
                rows.append(event)
            else:
                out.append((i, "", "must be an object"))
                rows.append({})
    columns = {name: [e.get(name) for e in rows] for name in ROW_FIELDS[:-1]}
    contexts = [e.get("context") for e in rows]
    if contexts.count(None) == len(contexts):
        for name in CONTEXT_FIELDS:
            columns[name] = [None] * len(rows)
        return columns
    clean = []
    for i, ctx in enumerate(contexts):
        if ctx is not None and type(ctx) is not dict:
            out.append((i, "context", "must be an object"))
            ctx = None
        elif ctx:
            out.extend((i, f"context.{str(k)[:64]}", "unknown field") for k in ctx if k not in CONTEXT_FIELDS)
        clean.append(ctx or {})
    for name in CONTEXT_FIELDS:
        columns[name] = [c.get(name) for c in clean]
    return columns


def _columns(raw: Any) -> tuple[dict[str, list], int]:
    if not isinstance(raw, dict):
        raise invalid_field("columns", "must map field names to lists")
    unknown = [k for k in raw if k not in COLUMN_FIELDS]
    if unknown:
        raise invalid_field(f"columns.{str(unknown[0])[:64]}", f"unknown column; known: {', '.join(COLUMN_FIELDS)}")
    for required in REQUIRED:
        if required not in raw:
            raise invalid_field(f"columns.{required}", "is required")
    lengths = set()
    for name, values in raw.items():
        if not isinstance(values, list):
            raise invalid_field(f"columns.{name}", "must be a list")
        lengths.add(len(values))
    if len(lengths) != 1:
        raise invalid_field("columns", "all columns must have the same length")
    n = lengths.pop()
    return {name: raw.get(name) or [None] * n for name in COLUMN_FIELDS}, n


def parse_events(body: Any, config: TenantConfig, now_s: float, max_items: int) -> EventBatch:
    """Validate an ingest body (row-wise ``events`` or column-wise ``columns``) into an EventBatch."""
    if not isinstance(body, dict):
        raise invalid_field("body", "must be an object with 'events' or 'columns'")
    extra = [k for k in body if k not in ("events", "columns")]
    if extra or ("events" in body) == ("columns" in body):
        raise invalid_field("body", "must have exactly one of 'events' (rows) or 'columns'")
    problems: list[Problem] = []
    row_form = "events" in body
    if row_form:
        n = len(body["events"]) if isinstance(body["events"], list) else 0
        if n > max_items:
            raise _too_many(n, max_items)
        columns = _rows_to_columns(body["events"], problems)
    else:
        columns, n = _columns(body["columns"])
        if n > max_items:
            raise _too_many(n, max_items)
    if n == 0:
        raise invalid_field("events", "must hold at least one event")
    return _checked_batch(columns, n, row_form, problems, config, now_s)


def parse_event_body(raw: bytes, fmt: str, config: TenantConfig, now_s: float, max_items: int) -> EventBatch:
    """:func:`parse_events` of an ingest body as it came (inflated): a well-formed row-wise msgpack body is decoded
    straight into typed columns (``server/typed_events.py``); any other goes through :func:`decode`."""
    columns = decode_rows(raw) if fmt == MSGPACK else None
    if columns is None:
        return parse_events(decode(raw, fmt), config, now_s, max_items)
    n = len(columns["user_id"])
    if n > max_items:
        raise _too_many(n, max_items)
    return _checked_batch(columns, n, True, [], config, now_s)


def _checked_batch(columns: dict[str, list], n: int, row_form: bool, problems: list[Problem], config: TenantConfig,
                   now_s: float) -> EventBatch:
    """The batch of ``n`` events in ``columns``, once every value passes its check (400 listing all that fail,
    with ``problems`` found before)."""
    vocab = {a: i for i, a in enumerate(config.actions)}
    segments = {s: i + 1 for i, s in enumerate(config.segments)}
    devices = {d: i for i, d in enumerate(DEVICES)}

    def required(problem):
        return lambda v: "is required" if v is None else problem(v)

    def member(choices: dict, what: str):
        def problem(v):
            if v is None or (isinstance(v, str) and v in choices):
                return None
            shown = ", ".join(list(choices)[:12]) or "(none configured)"
            return f"unknown {what}; one of: {shown}"

        return problem

    earliest = 0.0 if config.allow_backfill else now_s - PAST_WINDOW_S

    def ts_problem(v):
        if v is None:
            return None
        if not _finite_number(v):
            return "must be a finite number of seconds since the epoch"
        if v > now_s + FUTURE_SKEW_S:
            if v > 1e11:
                return "looks like milliseconds; send seconds since the epoch"
            return f"is more than {FUTURE_SKEW_S:g} s in the future"
        if v < earliest:
            return "is more than 7 days old; enable allow_backfill in the tenant config to send history"
        return None

    def tz_problem(v):
        if v is None:
            return None
        if not isinstance(v, int) or isinstance(v, bool) or abs(v) > MAX_TZ_OFFSET_MIN:
            return f"must be an integer number of minutes in [-{MAX_TZ_OFFSET_MIN}, {MAX_TZ_OFFSET_MIN}]"
        return None

    def numbers_within(lo: float, hi: float, integers: bool = False):
        def check(values):
            if not set(map(type, values)) <= ({int} if integers else {int, float}):  # no bool, whose type is not int
                return False
            arr = np.array(values, dtype=np.float64)
            return bool(np.isfinite(arr).all() and (arr >= lo).all() and (arr <= hi).all())

        return check

    def members(choices):
        return lambda values: set(values) <= choices.keys() | {None}

    def ascii_texts(max_chars: int):
        def check(values):
            texts = [v for v in values if v is not None]
            return (set(map(type, texts)) <= {str} and max(map(len, texts), default=0) <= max_chars
                    and "".join(texts).isascii())  # ASCII text holds no lone surrogate

        return check

    fast = {
        "user_id": lambda values: all(map(_PLAIN_ID.fullmatch, values)),
        "action": lambda values: set(values) <= vocab.keys(),
        "ts": lambda values: numbers_within(earliest, now_s + FUTURE_SKEW_S)([v for v in values if v is not None]),
        "device": members(devices),
        "segment": members(segments),
        "event_id": ascii_texts(MAX_ID_CHARS),
        "item_id": ascii_texts(MAX_ID_CHARS),
        "category": ascii_texts(MAX_ID_CHARS),
        "query": ascii_texts(MAX_QUERY_CHARS),
        "tz_offset_min": lambda values: numbers_within(-MAX_TZ_OFFSET_MIN, MAX_TZ_OFFSET_MIN, True)(
            [v for v in values if v is not None]
        ),
    }
    checks = {
        "user_id": required(user_id_problem),
        "action": required(member(vocab, "action")),
        "ts": ts_problem,
        "event_id": _ID_TEXT,
        "item_id": _ID_TEXT,
        "category": _ID_TEXT,
        "query": _QUERY_TEXT,
        "device": member(devices, "device"),
        "segment": member(segments, "segment"),
        "tz_offset_min": tz_problem,
    }
    for name, check in checks.items():
        wire_name = f"context.{name}" if row_form and name in CONTEXT_FIELDS else name
        _check_column(columns[name], wire_name, check, problems, fast.get(name), optional=name not in REQUIRED)
    if problems:
        problems.sort(key=lambda p: p[0])
        details = [{"index": i, "field": f, "reason": r} for i, f, r in problems]
        bad = len({p[0] for p in problems})
        raise ApiError(400, "invalid_event", f"{bad} of {n} events are invalid; nothing was accepted", details)

    def codes(values, table, default):
        return [default if v is None else table[v] for v in values]

    def text(values):
        return [None if v is None else str(v) for v in values]

    return EventBatch.build(
        user_ids=[str(u) for u in columns["user_id"]],
        actions=codes(columns["action"], vocab, 0),
        ts=[now_s if t is None else float(t) for t in columns["ts"]],
        device=codes(columns["device"], devices, devices["other"]),
        segment=codes(columns["segment"], segments, 0),
        tz_offset_min=[0 if v is None else v for v in columns["tz_offset_min"]],
        event_ids=text(columns["event_id"]),
        item_ids=text(columns["item_id"]),
        categories=text(columns["category"]),
        queries=columns["query"],
    )


def _too_many(n: int, limit: int, field: str = "events") -> ApiError:
    return ApiError(
        413, "too_many_items", f"{n} {field} in one request; send at most {limit}", [{"field": field, "reason": "too many"}]
    )


def parse_score_request(body: Any, max_items: int) -> tuple[list[str], bool, list[dict[str, str] | None]]:
    """Validate a score body into the user ids in request order, the explain flag and each user's page state."""
    if not isinstance(body, dict):
        raise invalid_field("body", "must be an object with 'users'")
    extra = [k for k in body if k not in ("users", "explain")]
    if extra:
        raise invalid_field(str(extra[0])[:64], "unknown field")
    users = body.get("users")
    if not isinstance(users, list) or not users:
        raise invalid_field("users", "must be a non-empty list of {user_id, state?} objects")
    if len(users) > max_items:
        raise ApiError(413, "too_many_items", f"{len(users)} users in one request; send at most {max_items}")
    explain = body.get("explain", False)
    if not isinstance(explain, bool):
        raise invalid_field("explain", "must be true or false")
    # The common body, only plain string ids, checked at C speed (as event columns are); anything else below.
    if all(type(user) is dict and len(user) == 1 for user in users):
        ids = [user.get("user_id") for user in users]
        if all(type(uid) is str for uid in ids) and all(map(_PLAIN_ID.fullmatch, ids)):
            return ids, explain, [None] * len(ids)
    problems: list[dict[str, Any]] = []
    ids: list[str] = []
    hints: list[dict[str, str] | None] = []
    for i, user in enumerate(users):
        if not isinstance(user, dict):
            problems.append({"index": i, "field": "", "reason": "must be an object"})
            continue
        for key in user:
            if key not in ("user_id", "state"):
                problems.append({"index": i, "field": str(key)[:64], "reason": "unknown field"})
        reason = user_id_problem(user.get("user_id")) if "user_id" in user else "is required"
        if reason:
            problems.append({"index": i, "field": "user_id", "reason": reason})
        else:
            ids.append(str(user["user_id"]))
        state = user.get("state")
        hints.append({str(k): v for k, v in state.items() if v is not None} if isinstance(state, dict) else None)
        if state is not None:
            if not isinstance(state, dict):
                problems.append({"index": i, "field": "state", "reason": "must be an object"})
            else:
                for key, value in state.items():
                    if key not in STATE_FIELDS:
                        problems.append({"index": i, "field": f"state.{str(key)[:64]}", "reason": "unknown field"})
                    elif _QUERY_TEXT(value):
                        problems.append({"index": i, "field": f"state.{key}", "reason": _QUERY_TEXT(value)})
    if problems:
        raise ApiError(400, "invalid_request", "some users are invalid; nothing was scored", problems)
    return ids, explain, hints


# In funnel order, from delivery to the outcome: the third party's system got the signal (received), acted on it
# (handled: showed the discount, opened the chat), the user saw it, clicked, converted; or dismissed it.
FEEDBACK_OUTCOMES = ("received", "handled", "shown", "clicked", "converted", "dismissed")


def parse_feedback(body: Any, max_items: int, now_s: float) -> list[tuple[str, str, float]]:
    """Validate a feedback body into (signal_id, outcome, ts) reports; a signal's steps may come in several."""
    if not isinstance(body, dict) or set(body) != {"feedback"}:
        raise invalid_field("body", "must be an object with only 'feedback'")
    items = body["feedback"]
    if not isinstance(items, list) or not items:
        raise invalid_field("feedback", "must be a non-empty list of {signal_id, outcome, ts?} objects")
    if len(items) > max_items:
        raise _too_many(len(items), max_items, "feedback")
    problems: list[dict[str, Any]] = []
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            problems.append({"index": i, "field": "", "reason": "must be an object"})
            continue
        problems += [{"index": i, "field": str(k)[:64], "reason": "unknown field"}
                     for k in item if k not in ("signal_id", "outcome", "ts")]
        signal_id, outcome, ts = item.get("signal_id"), item.get("outcome"), item.get("ts", now_s)
        if not isinstance(signal_id, str) or not 1 <= len(signal_id) <= MAX_ID_CHARS or _not_unicode(signal_id):
            problems.append({"index": i, "field": "signal_id", "reason": "must be the signal_id of a signal"})
        if outcome not in FEEDBACK_OUTCOMES:
            problems.append({"index": i, "field": "outcome", "reason": f"must be one of {list(FEEDBACK_OUTCOMES)}"})
        if not _finite_number(ts):
            problems.append({"index": i, "field": "ts", "reason": "must be seconds since the epoch"})
        out.append((signal_id, outcome, float(ts) if _finite_number(ts) else now_s))
    if problems:
        raise ApiError(400, "invalid_feedback", "some feedback is invalid; none was recorded", problems)
    return out


def parse_subscription(body: Any) -> tuple[str, list[str] | None]:
    """Validate a subscription body into (url, types or None for every type); the URL's target is checked apart."""
    if not isinstance(body, dict):
        raise invalid_field("body", "must be an object with 'url' and optional 'types'")
    extra = [k for k in body if k not in ("url", "types")]
    if extra:
        raise invalid_field(str(extra[0])[:64], "unknown field")
    if not isinstance(body.get("url"), str):
        raise invalid_field("url", "is required: the https URL signals are POSTed to")
    types = body.get("types")
    if types is not None:
        if not isinstance(types, list) or not types or not all(isinstance(t, str) for t in types):
            raise invalid_field("types", f"must be a non-empty list of signal types: {list(SIGNAL_TYPES)}")
        unknown = sorted(set(types) - set(SIGNAL_TYPES))
        if unknown:
            raise invalid_field("types", f"unknown signal types {unknown[:5]}; known: {list(SIGNAL_TYPES)}")
        types = sorted(set(types))
    return body["url"], types


class Cursor(NamedTuple):
    """A pull position: the tenant's own (``shared`` False), or the log-wide one older nudges handed out."""

    position: int
    shared: bool = False


_CURSOR_DIGITS = 18  # below 2**63: SQLite's integers


def encode_cursor(position: int) -> str:
    """An opaque pull cursor for a position in the tenant's signal log."""
    return base64.urlsafe_b64encode(f"s2:{position}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> Cursor | None:
    if len(cursor) > 64:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (ValueError, UnicodeDecodeError):
        return None
    prefix, _, digits = text.partition(":")
    if prefix not in ("s1", "s2") or not (digits.isascii() and digits.isdigit() and len(digits) <= _CURSOR_DIGITS):
        return None
    return Cursor(int(digits), shared=prefix == "s1")


def parse_pull_query(query: Any, max_limit: int = 1000) -> tuple[Cursor, int, float]:
    """``after``, ``limit`` and ``wait_s`` of ``GET /v1/signals`` (defaults: the start, 100, no wait)."""
    extra = [k for k in query if k not in ("after", "limit", "wait_s")]
    if extra:
        raise invalid_field(str(extra[0])[:64], "unknown query parameter")
    after = Cursor(0)
    if query.get("after"):
        decoded = _decode_cursor(query["after"])
        if decoded is None:
            raise invalid_field("after", "is not a cursor this server gave out; use the 'next' of a previous answer")
        after = decoded
    try:
        limit = int(query.get("limit", 100))
        wait_s = float(query.get("wait_s", 0))
    except ValueError:
        raise invalid_field("limit" if "limit" in query else "wait_s", "must be a number") from None
    if not 1 <= limit <= max_limit:
        raise invalid_field("limit", f"must lie in [1, {max_limit}]")
    if not (math.isfinite(wait_s) and wait_s >= 0):
        raise invalid_field("wait_s", "must be a number of seconds >= 0")
    return after, limit, wait_s


def parse_histogram_query(query: Any, max_bins: int = 100) -> int:
    """``bins`` of ``GET /v1/scores/histogram`` (default 20)."""
    extra = [k for k in query if k != "bins"]
    if extra:
        raise invalid_field(str(extra[0])[:64], "unknown query parameter")
    raw = query.get("bins", "20")
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 6 and 1 <= int(raw) <= max_bins):
        raise invalid_field("bins", f"must be a whole number in [1, {max_bins}]")
    return int(raw)
