"""nudge_client over an in-memory transport (httpx.MockTransport): what each answer of the server makes the
client do. Real servers, proxies and crashes are in tests/integration/test_client.py."""
import asyncio
import json
import subprocess
import sys
import threading
import time

import httpx
import msgpack
import pytest

from nudge_client import (ApiError, AsyncClient, Client, RetryPolicy, ScoreResult, SignalPage, Unreachable,
                          UserView)
from nudge_client.wire import make_event

MSGPACK = {"content-type": "application/msgpack"}
FAST = RetryPolicy(base_s=0.01, max_s=0.02)


def ok(events, duplicates=0):
    return httpx.Response(200, content=msgpack.packb({"accepted": len(events) - duplicates, "duplicates": duplicates}),
                          headers=MSGPACK)


def refusal(status, code, details=(), headers=None):
    body = {"error": {"code": code, "message": "no", "details": list(details)}}
    return httpx.Response(status, content=msgpack.packb(body), headers={**MSGPACK, **(headers or {})})


class Script:
    """Answers event batches from a list of functions (the last one repeats); records what came and when."""

    def __init__(self, *answers):
        self.answers, self.requests, self.lock = list(answers), [], threading.Lock()

    def __call__(self, request):
        events = msgpack.unpackb(request.content)["events"] if request.url.path == "/v1/events" else None
        with self.lock:
            self.requests.append((time.monotonic(), request, events))
            answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return answer(events)

    @property
    def batches(self):
        return [events for _, _, events in self.requests]


def test_a_503_with_retry_after_is_retried_no_sooner_than_asked():
    script = Script(lambda e: refusal(503, "overloaded", headers={"Retry-After": "1"}), ok)
    with Client("http://nudge.test", "k", retry=FAST, transport=httpx.MockTransport(script)) as c:
        event_id = c.track("u1", "view")
        assert c.flush(timeout=10)
    (first, _, sent), (second, _, again) = script.requests
    assert second - first >= 1.0
    assert sent == again and again[0]["event_id"] == event_id  # the same event, the same id: idempotent
    assert c.stats.retries == 1 and c.stats.sent == 1 and c.stats.failed == 0


def test_a_retry_after_date_is_honoured_too():
    when = lambda: time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 2))  # noqa: E731
    script = Script(lambda e: refusal(429, "rate_limited", headers={"Retry-After": when()}), ok)
    with Client("http://nudge.test", "k", retry=FAST, transport=httpx.MockTransport(script)) as c:
        c.track("u1", "view")
        assert c.flush(timeout=10)
    (first, _, _), (second, _, _) = script.requests
    assert second - first >= 1.0  # the date has whole seconds: at least one of the two is left
    assert c.stats.sent == 1 and c.stats.retries == 1


def test_connection_errors_and_5xx_are_retried_and_duplicates_counted():
    def reset(events):
        raise httpx.RemoteProtocolError("server disconnected")

    script = Script(reset, lambda e: refusal(500, "internal_error"), lambda e: ok(e, duplicates=len(e)))
    with Client("http://nudge.test", "k", retry=FAST, transport=httpx.MockTransport(script)) as c:
        for n in range(3):
            c.track(f"u{n}", "view")
        assert c.flush(timeout=10)
    assert len(script.requests) == 3
    assert c.stats.retries == 2 and c.stats.duplicates == 3 and c.stats.sent == 0 and c.stats.pending == 0


def test_a_400_is_not_retried_and_goes_to_on_error():
    failures = []
    script = Script(lambda e: refusal(401, "unauthorized"))
    with Client("http://nudge.test", "bad", retry=FAST, on_error=lambda err, ev: failures.append((err, ev)),
                transport=httpx.MockTransport(script)) as c:
        event_id = c.track("u1", "view")
        assert c.flush(timeout=10)
    assert len(script.requests) == 1
    [(error, events)] = failures
    assert isinstance(error, ApiError) and error.status == 401 and error.code == "unauthorized"
    assert [e["event_id"] for e in events] == [event_id]
    assert c.stats.failed == 1 and c.stats.failed_batches == 1 and c.stats.retries == 0
    assert c.last_error is error


