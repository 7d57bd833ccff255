"""The engines in worker processes (``workers`` ≥ 1): the same API, tenants owned by worker, and a worker killed under
ingest loses nothing acknowledged: it is started again and its tenants are recovered from their snapshots and the
log."""
import asyncio
import json
import time

import numpy as np

from model import Engine
from model.report import weights_report
from server import Store

from .test_rebuild_beside import view


def owner_pid(s, name):
    runtime = s.runtime
    tenant_id = next(t for t, st in runtime.tenants.items() if st.tenant.name == name)
    return runtime.host.owner(tenant_id), tenant_id


def replayed(data_dir, tenant_id):
    """The tenant's engine as a replay of its whole log builds it, in this process."""
    store = Store(data_dir)
    try:
        config = next(t.config for t in store.tenants() if t.id == tenant_id)
        engine = Engine(config, backend="numpy")
        for batch, seqs in store.read_events(tenant_id, config):
            engine.apply(batch, seqs)
        return engine
    finally:
        store.close()


async def served_weights(api):
    reply = await api.call("GET", "/v1/weights")
    assert reply.status == 200
    return reply.body


async def test_two_worker_processes_serve_each_tenant_what_it_sent(start):
    s = await start(workers=2)
    host = s.runtime.host
    assert host.workers == 2 and len(set(host.pids())) == 2
    assert s.runtime.worker is None  # no engine in the server's process
    assert (await s.acme.events([view(f"a{i}", ["view", "add_to_cart"][i % 2]) for i in range(60)])).status == 200
    assert (await s.globex.events([view(f"g{i}") for i in range(20)])).status == 200
    a, g = await asyncio.gather(s.acme.score("a1", "stranger"), s.globex.score("g1", "a1"))
    assert a.status == g.status == 200
    assert [r["user_id"] for r in a.body["results"]] == ["a1", "stranger"]
    assert a.body["results"][0]["score"] > a.body["results"][1]["score"]  # a cart counts in acme's engine
    assert (await served_weights(s.acme))["events_applied"] == 60
    assert (await served_weights(s.globex))["events_applied"] == 20
    assert (await s.acme.call("GET", "/v1/users/a3")).body["recent_actions"][-1]["action"] == "add_to_cart"
    assert (await s.globex.call("GET", "/v1/users/a3")).status == 404  # tenants never share users


async def test_a_config_change_rebuilds_and_swaps_the_engine_in_the_worker_process(start, monkeypatch):
    """The new engine is built in the worker that owns the tenant: the server's process replays nothing, and no
    engine crosses the pipe."""
    s = await start(workers=1)
    runtime, sent = s.runtime, []
    send = runtime.host.send

    def recorded(command):
        sent.append(command)
        return send(command)

    def no_replay_here(*args):
        raise AssertionError("the server's process replayed a log for a rebuild")

    monkeypatch.setattr(runtime.host, "send", recorded)
    monkeypatch.setattr(runtime, "_replay_into", no_replay_here)
    assert (await s.acme.events([view(f"a{i}") for i in range(50)])).status == 200
    assert (await s.acme.call("PUT", "/v1/config", {"window_size": 16})).status == 200
    kinds = [type(command).__name__ for command in sent]
    assert "Build" in kinds and "SwapIn" in kinds
    (build,) = [command for command in sent if type(command).__name__ == "Build"]
    assert build.until_seq == runtime.tenants[build.tenant_id].logged_seq  # the log's end when the change came
    assert all(command.engine is None for command in sent if type(command).__name__ == "SwapIn")
    assert (await s.acme.events([view("late", "add_to_cart")])).status == 200
    weights = await served_weights(s.acme)
    assert weights["events_applied"] == 51
    user = (await s.acme.call("GET", "/v1/users/late")).body
    assert user["recent_actions"] == [{"action": "add_to_cart", "ts": user["recent_actions"][0]["ts"]}]


async def test_an_erased_user_is_forgotten_by_the_worker_that_owns_it(start):
    s = await start(workers=2)
    assert (await s.globex.events([view("gone"), view("kept")])).status == 200
    assert (await s.globex.call("DELETE", "/v1/users/gone")).body["erased"] is True
    assert (await s.globex.call("GET", "/v1/users/gone")).status == 404
    assert (await s.globex.call("GET", "/v1/users/kept")).status == 200


async def test_a_worker_killed_under_ingest_loses_no_acknowledged_event_and_equals_a_replay(start):
    s = await start(workers=2, snapshot_interval_s=0.2)
    index, tenant_id = owner_pid(s, "acme")
    acknowledged, refused = 0, []

    async def send(n):
        nonlocal acknowledged
        for i in range(n):
            reply = await s.acme.events([view(f"u{(i * 7 + j) % 40}", ["view", "search"][j % 2]) for j in range(25)])
            if reply.status == 200:
                acknowledged += reply.body["accepted"]
            else:
                refused.append((reply.status, reply.body["error"]["code"]))

    senders = [asyncio.ensure_future(send(40)) for _ in range(3)]
    await asyncio.sleep(0.3)
    old_pid = s.runtime.host.pids()[index]
    s.runtime.host.kill(index)  # SIGKILL, mid-ingest
    await asyncio.gather(*senders)
    # Ingest never waited for the worker (the log acknowledged it): whatever was refused was refused as retryable.
    assert all(status == 503 for status, _ in refused), refused
    deadline = time.monotonic() + 60
    while True:  # 503 worker_restarting until the restarted worker has recovered the tenant
        reply = await s.acme.call("GET", "/v1/weights")
        if reply.status == 200 and reply.body["events_applied"] == acknowledged:
            break
        assert reply.status == 200 or reply.body["error"]["code"] == "worker_restarting", reply.body
        assert time.monotonic() < deadline, "the restarted worker never caught up with the log"
        await asyncio.sleep(0.1)
    assert s.runtime.host.pids()[index] != old_pid
    engine = replayed(s.data_dir, tenant_id)
    served, expected = reply.body, json.loads(json.dumps(weights_report(engine)))
    assert engine.events_applied == served["events_applied"] == acknowledged
    for key in ("alpha", "beta"):
        np.testing.assert_allclose([a[key] for a in served["actions"]], [a[key] for a in expected["actions"]],
                                   rtol=1e-9)
    np.testing.assert_allclose(served["transitions"]["probabilities"], expected["transitions"]["probabilities"],
                               rtol=1e-9)
    assert (await s.acme.score(*[f"u{i}" for i in range(40)])).status == 200


async def test_a_server_whose_workers_just_died_still_stops(start):
    """The recoveries in flight when the server stops are abandoned, and their late replies are dropped: the
    fixture's teardown (the server's stop) returns."""
    s = await start(workers=2)
    assert (await s.acme.events([view("a")])).status == 200
    for index in range(2):
        s.runtime.host.kill(index)
    await asyncio.sleep(0.05)
