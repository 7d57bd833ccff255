import asyncio
import time

import numpy as np
import pytest

from model import DEFAULT_ACTIONS
from server.storage import Store

from .conftest import JSON, MSGPACK

NOW = time.time


def view(uid, action="view", **extra):
    return {"user_id": uid, "action": action, "ts": NOW() - 10, **extra}


async def test_ingest_then_score_in_msgpack(start):
    s = await start()
    r = await s.acme.events([view("u1"), view("u1", "add_to_cart"), view("u2", "search")], fmt=MSGPACK)
    assert (r.status, r.body) == (200, {"accepted": 3, "duplicates": 0})
    assert r.headers["Content-Type"].startswith(MSGPACK)
    r = await s.acme.score("u2", "nobody", "u1", fmt=MSGPACK)
    assert r.status == 200
    results = r.body["results"]
    assert [x["user_id"] for x in results] == ["u2", "nobody", "u1"]
    # A fresh tenant's score is the heuristic's: a cart counts more than a search; nobody scores from nothing.
    assert results[2]["score"] > results[0]["score"] > results[1]["score"] and results[1]["score"] < 0.001
    predicted = results[2]["predicted"]
    assert predicted["predictor"] == "markov" and results[2]["signal"] is None
    assert abs(sum(predicted["probs"].values()) - 1.0) < 1e-4
    assert predicted["next_action"] in predicted["probs"]
    assert 0.0 < predicted["purchase_5m"] < 1.0 and 0.0 < predicted["purchase_60m"] < 1.0


async def test_column_wise_ingest_and_explain(start):
    s = await start()
    cols = {"user_id": ["c1", "c1"], "action": ["view", "favorite"], "device": ["mobile", "mobile"]}
    r = await s.acme.call("POST", "/v1/events", {"columns": cols})
    assert r.body == {"accepted": 2, "duplicates": 0}
    r = await s.acme.call("POST", "/v1/score", {"users": [{"user_id": "c1"}], "explain": True})
    explain = r.body["results"][0]["explain"]
    assert explain["known"] and [w["action"] for w in explain["window"]] == ["view", "favorite"]
    assert explain["context"]["device"] == "mobile"


async def test_a_score_answers_the_same_in_msgpack_and_json(start):
    # The worker packs each user's row in msgpack; a msgpack answer splices them, a JSON one decodes them.
    s = await start()
    await s.acme.events([view("m1"), view("m1", "add_to_cart"), view("m2", "search")])
    for explain in (False, True):
        body = {"users": [{"user_id": "m1"}, {"user_id": "nobody"}, {"user_id": "m2"}], "explain": explain}
        packed = await s.acme.call("POST", "/v1/score", body, fmt=MSGPACK, accept=MSGPACK)
        text = await s.acme.call("POST", "/v1/score", body, fmt=JSON, accept=JSON)
        assert packed.headers["Content-Type"].startswith(MSGPACK) and text.headers["Content-Type"].startswith(JSON)
        for a, b in zip(packed.body["results"], text.body["results"], strict=True):
            assert a["user_id"] == b["user_id"] and a["predicted"]["probs"] == b["predicted"]["probs"]
            assert ("explain" in a) == ("explain" in b) == explain
            if explain:  # the windows' ages are taken when each answer is made
                assert [w["action"] for w in a["explain"]["window"]] == [w["action"] for w in b["explain"]["window"]]
                assert (a["explain"]["known"], a["explain"]["context"]) == (b["explain"]["known"], b["explain"]["context"])
        assert [r["user_id"] for r in packed.body["results"]] == ["m1", "nobody", "m2"]


async def test_retries_with_event_ids_are_idempotent(start):
    s = await start()
    batch = [view(f"r{i}", event_id=f"evt-{i}") for i in range(20)]
    first = await s.acme.events(batch)
    assert first.body == {"accepted": 20, "duplicates": 0}
    again = await asyncio.gather(*(s.acme.events(batch[:10] + [view("r-new", event_id=f"new-{k}")]) for k in range(5)))
    assert sorted(r.body["accepted"] for r in again) == [1] * 5
    assert all(r.body["duplicates"] == 10 for r in again)
    within = await s.acme.events([view("d", event_id="twice"), view("d", event_id="twice")])
    assert within.body == {"accepted": 1, "duplicates": 1}
    store = Store(s.data_dir)
    assert store.count_events(1) == 20 + 5 + 1
    store.close()


