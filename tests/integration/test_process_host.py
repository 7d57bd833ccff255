"""The process host on its own: a real worker process, a real log, commands over the pipe, no HTTP."""
import concurrent.futures
import threading
import time

import numpy as np
import pytest

from core import NotOpen
from core import commands as c
from model import EventBatch, TenantConfig
from server import Store
from server.worker_process import ProcessHost, WorkerLost
from server.worker_runner import Build, CatchUpBuild, DropBuild, Recover, SaveSnapshot, SwapIn, Sync

CFG = TenantConfig(holdout_share=0.0)
T0 = time.time() - 3600


@pytest.fixture
def logged(tmp_path):
    """A data dir whose tenant has 30 events logged: views of u0 to u5, then one add_to_cart of user "cart"."""
    store = Store(tmp_path)
    tenant, _ = store.create_tenant("acme", CFG)
    users = [f"u{i % 6}" for i in range(29)] + ["cart"]
    actions = [CFG.actions.index("view")] * 29 + [CFG.actions.index("add_to_cart")]
    batch = EventBatch.build(np.array(users, object), np.array(actions, np.int32), T0 + np.arange(30.0))
    store.append([(tenant.id, batch, CFG)])
    store.close()
    return tmp_path, tenant.id


@pytest.fixture
def host_of(logged):
    hosts = []

    def make(workers=1, sink=lambda tenant_id, decisions, resolutions: None, on_restart=lambda index: None):
        hosts.append(ProcessHost(workers, logged[0], "numpy", sink, on_restart))
        return hosts[-1]

    yield make
    for host in hosts:
        host.shutdown()


def result(future):
    return future.result(timeout=60).result


def test_process_host_recovers_a_tenant_from_the_log_and_answers_in_order(logged, host_of):
    _, tenant_id = logged
    host = host_of(workers=2)
    assert host.owner(tenant_id) == tenant_id % 2 and len(set(host.pids())) == 2
    recovered = result(host.send(Recover(tenant_id, CFG)))
    assert (recovered.replayed, recovered.applied_seq, recovered.users) == (30, 30, 7)
    sent = [host.send(c.View(tenant_id, f"u{i}", T0 + 100)) for i in range(6)]
    assert [result(f)["user_id"] for f in sent] == [f"u{i}" for i in range(6)]
    with pytest.raises(NotOpen):  # the other tenant was never recovered in its worker
        result(host.send(c.View(tenant_id + 1, "u1", T0)))
    assert host.barrier().result(timeout=60) is None


def test_process_host_gives_decisions_to_the_sink_before_the_reply(logged, host_of):
    _, tenant_id = logged
    seen = []
    host = host_of(sink=lambda tenant, decisions, resolutions: seen.append((tenant, [d.user_id for d in decisions])))
    result(host.send(Recover(tenant_id, CFG)))
    idle = host.send(c.DecideIdle(tenant_id, T0 + 28, T0 + 29 + CFG.cart_idle_s + 1))
    idle.result(timeout=60)
    assert seen == [(tenant_id, ["cart"])]  # its cart went idle


def test_process_host_writes_snapshots_in_the_worker(logged, host_of):
    data_dir, tenant_id = logged
    host = host_of()
    result(host.send(Recover(tenant_id, CFG)))
    assert result(host.send(SaveSnapshot(tenant_id))) == 30
    assert (data_dir / "snapshots" / f"tenant-{tenant_id}.npz").exists()
    again = host_of()  # a fresh worker starts from that snapshot, with nothing left to replay
    recovered = result(again.send(Recover(tenant_id, CFG)))
    assert recovered.from_snapshot and recovered.replayed == 0 and recovered.applied_seq == 30


