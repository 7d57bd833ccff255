import pytest

from model import TenantConfig
from server.errors import ApiError
from server.validation import (
    _ID_TEXT, _QUERY_TEXT, MAX_ID_CHARS, MAX_QUERY_CHARS, parse_events, parse_score_request, user_id_problem,
)

NOW = 1_700_000_000.0
CFG = TenantConfig(segments=("vip",))


def invalid(body, config=CFG):
    with pytest.raises(ApiError) as info:
        parse_events(body, config, NOW, 10_000)
    return info.value


@pytest.mark.parametrize("uid", ["alice@example.com", "a.b+c@mail.co.uk"])
def test_user_id_rejects_email_addresses(uid):
    assert "e-mail" in user_id_problem(uid)


@pytest.mark.parametrize("uid", ["+33 6 12 34 56 78", "+14155552671", "(415) 555-2671", "0044 20 7946 0958", "06-12-34-56-78"])
def test_user_id_rejects_phone_numbers(uid):
    assert "phone" in user_id_problem(uid)


@pytest.mark.parametrize("uid", ["543462", "u_1f3a9", "c0ffee-42", 1234567890123, "session:9f8e"])
def test_user_id_accepts_pseudonymous_ids(uid):
    assert user_id_problem(uid) is None


def test_parse_events_lists_every_bad_index_and_field():
    err = invalid(
        {
            "events": [
                {"user_id": "ok", "action": "view"},
                {"user_id": "x@y.com", "action": "fly"},
                {"action": "view", "ts": "yesterday"},
                {"user_id": "u", "action": "view", "context": {"device": "fridge", "tz_offset_min": 10_000}},
                {"user_id": "u", "action": "view", "colour": "red"},
                "not an object",
            ]
        }
    )
    assert err.status == 400 and err.code == "invalid_event"
    got = {(d["index"], d["field"]) for d in err.details}
    assert got == {
        (1, "user_id"), (1, "action"), (2, "user_id"), (2, "ts"), (3, "context.device"),
        (3, "context.tz_offset_min"), (4, "colour"), (5, ""), (5, "user_id"), (5, "action"),
    }


def test_parse_events_checks_the_time_window():
    err = invalid({"events": [
        {"user_id": "a", "action": "view", "ts": NOW - 8 * 86400},
        {"user_id": "b", "action": "view", "ts": NOW + 3600},
        {"user_id": "c", "action": "view", "ts": NOW * 1000},
        {"user_id": "d", "action": "view", "ts": float("nan")},
    ]})
    reasons = {d["index"]: d["reason"] for d in err.details}
    assert "7 days" in reasons[0] and "future" in reasons[1] and "milliseconds" in reasons[2] and "finite" in reasons[3]
    backfill = TenantConfig(allow_backfill=True)
    assert len(parse_events({"events": [{"user_id": "a", "action": "view", "ts": NOW - 30 * 86400}]}, backfill, NOW, 10)) == 1


def test_parse_events_rows_and_columns_give_the_same_batch():
    rows = parse_events({"events": [
        {"user_id": "a", "action": "view", "ts": NOW - 5, "event_id": "e1", "context": {"device": "mobile", "segment": "vip"}},
        {"user_id": 42, "action": "purchase", "item_id": 7},
    ]}, CFG, NOW, 10)
    cols = parse_events({"columns": {
        "user_id": ["a", 42], "action": ["view", "purchase"], "ts": [NOW - 5, None], "event_id": ["e1", None],
        "device": ["mobile", None], "segment": ["vip", None], "item_id": [None, 7],
    }}, CFG, NOW, 10)
    for field in ("user_ids", "actions", "ts", "device", "segment", "event_ids", "item_ids"):
        assert getattr(rows, field).tolist() == getattr(cols, field).tolist(), field
    assert rows.user_ids.tolist() == ["a", "42"] and rows.ts[1] == NOW and rows.segment.tolist() == [1, 0]