async def test_invalid_batch_is_rejected_whole_with_every_bad_index(start):
    s = await start()
    r = await s.acme.events([view("fine"), {"user_id": "a@b.com", "action": "view"}, view("ok2", "teleport")])
    assert r.status == 400 and r.body["error"]["code"] == "invalid_event"
    assert [(d["index"], d["field"]) for d in r.body["error"]["details"]] == [(1, "user_id"), (2, "action")]
    assert (await s.acme.call("GET", "/v1/users/fine")).status == 404


async def test_concurrent_score_requests_share_batches(start):
    s = await start(max_wait_ms=20.0)
    await s.acme.events([view(f"b{i}", "add_to_cart" if i % 3 else "view") for i in range(60)])
    replies = await asyncio.gather(*(s.acme.score(f"b{i}") for i in range(60)))
    assert [r.body["results"][0]["user_id"] for r in replies] == [f"b{i}" for i in range(60)]
    metrics = (await s.acme.call("GET", "/metrics")).body
    batches = next(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("nudge_score_batch_users_count"))
    assert batches < 30


async def test_weights_show_posteriors_transitions_and_learning(start):
    s = await start()
    cfg = await s.acme.call("PUT", "/v1/config", {"horizon_s": 60.0, "allowed_lateness_s": 60.0})
    assert cfg.status == 200
    t = NOW() - 3000
    events = []
    for i in range(40):
        events += [{"user_id": f"w{i}", "action": "view", "ts": t + i}, {"user_id": f"w{i}", "action": "purchase", "ts": t + i + 5}]
        events += [{"user_id": f"s{i}", "action": "search", "ts": t + i}]
    events.append({"user_id": "clock", "action": "view", "ts": t + 1000})
    assert (await s.acme.events(events)).status == 200
    w = (await s.acme.call("GET", "/v1/weights")).body
    by_action = {row["action"]: row for row in w["actions"]}
    assert by_action["view"]["mean"] > by_action["view"]["prior_mean"]
    assert by_action["search"]["mean"] < by_action["search"]["prior_mean"]
    lo, hi = by_action["view"]["ci95"]
    assert lo < by_action["view"]["mean"] < hi
    assert w["contexts"] and w["transitions"]["actions"][0] == "view"
    assert len(w["transitions"]["lift"]) == len(w["transitions"]["actions"])


async def test_user_view_and_erasure_survive_a_restart(start, tmp_path):
    s = await start()
    await s.acme.events([view("gone", event_id="g1"), view("gone", "add_to_cart"), view("stay")])
    r = await s.acme.call("GET", "/v1/users/gone")
    assert r.status == 200 and [a["action"] for a in r.body["recent_actions"]] == ["view", "add_to_cart"]
    r = await s.acme.call("DELETE", "/v1/users/gone")
    assert r.body == {"user_id": "gone", "erased": True, "events_deleted": 2}
    assert (await s.acme.call("GET", "/v1/users/gone")).status == 404
    await s.client.close()
    s2 = await start()
    assert (await s2.acme.call("GET", "/v1/users/gone")).status == 404
    assert (await s2.acme.call("GET", "/v1/users/stay")).status == 200
    store = Store(s2.data_dir)
    assert store.count_events(1, "gone") == 0
    store.close()


