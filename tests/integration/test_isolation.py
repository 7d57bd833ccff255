"""Where tenants share a path (the group commit, the pull cursors, the metrics), one cannot harm or see another."""
import asyncio
import base64
import time
from types import SimpleNamespace

import pytest
from aiohttp.test_utils import make_mocked_request

from model import EventBatch
from server import Store
from server.errors import ApiError
from server.handlers import _metrics_allowed

JSON = "application/json"


def test_store_append_fails_only_the_batch_that_cannot_be_written(tmp_path):
    store = Store(tmp_path)
    a, _ = store.create_tenant("a")
    b, _ = store.create_tenant("b")
    now = time.time()
    good = EventBatch.build(["u1", "u2"], [0, 1], [now, now], event_ids=["g1", "g2"])
    bad = EventBatch.build(["\ud800"], [0], [now], event_ids=["x1"])  # not encodable: SQLite refuses it
    results = store.append([(a.id, good, a.config), (b.id, bad, b.config), (a.id, good, a.config)])
    assert results[0].accepted.tolist() == [True, True] and isinstance(results[1], UnicodeEncodeError)
    assert results[2].accepted.tolist() == [False, False]  # the first committed: retries are duplicates
    assert store.count_events(a.id) == 2 and store.count_events(b.id) == 0
    store.close()


async def test_one_tenants_bad_text_never_fails_another_tenants_ingest(start):
    s = await start()
    bad = b'{"events": [{"user_id": "\\ud800", "action": "view"}, {"user_id": "u", "action": "view", "query": "\\udc00"}]}'
    good_answers, bad_answers = [], []

    async def attacker(i):
        r = await s.globex.call("POST", "/v1/events", raw=bad, fmt=JSON)
        bad_answers.append(r.status)

    async def victim(i):
        r = await s.acme.events([{"user_id": f"v{i}", "action": "view", "event_id": f"v{i}-{j}"} for j in range(20)])
        good_answers.append((r.status, r.body))

    await asyncio.gather(*(attacker(i) for i in range(60)), *(victim(i) for i in range(60)))
    assert set(bad_answers) == {400}
    assert all(status == 200 and body == {"accepted": 20, "duplicates": 0} for status, body in good_answers)


async def test_a_batch_that_fails_in_the_shared_commit_fails_alone(start, monkeypatch):
    """Past validation, a batch the database refuses answers 500 for its own request only."""
    s = await start()
    from server import validation

    real = validation.EventBatch.build

    def poisoned(*args, **kw):  # what a validation gap would let through: text SQLite cannot store
        batch = real(*args, **kw)
        if "poison" in batch.user_ids:
            batch.user_ids[:] = "\ud800"
        return batch

    monkeypatch.setattr(validation.EventBatch, "build", poisoned)
    # Hold the storage thread, so that the batches below queue up and commit as one group.
    stall = asyncio.ensure_future(s.runtime.on_storage(time.sleep, 0.5))
    first = asyncio.ensure_future(s.acme.events([{"user_id": "first", "action": "view"}]))
    await asyncio.sleep(0.1)
    answers = await asyncio.gather(
        *(s.acme.events([{"user_id": f"ok{i}", "action": "view"}]) for i in range(15)),
        s.globex.events([{"user_id": "poison", "action": "view"}]),
        *(s.acme.events([{"user_id": f"ok{i}", "action": "view"}]) for i in range(15, 30)),
    )
    await stall
    assert (await first).status == 200
    poisoned_answer = answers.pop(15)
    assert poisoned_answer.status == 500 and poisoned_answer.body["error"]["code"] == "internal_error"
    assert [r.status for r in answers] == [200] * 30


def _position(cursor: str) -> tuple[str, int]:
    prefix, _, seq = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().partition(":")
    return prefix, int(seq)


