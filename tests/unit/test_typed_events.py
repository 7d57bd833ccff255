"""The typed msgpack decoding of row-wise ingest bodies against the generic path: the same bodies accepted, the
same batches built, the same problems reported."""
import dataclasses

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model import TenantConfig
from server.codecs import JSON, MSGPACK, decode
from server.errors import ApiError
from server.typed_events import decode_rows
from server.validation import parse_event_body, parse_events

NOW = 1_700_000_000.0
CFG = TenantConfig(segments=("vip",))


def _outcome(fn):
    try:
        return "batch", fn()
    except ApiError as exc:
        return "error", (exc.status, exc.code, exc.message, exc.details)


def _same(a, b) -> None:
    assert a[0] == b[0], (a, b)
    if a[0] == "error":
        assert a[1] == b[1]
        return
    for field in dataclasses.fields(a[1]):
        left, right = getattr(a[1], field.name), getattr(b[1], field.name)
        assert left.dtype == right.dtype, field.name
        assert np.array_equal(left, right, equal_nan=left.dtype.kind == "f"), field.name
        assert [type(v) for v in left.tolist()] == [type(v) for v in right.tolist()], field.name


def _both(raw: bytes):
    typed = _outcome(lambda: parse_event_body(raw, MSGPACK, CFG, NOW, 1000))
    generic = _outcome(lambda: parse_events(decode(raw, MSGPACK), CFG, NOW, 1000))
    _same(typed, generic)
    return typed


# Values of every kind that a client might send in any field, valid or not.
_any_value = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([NOW, NOW - 60, NOW + 1e9, NOW * 1000, 60, -5, 0.5]),
    st.sampled_from(["u1", "view", "purchase", "add_to_cart", "mobile", "vip", "other", "", "a@b.co",
                     "+44 20 7946 0958", "x" * 129, "ünïcode", "tab\there", "i7", "c3"]),
    st.text(max_size=12), st.binary(max_size=4), st.lists(st.integers(-5, 5), max_size=2),
    st.dictionaries(st.sampled_from(["device", "x"]), st.sampled_from(["mobile", 1]), max_size=2),
)
_fields = st.sampled_from(["user_id", "action", "ts", "event_id", "item_id", "category", "query", "context",
                           "unknown"])
_context = st.one_of(st.none(), st.integers(-5, 5), st.dictionaries(
    st.sampled_from(["device", "segment", "tz_offset_min", "other"]), _any_value, max_size=3))
_valid_event = st.fixed_dictionaries(
    {"user_id": st.sampled_from(["u1", "u2", 42, "user:9"]), "action": st.sampled_from(["view", "purchase"])},
    optional={"ts": st.sampled_from([NOW, NOW - 3600, int(NOW) - 10]), "event_id": st.sampled_from(["e1", "e2", 7]),
              "item_id": st.sampled_from(["i1", 5]), "category": st.sampled_from(["c1", "c2"]),
              "query": st.sampled_from(["red shoes", None]),
              "context": st.fixed_dictionaries({}, optional={
                  "device": st.sampled_from(["mobile", "desktop"]), "segment": st.sampled_from(["vip", None]),
                  "tz_offset_min": st.sampled_from([0, 60, -300])})},
)
_event = st.one_of(
    _valid_event,
    st.builds(lambda e, k, v: {**e, k: v}, _valid_event, _fields, _any_value),
    st.builds(lambda e, c: {**e, "context": c}, _valid_event, _context),
    st.builds(lambda e, k: {x: y for x, y in e.items() if x != k}, _valid_event, _fields),
    _any_value,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_event, min_size=0, max_size=6))
def test_typed_decoding_agrees_with_the_generic_path(events):
    _both(msgpack.packb({"events": events}, use_bin_type=True))


@settings(max_examples=100, deadline=None)
@given(st.one_of(_any_value, st.dictionaries(st.sampled_from(["events", "columns", "other"]), _any_value,
                                             max_size=2)))
def test_any_body_shape_agrees_with_the_generic_path(body):
    _both(msgpack.packb(body, use_bin_type=True))


def test_well_formed_rows_take_the_typed_path():
    events = [{"user_id": "u1", "action": "view", "ts": NOW, "item_id": "i1", "context": {"device": "mobile"}},
              {"user_id": 7, "action": "purchase", "query": "shoes"}]
    columns = decode_rows(msgpack.packb({"events": events}))
    assert columns is not None
    assert columns["user_id"] == ["u1", 7] and columns["device"] == ["mobile", None]
    assert columns["query"] == [None, "shoes"] and columns["ts"] == [NOW, None]
    kind, batch = _both(msgpack.packb({"events": events}))
    assert kind == "batch" and batch.user_ids.tolist() == ["u1", "7"]


@pytest.mark.parametrize("body", [
    {"events": [{"user_id": "u1", "action": "view", "ts": True}]},  # a bool is no number
    {"events": [{"user_id": "u1", "action": "view", "colour": "red"}]},
    {"events": [{"action": "view"}]},
    {"events": []},
    {"columns": {"user_id": ["u1"], "action": ["view"]}},
    {"events": [{"user_id": "u1", "action": "view"}], "extra": 1},
])
def test_other_bodies_go_the_generic_way(body):
    raw = msgpack.packb(body)
    assert decode_rows(raw) is None
    _both(raw)


def test_trailing_bytes_truncation_bad_text_and_deep_nesting_are_malformed_either_way():
    raw = msgpack.packb({"events": [{"user_id": "AB", "action": "view"}]})
    bad_text = [raw.replace(b"\xa2AB", b"\xa2\xed\xa0"), raw.replace(b"\xa2AB", b"\xa2\xc0A")]  # not UTF-8
    deep = b"\x81\xa6events" + b"\x91" * 100_000 + b"\xc0"
    for bad in (raw + b"\x00", raw[:-3], b"", *bad_text, deep):
        kind, (status, code, *_) = _both(bad)
        assert (kind, status, code) == ("error", 400, "malformed_body")


def test_too_many_events_is_413_on_the_typed_path():
    raw = msgpack.packb({"events": [{"user_id": "u1", "action": "view"}] * 11})
    with pytest.raises(ApiError) as info:
        parse_event_body(raw, MSGPACK, CFG, NOW, 10)
    assert (info.value.status, info.value.code) == (413, "too_many_items")


def test_json_bodies_keep_the_generic_path():
    raw = b'{"events": [{"user_id": "u1", "action": "view", "ts": 1700000000}]}'
    batch = parse_event_body(raw, JSON, CFG, NOW, 10)
    assert batch.ts.tolist() == [NOW]
