"""Malformed, mistyped, huge and deeply nested bodies at every route: never a 5xx, never a dead server."""
import http.client
import json
import re
import time
import urllib.parse

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server import ServerConfig
from server.handlers import ROUTES as HANDLED_ROUTES

from .conftest import make_tenants, served_in_thread

ROUTES = [(method, re.sub(r"\{[^}]+\}", "{0}", path)) for method, path, _ in HANDLED_ROUTES]
EVENT_FIELDS = ["user_id", "action", "ts", "event_id", "item_id", "category", "query", "context", "device"]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """The real app on a real socket, served from a thread so hypothesis can drive it synchronously."""
    data_dir = tmp_path_factory.mktemp("fuzz")
    keys = make_tenants(data_dir)
    config = ServerConfig(data_dir=data_dir, backend="numpy", rate_limit_per_s=0, max_body_bytes=256 * 1024)
    with served_in_thread(config) as port:
        yield port, keys["acme"]


def request(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read()
    finally:
        conn.close()


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=300),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5), max_leaves=30)
# Half plausible, half garbage: plausible values get past the first checks to the later ones.
plausible = st.one_of(
    st.sampled_from(["view", "purchase", "add_to_cart", "u-1", "mobile", "vip", "a@b.co", "+1 415 555 2671"]),
    st.floats(min_value=time.time() - 9 * 86400, max_value=time.time() + 3600),
    st.integers(min_value=-900, max_value=900),
)
field_values = st.one_of(plausible, values)
contexts = st.dictionaries(st.sampled_from(["device", "segment", "tz_offset_min", "x"]), field_values, max_size=3)
event = st.dictionaries(st.sampled_from(EVENT_FIELDS), st.one_of(field_values, contexts), max_size=8)
ingest_bodies = st.one_of(
    st.fixed_dictionaries({"events": st.lists(st.one_of(event, values), max_size=20)}),
    st.fixed_dictionaries({"columns": st.dictionaries(st.sampled_from(EVENT_FIELDS + ["segment", "tz_offset_min"]), st.lists(field_values, max_size=4), max_size=5)}),
    st.dictionaries(st.sampled_from(["events", "columns", "x"]), values, max_size=2),
)
score_bodies = st.fixed_dictionaries(
    {"users": st.lists(st.one_of(st.dictionaries(st.sampled_from(["user_id", "state", "x"]), st.one_of(field_values, contexts), max_size=3), values), max_size=5)},
    optional={"explain": field_values},
)
config_bodies = st.dictionaries(
    st.sampled_from(["horizon_s", "actions", "prior_means", "window_size", "segments", "seed", "allow_backfill",
                     "prior_strength", "thresholds", "policy", "content_map", "discount_tiers_pct", "holdout_share", "zz"]),
    st.one_of(field_values, st.lists(field_values, max_size=4),
              st.dictionaries(st.sampled_from(["view", "purchase", "needs_help", "x"]), field_values, max_size=3)),
    max_size=4,
)

feedback_bodies = st.one_of(
    st.fixed_dictionaries({"feedback": st.lists(st.one_of(st.dictionaries(
        st.sampled_from(["signal_id", "outcome", "ts", "x"]),
        st.one_of(st.sampled_from(["sig_x", "converted", "shown", "liked"]), field_values), max_size=4), values), max_size=5)}),
    st.dictionaries(st.sampled_from(["feedback", "x"]), values, max_size=2),
)


def _nested(depth: int, fmt: str) -> bytes:
    if fmt == "json":
        return b"[" * depth + b"]" * depth
    return b"\x91" * depth + b"\xc0"  # msgpack: arrays of one element, then nil


def _encoded(structured):
    return st.one_of(
        st.tuples(st.just("json"), structured.map(lambda v: json.dumps(v).encode())),
        st.tuples(st.just("msgpack"), structured.map(lambda v: msgpack.packb(v))),
    )


raw_bodies = st.one_of(
    _encoded(values),
    st.tuples(st.sampled_from(["json", "msgpack", "text/plain", ""]), st.binary(max_size=2000)),
    st.tuples(st.sampled_from(["json", "msgpack"]), st.sampled_from([100, 5000, 200_000])).map(lambda t: (t[0], _nested(t[1], t[0]))),
    st.tuples(st.just("json"), st.integers(min_value=1, max_value=400_000).map(lambda n: b'{"events": "' + b"x" * n + b'"}')),
)
CONTENT_TYPES = {"json": "application/json", "msgpack": "application/msgpack", "text/plain": "text/plain", "": None}
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def check(live, method, path, body, *, authed=True, accept=None):
    port, key = live
    fmt, payload = body
    headers = {}
    if authed:
        headers["Authorization"] = f"Bearer {key}"
    if CONTENT_TYPES[fmt]:
        headers["Content-Type"] = CONTENT_TYPES[fmt]
    if accept:
        headers["Accept"] = accept
    status, kind, raw = request(port, method, path, payload, headers)
    assert status < 500, raw[:500]
    if status >= 400:
        decoded = msgpack.unpackb(raw) if kind.startswith("application/msgpack") else json.loads(raw)
        assert isinstance(decoded["error"]["code"], str) and decoded["error"]["message"]
    return status


@FUZZ
@pytest.mark.parametrize("method, path, bodies", [
    ("POST", "/v1/events", ingest_bodies),
    ("POST", "/v1/score", score_bodies),
    ("PUT", "/v1/config", config_bodies),
    ("POST", "/v1/feedback", feedback_bodies),
], ids=["ingest", "score", "config", "feedback"])
@given(data=st.data())
def test_fuzz_structured_bodies_never_fail_inside(live, method, path, bodies, data):
    check(live, method, path, data.draw(_encoded(bodies)))


@FUZZ
@given(route=st.sampled_from(ROUTES), body=raw_bodies, user=st.text(min_size=1, max_size=200), authed=st.booleans(),
       accept=st.sampled_from([None, "application/msgpack", "*/*", "text/html", "application/json;q=x"]))
def test_fuzz_any_route_any_bytes(live, route, body, user, authed, accept):
    method, path = route
    check(live, method, path.format(urllib.parse.quote(user, safe="")), body, authed=authed, accept=accept)


def test_server_still_answers_after_the_fuzzing(live):
    port, key = live
    assert request(port, "GET", "/healthz")[0] == 200
    status, _, raw = request(port, "POST", "/v1/score", json.dumps({"users": [{"user_id": "after"}]}).encode(),
                             {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    assert status == 200 and json.loads(raw)["results"][0]["user_id"] == "after"