async def test_state_after_restart_equals_state_before(start):
    s = await start(snapshot_interval_s=3600.0)
    t = NOW() - 5000
    await s.acme.events([{"user_id": f"p{i % 17}", "action": ["view", "add_to_cart", "purchase"][i % 3], "ts": t + 30 * i} for i in range(150)])
    before = (await s.acme.call("GET", "/v1/weights")).body
    await s.client.close()  # clean stop writes a snapshot
    s2 = await start()
    assert s2.runtime.recovery.from_snapshots == 1 and s2.runtime.recovery.replayed_events == 0
    assert (await s2.acme.call("GET", "/v1/weights")).body == before
    await s2.client.close()
    (s.data_dir / "snapshots" / "tenant-1.npz").unlink()
    s3 = await start()
    assert s3.runtime.recovery.replayed_events == 150
    after = (await s3.acme.call("GET", "/v1/weights")).body
    np.testing.assert_allclose([a["alpha"] for a in after["actions"]], [a["alpha"] for a in before["actions"]], rtol=1e-9)


async def test_config_validation_rebuild_and_conflict(start):
    CLEARED = {a: None for a in DEFAULT_ACTIONS}  # null removes a key in a merge patch
    s = await start()
    r = await s.acme.call("GET", "/v1/config")
    assert r.body["conversion_action"] == "purchase" and "view" in r.body["actions"]
    r = await s.acme.call("PUT", "/v1/config", {"horizon_s": -5, "window_size": "x", "colour": 1})
    assert r.status == 400 and r.body["error"]["code"] == "invalid_config"
    assert {d["field"] for d in r.body["error"]["details"]} == {"window_size", "colour"}
    r = await s.acme.call("PUT", "/v1/config", {"prior_means": {"view": 0.6}})
    assert r.status == 200 and r.body["prior_means"]["view"] == 0.6  # a merge patch: the other priors stay
    weights = (await s.acme.call("GET", "/v1/weights")).body
    assert next(a for a in weights["actions"] if a["action"] == "view")["prior_mean"] == pytest.approx(0.6)
    await s.acme.events([view("x")])
    r = await s.acme.call("PUT", "/v1/config", {"actions": ["search", "purchase"], "prior_means": CLEARED})
    assert r.status == 409 and r.body["error"]["code"] == "config_conflict"
    r = await s.acme.call("PUT", "/v1/config", {"actions": ["view", "purchase", "watch_video"], "prior_means": CLEARED})
    assert r.status == 200
    assert (await s.acme.events([view("x", "watch_video")])).status == 200
    assert [a["action"] for a in (await s.acme.call("GET", "/v1/users/x")).body["recent_actions"]] == ["view", "watch_video"]


async def test_a_key_never_sees_another_tenants_data(start):
    s = await start()
    await s.acme.events([view("secret-user")])
    await s.acme.call("PUT", "/v1/config", {"segments": ["vip"]})
    assert (await s.globex.call("GET", "/v1/users/secret-user")).status == 404
    assert (await s.globex.call("DELETE", "/v1/users/secret-user")).body["events_deleted"] == 0
    assert (await s.acme.call("GET", "/v1/users/secret-user")).status == 200
    assert (await s.globex.call("GET", "/v1/weights")).body["events_applied"] == 0
    assert (await s.globex.call("GET", "/v1/config")).body["segments"] == []
    assert (await s.globex.score("secret-user")).body["results"][0]["score"] < 0.001  # unknown to globex


@pytest.mark.parametrize(
    "method, path, body, key, status, code",
    [
        ("POST", "/v1/score", {"users": [{"user_id": "a"}]}, None, 401, "unauthorized"),
        ("POST", "/v1/score", {"users": [{"user_id": "a"}]}, "nk_wrong", 401, "unauthorized"),
        ("GET", "/v1/nothing-here", None, ..., 404, "not_found"),
        ("GET", "/v1/users/never-seen", None, ..., 404, "user_not_found"),
        ("GET", "/v1/users/bob@example.com", None, ..., 400, "invalid_request"),
        ("PATCH", "/v1/config", None, ..., 405, "method_not_allowed"),
        ("POST", "/v1/score", {"users": []}, ..., 400, "invalid_request"),
        ("PUT", "/v1/config", [1, 2], ..., 400, "invalid_request"),
    ],
)
async def test_errors_have_a_status_code_and_body(start, method, path, body, key, status, code):
    s = await start()
    r = await s.acme.call(method, path, body, key=key)
    assert r.status == status
    assert r.body["error"]["code"] == code and r.body["error"]["message"]
    if status == 401:
        assert r.headers["WWW-Authenticate"].startswith("Bearer")