def test_parse_events_column_errors_name_the_column():
    assert invalid({"columns": {"user_id": ["a"], "action": ["view", "view"]}}).details[0]["field"] == "columns"
    assert invalid({"columns": {"user_id": ["a"]}}).details[0]["field"] == "columns.action"
    assert invalid({"columns": {"user_id": ["a"], "action": ["view"], "nope": [1]}}).details[0]["field"] == "columns.nope"
    err = invalid({"columns": {"user_id": ["a", "b"], "action": ["view", "dance"], "segment": [None, "gold"]}})
    assert {(d["index"], d["field"]) for d in err.details} == {(1, "action"), (1, "segment")}


def test_parse_events_rejects_bodies_of_the_wrong_shape():
    for body in ([], {"events": "x"}, {"events": []}, {"events": [], "columns": {}}, {"evnts": []}):
        assert invalid(body).status == 400
    with pytest.raises(ApiError) as info:
        parse_events({"events": [{"user_id": "a", "action": "view"}] * 3}, CFG, NOW, 2)
    assert info.value.status == 413


def test_parse_score_request_keeps_order_and_reports_bad_users():
    ids, explain, hints = parse_score_request(
        {"users": [{"user_id": "b"}, {"user_id": "a", "state": {"page": "/cart"}}]}, 10
    )
    assert hints == [None, {"page": "/cart"}]
    assert ids == ["b", "a"] and explain is False
    with pytest.raises(ApiError) as info:
        parse_score_request({"users": [{"user_id": "a@b.co"}, {"state": 3}, {"user_id": "c", "state": {"x": 1}}]}, 10)
    assert {(d["index"], d["field"]) for d in info.value.details} == {(0, "user_id"), (1, "user_id"), (1, "state"), (2, "state.x")}


def test_parse_score_request_fast_and_slow_paths_agree_on_ids():
    ids = ["plain_1", "with-dash", "00441234567890", "+441234567890", "a@b.co", "x" * 129, "", "tab\there"]
    for uid in ids:
        for body in ({"users": [{"user_id": "ok"}, {"user_id": uid}]},  # the fast path's shape
                     {"users": [{"user_id": "ok", "state": {}}, {"user_id": uid}]}):  # the per-user path
            try:
                got = parse_score_request(body, 10)[0]
            except ApiError as err:
                got = err.details
            assert got == (["ok", uid] if user_id_problem(uid) is None
                           else [{"index": 1, "field": "user_id", "reason": user_id_problem(uid)}]), (uid, body)


def test_parse_events_requires_user_and_action_even_when_every_event_lacks_them():
    err = invalid({"events": [{"ts": NOW}, {"ts": NOW}]})
    assert {(d["index"], d["field"]) for d in err.details} == {(0, "user_id"), (1, "user_id"), (0, "action"), (1, "action")}
    err = invalid({"columns": {"user_id": [None], "action": [None]}})
    assert {d["field"] for d in err.details} == {"user_id", "action"}


@pytest.mark.parametrize("field", ["event_id", "item_id", "category", "query"])
def test_parse_events_fast_and_slow_paths_agree_on_optional_text(field):
    longest = MAX_QUERY_CHARS if field == "query" else MAX_ID_CHARS
    for value in ["ok", "", "x" * longest, "x" * (longest + 1), "caf\u00e9", "\ud800", 12345, True, 1.5, None]:
        body = {"events": [{"user_id": "a", "action": "view", field: "plain"}, {"user_id": "a", "action": "view",
                                                                                field: value}]}
        try:
            parse_events(body, CFG, NOW, 10)
            accepted = True
        except ApiError:
            accepted = False
        assert accepted == ((_QUERY_TEXT if field == "query" else _ID_TEXT)(value) is None), (field, value)


def test_parse_events_fast_and_slow_paths_agree_on_ids():
    ids = ["plain_1", "with-dash", "00441234567890", "+441234567890", 12345, "x" * 129]
    for uid in ids:
        body = {"events": [{"user_id": uid, "action": "view"}]}
        try:
            parse_events(body, CFG, NOW, 10)
            accepted = True
        except ApiError:
            accepted = False
        assert accepted == (user_id_problem(uid) is None), uid