def test_process_host_fails_what_a_killed_worker_owed_and_starts_it_again(logged, host_of):
    _, tenant_id = logged
    restarted = threading.Event()
    host = host_of(on_restart=lambda index: restarted.set())
    result(host.send(Recover(tenant_id, CFG)))
    old = host.pids()[0]
    host.kill(0)
    with pytest.raises((WorkerLost, NotOpen)):  # lost with the process, or sent to its successor before recovery
        for _ in range(200):
            result(host.send(c.View(tenant_id, "u1", T0)))
            time.sleep(0.01)
    assert restarted.wait(30) and host.pids()[0] != old
    result(host.send(Recover(tenant_id, CFG)))
    assert result(host.send(c.View(tenant_id, "u1", T0 + 100)))["user_id"] == "u1"


def test_a_caller_that_stops_waiting_does_not_stop_the_replies(logged, host_of):
    _, tenant_id = logged
    host = host_of()
    slow = host.send(Recover(tenant_id, CFG))
    assert slow.cancel() or slow.done()  # the caller gives up (a cancelled request)
    after = host.send(Sync(tenant_id))
    assert isinstance(after.result(timeout=60).result, type(None))
    with pytest.raises(concurrent.futures.CancelledError):
        slow.result(timeout=0)
    assert result(host.send(c.View(tenant_id, "u1", T0 + 100)))["user_id"] == "u1"  # the recovery did run


def test_an_engine_is_built_in_the_worker_beside_the_live_one_and_swapped_in_there(logged, host_of):
    """A config change's engine is built on the worker's builder thread from the log, caught up with what was logged
    meanwhile, and served by a SwapIn that carries no engine; the live engine answers until then, and a dropped
    build leaves nothing behind."""
    data_dir, tenant_id = logged
    host = host_of()
    result(host.send(Recover(tenant_id, CFG)))
    wider = TenantConfig(holdout_share=0.0, window_size=8)
    assert result(host.send(Build(tenant_id, wider))) == (30, 30)
    # More events are logged; the live engine has not applied them, the built one catches them up.
    store = Store(data_dir)
    late = EventBatch.build(np.array(["late"], object), np.array([CFG.actions.index("purchase")], np.int32),
                            np.array([T0 + 40.0]))
    store.append([(tenant_id, late, CFG)])
    store.close()
    assert result(host.send(CatchUpBuild(tenant_id))) == (1, 31)
    assert result(host.send(c.Weights(tenant_id)))["events_applied"] == 30  # still the live engine
    replayed, _, applied_seq, users = result(host.send(SwapIn(tenant_id, None, wider)))
    assert (replayed, applied_seq, users) == (0, 31, 8)
    assert result(host.send(c.Weights(tenant_id)))["events_applied"] == 31
    # A build given up is forgotten: a SwapIn without an engine then has nothing to serve.
    assert result(host.send(Build(tenant_id, CFG))) == (31, 31)
    assert result(host.send(DropBuild(tenant_id))) is None
    with pytest.raises(KeyError):
        result(host.send(SwapIn(tenant_id, None, CFG)))


def test_a_large_log_is_built_in_the_worker_process_too(tmp_path):
    """Past the size that the server's rebuild gives a child process: a worker process (a daemon, which may start
    no child) builds it on its builder thread."""
    from server import rebuild

    store = Store(tmp_path)
    tenant, _ = store.create_tenant("big", CFG)
    n = rebuild.CHILD_PROCESS_EVENTS + 1
    batch = EventBatch.build(np.array([f"u{i % 5000}" for i in range(n)], object),
                             np.full(n, CFG.actions.index("view"), np.int32), T0 + np.arange(n) * 0.01)
    last = int(store.append([(tenant.id, batch, CFG)])[0].seqs[-1])
    store.close()
    host = ProcessHost(1, tmp_path, "numpy", lambda *args: None, lambda index: None)
    try:
        result(host.send(Recover(tenant.id, CFG)))
        assert result(host.send(Build(tenant.id, TenantConfig(holdout_share=0.0, window_size=8)))) == (n, last)
        assert result(host.send(SwapIn(tenant.id, None, TenantConfig(holdout_share=0.0, window_size=8))))[2] == last
    finally:
        host.shutdown()