async def test_pull_cursors_count_the_tenants_own_signals_only(start):
    s = await start()
    runtime = s.runtime
    t = time.time()
    for api, users in ((s.globex, 40), (s.acme, 3), (s.globex, 40)):
        await api.events([{"user_id": f"c{i}", "action": "add_to_cart", "ts": t - 3000} for i in range(users)])
    # Carts left 50 minutes ago: every user's abandonment risk is high, so each gets a signal.
    for tenant_id in (1, 2):
        state = runtime.tenants[tenant_id]
        await runtime.score(state, [f"c{i}" for i in range(40 if tenant_id == 2 else 3)], False)
    pulled = (await s.acme.call("GET", "/v1/signals?limit=1000")).body
    prefix, position = _position(pulled["next"])
    # Positions count the tenant's own decisions (its holdout's too), never globex's 40 to 80.
    assert prefix == "s2" and 1 <= len(pulled["signals"]) <= position <= 3
    again = (await s.acme.call("GET", f"/v1/signals?after={pulled['next']}")).body
    assert again["signals"] == [] and again["next"] == pulled["next"]


async def test_cursors_of_older_nudges_still_resume_where_they_left_off(start):
    s = await start()
    users = [f"c{i}" for i in range(10)]
    await s.acme.events([{"user_id": u, "action": "add_to_cart", "ts": time.time() - 3000} for u in users])
    await s.runtime.score(s.runtime.tenants[1], users, False)
    signals = (await s.acme.call("GET", "/v1/signals")).body["signals"]
    assert len(signals) >= 2
    store = s.runtime.store
    seqs = [r[0] for r in await s.runtime.on_storage(store.read_signals, 1, 0, 100)]
    legacy = base64.urlsafe_b64encode(f"s1:{seqs[0]}".encode()).decode().rstrip("=")
    rest = (await s.acme.call("GET", f"/v1/signals?after={legacy}")).body["signals"]
    assert [x["signal_id"] for x in rest] == [x["signal_id"] for x in signals[1:]]


async def test_metrics_need_the_token_when_one_is_set(start):
    s = await start(metrics_token="scrape-me", metrics_tenant_names=1)
    await s.acme.events([{"user_id": "m", "action": "view"}])
    assert (await s.acme.call("GET", "/metrics", key=None)).status == 401
    r = await s.acme.call("GET", "/metrics", key="wrong")
    assert r.status == 401 and r.body["error"]["code"] == "unauthorized"
    r = await s.acme.call("GET", "/metrics", key="scrape-me")
    assert r.status == 200 and 'nudge_events_ingested_total{tenant="acme"} 1.0' in r.body  # names: allowed here


@pytest.mark.parametrize("peer, allowed", [("127.0.0.1", True), ("::1", True), ("10.1.2.3", False),
                                           ("203.0.113.9", False)])
def test_metrics_without_a_token_answer_loopback_clients_only(peer, allowed):
    transport = SimpleNamespace(get_extra_info=lambda name, default=None: (peer, 4242) if name == "peername" else default)
    request = make_mocked_request("GET", "/metrics", transport=transport)
    if allowed:
        _metrics_allowed(request, "")
    else:
        with pytest.raises(ApiError) as refused:
            _metrics_allowed(request, "")
        assert refused.value.status == 403 and "NUDGE_METRICS_TOKEN" in refused.value.message


def test_signal_positions_never_go_back_after_a_purge(tmp_path):
    store = Store(tmp_path)
    tenant, _ = store.create_tenant("a")
    from model.signals import Decision

    def decision(i, created):
        return Decision(signal_id=f"s{i}", user_id="u", intent="needs_help", type="proactive_support",
                        variant="chat", payload={}, score=0.5, created_at=created, withheld=False)

    store.write_signals([(tenant.id, [decision(1, 1.0), decision(2, 1.0)], [])])
    store.purge_signals(before=2.0)
    store.write_signals([(tenant.id, [decision(3, 5.0)], [])])
    assert [p for p, _ in store.pull_signals(tenant.id, 0, 10)] == [3]
    store.close()