def test_one_invalid_event_does_not_sink_its_batch():
    failures = []

    def validate(events):
        bad = [{"index": i, "field": "action", "reason": "unknown action"}
               for i, e in enumerate(events) if e["action"] == "teleport"]
        return refusal(400, "invalid_event", bad) if bad else ok(events)

    script = Script(validate)
    with Client("http://nudge.test", "k", retry=FAST, on_error=lambda err, ev: failures.append((err, ev)),
                transport=httpx.MockTransport(script)) as c:
        for n, action in enumerate(["view", "teleport", "view", "teleport", "search"]):
            c.track(f"u{n}", action)
        assert c.flush(timeout=10)
    assert [len(b) for b in script.batches] == [5, 3]
    [(error, events)] = failures
    assert error.code == "invalid_event" and [e["user_id"] for e in events] == ["u1", "u3"]
    assert [d["index"] for d in error.details] == [0, 1]  # into the events handed over
    assert c.stats.sent == 3 and c.stats.failed == 2 and c.stats.retries == 0


def test_a_413_splits_the_batch():
    script = Script(lambda e: refusal(413, "too_many_items") if len(e) > 2 else ok(e))
    with Client("http://nudge.test", "k", retry=FAST, transport=httpx.MockTransport(script)) as c:
        for n in range(5):
            c.track(f"u{n}", "view")
        assert c.flush(timeout=10)
    assert [len(b) for b in script.batches if len(b) <= 2] == [2, 1, 2]
    assert c.stats.sent == 5 and c.stats.failed == 0


def test_a_batch_caught_in_a_config_change_is_sent_again():
    script = Script(lambda e: refusal(409, "config_changed"), ok)
    with Client("http://nudge.test", "k", retry=FAST, transport=httpx.MockTransport(script)) as c:
        c.track("u1", "view")
        assert c.flush(timeout=10)
    assert len(script.requests) == 2 and c.stats.sent == 1


def test_retries_run_out_into_failed():
    failures = []
    script = Script(lambda e: refusal(503, "overloaded"))
    with Client("http://nudge.test", "k", retry=RetryPolicy(base_s=0.001, max_s=0.001, max_retries=3),
                on_error=lambda err, ev: failures.append(err), transport=httpx.MockTransport(script)) as c:
        c.track("u1", "view")
        assert c.flush(timeout=10)
    assert len(script.requests) == 4 and c.stats.failed == 1 and c.stats.retries == 3
    assert failures[0].status == 503


SCORE = {"user_id": "u1", "score": 0.7, "predicted": {"next_action": "purchase", "probs": {"view": 0.2, "purchase": 0.8},
                                                      "purchase_5m": 0.5, "purchase_60m": 0.6, "predictor": "markov"},
         "signal": {"signal_id": "sig_1", "user_id": "u1", "type": "offer_discount", "intent": "cart_abandon_risk",
                    "variant": "5", "payload": {"discount_pct": 5.0}, "score": 0.7, "created_at": 1.0}}


def test_typed_calls_send_what_the_server_expects():
    seen = []

    def server(request):
        body = msgpack.unpackb(request.content) if request.content else None
        seen.append((request.method, request.url.path, dict(request.url.params), body,
                     request.headers["authorization"], request.headers.get("content-type")))
        path = request.url.raw_path.decode().split("?")[0]
        if path == "/v1/score":
            return httpx.Response(200, content=msgpack.packb({"results": [SCORE]}), headers=MSGPACK)
        if path == "/v1/feedback":
            return httpx.Response(200, content=msgpack.packb({"accepted": len(body["feedback"])}), headers=MSGPACK)
        if path == "/v1/signals":
            return httpx.Response(200, json={"signals": [SCORE["signal"]], "next": "czI6MQ"})
        if path == "/v1/users/a%2Fb":
            return httpx.Response(200, json={"user_id": "a/b", "recent_actions": [{"action": "view", "ts": 2.0}],
                                             "score": 0.5, "score_kind": "posterior_mean"})
        return refusal(404, "not_found")

    with Client("http://nudge.test", "key-1", transport=httpx.MockTransport(server)) as c:
        [result] = c.score(["u1"])
        assert isinstance(result, ScoreResult) and result.signal.payload == {"discount_pct": 5.0}
        assert result.predicted.next_action == "purchase" and result.score == 0.7
        assert c.score([{"user_id": "u1", "state": {"category": "shoes"}}], explain=True)[0].user_id == "u1"
        assert c.feedback("sig_1", "clicked", ts=5.0).accepted == 1
        page = c.signals(after="czI6MA", limit=10, wait_s=2)
        assert isinstance(page, SignalPage) and page.next == "czI6MQ" and page.signals[0].signal_id == "sig_1"
        with pytest.raises(TypeError):
            c.score("u1")  # one id, not a list of them
        view = c.user("a/b")
        assert isinstance(view, UserView) and view.recent_actions[0].action == "view"
    assert seen[0][:4] == ("POST", "/v1/score", {}, {"users": [{"user_id": "u1"}]})
    assert seen[0][4:] == ("Bearer key-1", "application/msgpack")
    assert seen[1][3] == {"users": [{"user_id": "u1", "state": {"category": "shoes"}}], "explain": True}
    assert seen[2][3] == {"feedback": [{"signal_id": "sig_1", "outcome": "clicked", "ts": 5.0}]}
    assert seen[3][:3] == ("GET", "/v1/signals", {"after": "czI6MA", "limit": "10", "wait_s": "2"})