async def test_malformed_and_unsupported_bodies(start):
    s = await start()
    r = await s.acme.call("POST", "/v1/events", raw=b"{not json", fmt=JSON)
    assert (r.status, r.body["error"]["code"]) == (400, "malformed_body")
    r = await s.acme.call("POST", "/v1/events", raw=b"\xc1", fmt=MSGPACK)
    assert (r.status, r.body["error"]["code"]) == (400, "malformed_body")
    r = await s.acme.call("POST", "/v1/events", raw=b"a=b", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert (r.status, r.body["error"]["code"]) == (415, "unsupported_media_type")


async def test_body_and_item_limits_answer_413(start):
    s = await start(max_body_bytes=2048, max_items_per_request=5)
    r = await s.acme.call("POST", "/v1/events", raw=b"[" + b"1," * 4000 + b"1]", fmt=JSON)
    assert (r.status, r.body["error"]["code"]) == (413, "body_too_large")
    r = await s.acme.events([view(f"u{i}") for i in range(6)])
    assert (r.status, r.body["error"]["code"]) == (413, "too_many_items")


async def test_rate_limit_answers_429_with_retry_after(start):
    s = await start(rate_limit_per_s=1.0, rate_limit_burst=3.0)
    statuses = [(await s.acme.call("GET", "/v1/config")).status for _ in range(5)]
    assert statuses[:3] == [200, 200, 200] and statuses[3:] == [429, 429]
    r = await s.acme.call("GET", "/v1/config")
    assert r.body["error"]["code"] == "rate_limited" and int(r.headers["Retry-After"]) >= 1
    assert (await s.globex.call("GET", "/v1/config")).status == 200  # per tenant


async def test_full_queue_sheds_with_503_and_retry_after(start):
    s = await start(max_queue_users=2, max_batch_size=1, max_wait_ms=0.0)
    state = next(iter(s.runtime.tenants.values()))
    original = state.engine.score

    def slow(*args, **kwargs):
        time.sleep(0.2)
        return original(*args, **kwargs)

    state.engine.score = slow
    replies = await asyncio.gather(*(s.acme.score(f"q{i}") for i in range(8)))
    shed = [r for r in replies if r.status == 503]
    assert shed and all(r.body["error"]["code"] == "overloaded" and r.headers["Retry-After"] for r in shed)
    assert all(r.status in (200, 503) for r in replies) and any(r.status == 200 for r in replies)


async def test_ingest_sheds_with_503_when_too_many_events_wait_for_their_commit(start):
    s = await start(max_pending_events=10)
    store = s.runtime.store
    original = store.append

    def slow(groups):
        time.sleep(0.2)
        return original(groups)

    store.append = slow
    replies = await asyncio.gather(*(s.acme.events([view(f"o{i}-{k}") for k in range(4)]) for i in range(8)))
    shed = [r for r in replies if r.status == 503]
    assert shed and all(r.body["error"]["code"] == "overloaded" and r.headers["Retry-After"] for r in shed)
    accepted = sum(r.body["accepted"] for r in replies if r.status == 200)
    assert accepted == 4 * (len(replies) - len(shed)) and s.runtime.pending_events == 0
    store.append = original
    assert (await s.acme.events([view("after")])).status == 200


async def test_unexpected_errors_answer_500_without_internals(start):
    s = await start()
    state = next(iter(s.runtime.tenants.values()))

    def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    state.engine.score = broken
    r = await s.acme.score("u")
    assert r.status == 500 and r.body["error"]["code"] == "internal_error"
    assert "secret" not in str(r.body) and r.headers["X-Request-Id"] in r.body["error"]["message"]
    assert (await s.acme.call("GET", "/healthz")).status == 200


async def test_not_ready_answers_503(start):
    s = await start()
    s.runtime.recovery.state = "recovering"
    r = await s.acme.call("GET", "/v1/config")
    assert (r.status, r.body["error"]["code"]) == (503, "not_ready")
    r = await s.acme.call("GET", "/readyz")
    assert r.status == 503 and r.body["ready"] is False


async def test_accept_header_picks_the_response_format(start):
    s = await start()
    r = await s.acme.call("GET", "/v1/config", accept=MSGPACK)
    assert r.headers["Content-Type"].startswith(MSGPACK) and r.body["conversion_action"] == "purchase"
    r = await s.acme.call("POST", "/v1/score", {"users": [{"user_id": "a"}]}, fmt=MSGPACK, accept="application/json;q=0.9, application/msgpack;q=0.1")
    assert r.headers["Content-Type"].startswith(JSON)


async def test_health_readiness_metrics_and_openapi(start):
    s = await start()
    assert (await s.acme.call("GET", "/healthz", key=None)).body == {"status": "ok"}
    ready = (await s.acme.call("GET", "/readyz", key=None)).body
    assert ready["ready"] and ready["backend"] == "numpy" and ready["recovery"]["state"] == "ready"
    await s.acme.events([view("m")])
    metrics = (await s.acme.call("GET", "/metrics", key=None)).body
    assert 'nudge_events_ingested_total{tenant="1"} 1.0' in metrics  # ids, not names, unless allowed
    assert "acme" not in metrics
    assert 'nudge_backend_info{backend="numpy"} 1.0' in metrics
    assert 'nudge_request_seconds_count{method="POST",route="/v1/events",status="200"}' in metrics
    spec = (await s.acme.call("GET", "/openapi.json", key=None)).body
    documented = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    served = {(r.method, r.resource.canonical) for r in s.app.router.routes() if r.method != "HEAD"}
    assert documented == served
    assert spec["openapi"].startswith("3.")


async def test_a_clean_stop_snapshots_events_whose_engine_update_was_still_queued(start):
    from server.snapshots import load_snapshot, snapshot_path

    s = await start(snapshot_interval_s=3600.0)
    state = next(iter(s.runtime.tenants.values()))
    original = state.engine.apply_observed

    def slow_apply(*args, **kwargs):
        time.sleep(0.3)  # the acknowledgement is sent before this finishes
        return original(*args, **kwargs)

    state.engine.apply_observed = slow_apply
    assert (await s.acme.events([view("queued")])).body == {"accepted": 1, "duplicates": 0}
    await s.client.close()  # stop at once
    snapshot, _ = load_snapshot(snapshot_path(s.data_dir, state.tenant.id))
    assert int(snapshot["scalars"][3]) == 1  # events_applied


async def test_a_saturated_event_loop_sheds_scoring_but_answers_the_rest(start):
    import time as clock

    s = await start(max_loop_lag_ms=5.0)
    for _ in range(5):  # keep the loop busy, as a flood of requests would: every timer fires late
        clock.sleep(0.03)
        await asyncio.sleep(0)
    shed = await s.acme.score("a")
    assert shed.status == 503 and shed.body["error"]["code"] == "overloaded" and shed.headers["Retry-After"] == "1"
    assert (await s.acme.call("GET", "/v1/config")).status == 200
    assert (await s.acme.events([{"user_id": "a", "action": "view"}])).status == 200
    for _ in range(100):
        if (await s.acme.score("a")).status == 200:
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the server never recovered from the overload")


async def _engine_behind(s, events):
    """The server has learnt how fast it applies events, then the engine is busy for half a second."""
    import time as clock

    for _ in range(5):
        assert (await s.acme.events(events)).status == 200
        await s.runtime.on_device(lambda: None)
    stall = asyncio.ensure_future(s.runtime.on_device(clock.sleep, 0.5))
    await asyncio.sleep(0.05)
    assert (await s.acme.events(events)).status == 200  # acknowledged: durable, applied later
    return stall


async def test_ingest_is_shed_while_acknowledged_events_wait_too_long_for_the_engine(start):
    s = await start(max_apply_delay_ms=1.0, ingest_wait_ms=100)
    events = [{"user_id": f"u{i}", "action": "view"} for i in range(200)]
    stall = await _engine_behind(s, events)
    started = time.monotonic()
    shed = await s.acme.events(events)
    assert shed.status == 503 and shed.body["error"]["code"] == "overloaded" and "Retry-After" in shed.headers
    assert time.monotonic() - started >= 0.1  # it waited for room first
    await stall
    await s.runtime.on_device(lambda: None)
    assert (await s.acme.events(events)).status == 200


async def test_ingest_waits_for_room_rather_than_bouncing_and_waiters_are_bounded(start):
    s = await start(max_apply_delay_ms=1.0, ingest_wait_ms=5000, max_ingest_waiters=1)
    events = [{"user_id": f"u{i}", "action": "view"} for i in range(200)]
    stall = await _engine_behind(s, events)
    started = time.monotonic()
    waiting = asyncio.ensure_future(s.acme.events(events))
    await asyncio.sleep(0.05)
    bounced = await s.acme.events(events)  # the one waiter's place is taken: refused at once
    assert bounced.status == 503 and time.monotonic() - started < 0.4
    assert (await waiting).status == 200  # admitted once the engine caught up
    assert stall.done() and time.monotonic() - started >= 0.3


async def test_scoring_past_its_queue_bound_is_refused_before_the_body_is_read(start):
    s = await start(max_queue_delay_ms=50.0)
    state = next(iter(s.runtime.tenants.values()))
    state.batcher.queued_items, state.batcher.items_per_s = 5000, 100.0  # five batches, fifty seconds of wait
    refused = await s.acme.call("POST", "/v1/score", raw=b"\xc1 not msgpack", fmt=MSGPACK)
    # 503, not 400: the malformed body was never read.
    assert refused.status == 503 and refused.body["error"]["code"] == "overloaded" and "Retry-After" in refused.headers
    state.batcher.queued_items = 0
    assert (await s.acme.call("POST", "/v1/score", raw=b"\xc1 not msgpack", fmt=MSGPACK)).status == 400


async def test_a_zero_engine_backlog_bound_disables_that_shedding(start):
    s = await start(max_apply_delay_ms=0)
    s.runtime.unapplied_events, s.runtime.apply_events_per_s = 10_000, 1.0  # ten thousand seconds behind
    assert (await s.acme.events([{"user_id": "u", "action": "view"}])).status == 200


async def test_the_score_is_stable_between_calls_when_nothing_changed(start):
    s = await start()
    await s.acme.events([view("steady"), view("steady", "add_to_cart")])
    scores = [(await s.acme.score("steady")).body["results"][0]["score"] for _ in range(10)]
    # No draw in it: it moves only as the events age (smoothly, by the recency decay), never by chance.
    assert max(scores) - min(scores) < 1e-4 and 0.0 < scores[0] < 1.0
    assert scores == sorted(scores, reverse=True)


async def test_put_config_is_a_json_merge_patch(start):
    s = await start()
    defaults = (await s.acme.call("GET", "/v1/config")).body
    r = await s.acme.call("PUT", "/v1/config", {"thresholds": {"needs_help": 0.2},
                                                "content_map": {"shoes": ["size-guide"], "default": ["faq"]}})
    assert r.status == 200
    assert r.body["thresholds"] == {**defaults["thresholds"], "needs_help": 0.2}  # the other intents keep theirs
    r = await s.acme.call("PUT", "/v1/config", {"content_map": {"shoes": None}, "discount_tiers_pct": [7, 12],
                                                "horizon_s": 60.0})
    assert r.status == 200
    assert r.body["content_map"] == {"default": ["faq"]}  # null deletes the key
    assert r.body["discount_tiers_pct"] == [7.0, 12.0]  # a list replaces, it does not merge
    assert r.body["thresholds"]["needs_help"] == 0.2 and r.body["horizon_s"] == 60.0
    r = await s.acme.call("PUT", "/v1/config", {"horizon_s": None})
    assert r.status == 200 and r.body["horizon_s"] == defaults["horizon_s"]  # null on a setting: its default
    assert (await s.acme.call("GET", "/v1/config")).body == r.body