def test_calls_retry_503_but_raise_other_refusals_at_once():
    answers = [refusal(503, "not_ready", headers={"Retry-After": "0"}),
               httpx.Response(200, content=msgpack.packb({"results": [SCORE]}), headers=MSGPACK)]
    calls = []

    def server(request):
        calls.append(request.url.path)
        if request.url.path == "/v1/feedback":
            return refusal(400, "invalid_feedback", [{"index": 0, "field": "signal_id", "reason": "unknown signal"}])
        return answers.pop(0)

    with Client("http://nudge.test", "k", retry=FAST, transport=httpx.MockTransport(server)) as c:
        assert c.score(["u1"])[0].score == 0.7
        with pytest.raises(ApiError) as caught:
            c.feedback("sig_x", "shown")
    assert caught.value.code == "invalid_feedback" and caught.value.details[0]["reason"] == "unknown signal"
    assert calls == ["/v1/score", "/v1/score", "/v1/feedback"]


def test_reads_are_retried_after_a_lost_answer_writes_are_not():
    calls = []

    def server(request):
        calls.append(request.method)
        if len(calls) in (1, 3):
            raise httpx.ReadError("connection reset")
        return httpx.Response(200, json={"signals": [], "next": "czI6MA"})

    with Client("http://nudge.test", "k", retry=FAST, transport=httpx.MockTransport(server)) as c:
        assert c.signals().next == "czI6MA"
        with pytest.raises(Unreachable):
            c.feedback("sig_1", "shown")  # it may have been recorded: the caller decides
    assert calls == ["GET", "GET", "POST"]


def test_track_refuses_what_could_not_be_sent_in_the_callers_thread():
    with pytest.raises(ValueError):
        make_event("", "view")
    with pytest.raises(ValueError):
        make_event("u1", "view", context={"browser": "firefox"})
    with pytest.raises(TypeError):
        make_event(object(), "view")
    with pytest.raises(TypeError):
        make_event("u1", "view", item_id=3.5)
    with pytest.raises(TypeError):
        make_event("u1", "view", ts="yesterday")
    with pytest.raises(TypeError):
        make_event("u1", "view", context={"tz_offset_min": 1.5})
    event = make_event(12, "view", ts=10, item_id=7, query="red shoes", context={"device": "mobile", "segment": None})
    assert event["user_id"] == 12 and event["ts"] == 10.0 and event["context"] == {"device": "mobile"}
    assert len(event["event_id"]) == 32 and event["event_id"] != make_event(12, "view")["event_id"]


async def test_async_client_batches_retries_and_calls():
    script = Script(lambda e: refusal(503, "overloaded", headers={"Retry-After": "0"}), ok)

    def server(request):
        if request.url.path == "/v1/score":
            return httpx.Response(200, content=msgpack.packb({"results": [SCORE]}), headers=MSGPACK)
        return script(request)

    async with AsyncClient("http://nudge.test", "k", retry=FAST, transport=httpx.MockTransport(server)) as c:
        ids = [await c.track(f"u{n}", "view") for n in range(150)]
        assert await c.flush(timeout=10)
        assert (await c.score(["u1"]))[0].signal.signal_id == "sig_1"
    assert [e["event_id"] for b in script.batches[1:] for e in b] == ids
    assert c.stats.sent == 150 and c.stats.retries == 1 and c.stats.pending == 0


async def test_async_client_sends_a_lone_event_once_the_interval_has_passed():
    script = Script(ok)
    async with AsyncClient("http://nudge.test", "k", flush_interval_s=0.1, transport=httpx.MockTransport(script)) as c:
        await asyncio.sleep(0.2)
        await c.track("u1", "view")
        for _ in range(100):
            if c.stats.sent:
                break
            await asyncio.sleep(0.02)
        assert c.stats.sent == 1


def test_importing_the_client_pulls_in_nothing_heavy():
    code = ("import sys, nudge_client\n"
            "print(sorted(m for m in ('numpy', 'torch', 'aiohttp', 'scipy', 'server') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert json.loads(out.stdout.replace("'", '"')) == []
