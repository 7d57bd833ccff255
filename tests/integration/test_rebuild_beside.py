"""A config change rebuilds the tenant's engine beside the live one: while the rebuild runs, every tenant (the
changing one included) is scored and ingests, and the new engine serves with all of it once swapped in.

The rebuild is held open by the test (its replay waits on an event), so these hold whatever the machine's speed.
"""
import asyncio
import threading
import time

import numpy as np


HELD_S = 30


def view(uid, action="view", ago=30.0):
    return {"user_id": uid, "action": action, "ts": time.time() - ago}


class HeldRebuild:
    """Makes the replays on the rebuild thread wait until released; counts the engines swapped in."""

    def __init__(self, runtime, monkeypatch, from_replay: int = 1):
        self.entered, self.release = threading.Event(), threading.Event()
        self.swaps, replays = [], []
        replay, swap = runtime._replay_into, runtime._swap_engine

        def held_replay(engine, tenant, reader=None, until_seq=None):
            if threading.current_thread().name.startswith("nudge-rebuild"):
                replays.append(1)
                if len(replays) >= from_replay:
                    self.entered.set()
                    assert self.release.wait(HELD_S), "the test never released the rebuild"
            return replay(engine, tenant, reader, until_seq)

        def counted_swap(state, engine, config):
            self.swaps.append(config)
            return swap(state, engine, config)

        monkeypatch.setattr(runtime, "_replay_into", held_replay)
        monkeypatch.setattr(runtime, "_swap_engine", counted_swap)

    async def wait_entered(self):
        for _ in range(HELD_S * 20):
            if self.entered.is_set():
                return
            await asyncio.sleep(0.05)
        raise AssertionError("no rebuild started")


async def test_while_a_tenant_rebuilds_every_tenant_is_served_and_the_new_engine_gets_it_all(start, monkeypatch):
    s = await start()
    acme, globex = s.acme, s.globex
    assert (await acme.events([view(f"a{i}", ["view", "add_to_cart"][i % 2]) for i in range(300)])).status == 200
    assert (await globex.events([view(f"g{i}") for i in range(50)])).status == 200
    held = HeldRebuild(s.runtime, monkeypatch)
    state = s.runtime.tenants[next(t for t, st in s.runtime.tenants.items() if st.tenant.name == "acme")]
    live = state.engine

    change = asyncio.ensure_future(acme.call("PUT", "/v1/config", {"window_size": 16, "horizon_s": 1800}))
    await held.wait_entered()

    # The rebuild is under way. Another tenant is scored and ingests...
    assert (await globex.score("g1", "g2")).status == 200
    assert (await globex.events([view("g-late")])).status == 200
    # ... and so is the tenant being rebuilt, by its live engine, with its new events seen at once.
    assert (await acme.events([view("a-late", "add_to_cart", ago=5)])).status == 200
    late = await acme.call("GET", "/v1/users/a-late")
    assert late.status == 200 and [a["action"] for a in late.body["recent_actions"]] == ["add_to_cart"]
    assert (await acme.score("a1", "a-late")).status == 200
    # An erasure during the rebuild, after the replay may have read the user's events.
    assert (await acme.call("DELETE", "/v1/users/a3")).body["erased"] is True
    assert not change.done() and state.engine is live

    held.release.set()
    answer = await asyncio.wait_for(change, HELD_S)
    assert answer.status == 200, answer.body
    assert state.engine is not live and len(held.swaps) == 1
    assert state.engine.config.window_size == 16 and state.engine.config.horizon_s == 1800
    # The new engine has the events committed during the rebuild, and not the user erased during it.
    late = await acme.call("GET", "/v1/users/a-late")
    assert late.status == 200 and [a["action"] for a in late.body["recent_actions"]] == ["add_to_cart"]
    assert (await acme.call("GET", "/v1/users/a3")).status == 404
    assert (await acme.call("GET", "/v1/users/a5")).status == 200
    assert state.engine.applied_seq == live.applied_seq


async def test_quick_config_changes_make_at_most_two_rebuilds_and_the_last_one_serves(start, monkeypatch):
    s = await start()
    assert (await s.acme.events([view(f"a{i}") for i in range(100)])).status == 200
    held = HeldRebuild(s.runtime, monkeypatch)
    first = asyncio.ensure_future(s.acme.call("PUT", "/v1/config", {"window_size": 8}))
    await held.wait_entered()
    rest = [asyncio.ensure_future(s.acme.call("PUT", "/v1/config", {"window_size": 8 + i})) for i in range(1, 10)]
    for _ in range(200):  # every change stored while the first rebuild is held
        if (await s.acme.call("GET", "/v1/config")).body["window_size"] == 17:
            break
        await asyncio.sleep(0.02)
    held.release.set()
    answers = await asyncio.wait_for(asyncio.gather(first, *rest), HELD_S)
    assert [a.status for a in answers] == [200] * 10
    assert [c.window_size for c in held.swaps] == [8, 17]
    state = next(st for st in s.runtime.tenants.values() if st.tenant.name == "acme")
    assert state.engine.config.window_size == 17


async def test_a_large_log_is_replayed_in_a_child_process_to_the_same_state_as_here(start, monkeypatch):
    from model import Engine
    from server import rebuild
    from server.storage import Store

    monkeypatch.setattr(rebuild, "CHILD_PROCESS_EVENTS", 100)  # this log counts as large
    children = []
    pool = rebuild.child_pool
    monkeypatch.setattr(rebuild, "child_pool", lambda: children.append(1) or pool())
    s = await start()
    assert (await s.acme.events([view(f"a{i % 40}", ["view", "add_to_cart", "purchase"][i % 3]) for i in range(400)])
            ).status == 200
    answer = await s.acme.call("PUT", "/v1/config", {"window_size": 16, "horizon_s": 1800})
    assert answer.status == 200, answer.body
    assert children == [1]
    state = next(st for st in s.runtime.tenants.values() if st.tenant.name == "acme")
    here = Engine(state.tenant.config, backend="numpy")
    store = Store(s.data_dir)
    try:
        for batch, seqs in store.read_events(state.tenant.id, here.config):
            here.apply(batch, seqs)
    finally:
        store.close()
    served, replayed = state.engine.state_dict(), here.state_dict()
    assert served.keys() == replayed.keys()
    # The count of Thompson draws made goes on from the engine replaced (a swap keeps it), so it differs.
    draws = 2
    served["scalars"], replayed["scalars"] = np.delete(served["scalars"], draws), np.delete(replayed["scalars"], draws)
    for key in served:
        np.testing.assert_array_equal(served[key], replayed[key], err_msg=key)
    late = await s.acme.call("GET", "/v1/users/a5")
    assert late.status == 200 and len(late.body["recent_actions"]) == 10


async def _catching_up_held(start, monkeypatch):
    """acme's config change held in its first catch-up round (after the rebuild's own replay), with acme allowed
    10 events ahead of its rebuilt engine: (server, acme's state, the held rebuild, the change's answer)."""
    from server import runtime as runtime_module

    monkeypatch.setattr(runtime_module, "_REBUILD_MAX_LAG_EVENTS", 10)
    monkeypatch.setattr(runtime_module, "_REBUILD_SWAP_EVENTS", 0)
    s = await start(ingest_wait_ms=0)
    assert (await s.acme.events([view(f"a{i}") for i in range(100)])).status == 200
    state = next(st for st in s.runtime.tenants.values() if st.tenant.name == "acme")
    held = HeldRebuild(s.runtime, monkeypatch, from_replay=2)
    change = asyncio.ensure_future(s.acme.call("PUT", "/v1/config", {"window_size": 16}))
    await held.wait_entered()
    return s, state, held, change


async def test_a_tenant_far_ahead_of_its_rebuild_is_held_back_and_its_change_finishes(start, monkeypatch):
    """While its rebuilt engine is caught up, a tenant whose log runs more than _REBUILD_MAX_LAG_EVENTS ahead of
    it gets 503: otherwise a tenant sending as fast as a replay applies would never see its change finish.
    Other tenants are not held back."""
    s, state, held_rebuild, change = await _catching_up_held(start, monkeypatch)
    acme, globex = s.acme, s.globex
    assert state.catching_up is not None
    assert (await acme.events([view(f"b{i}") for i in range(20)])).status == 200  # 0 ahead when it came
    held = await acme.events([view("c")])  # 20 ahead of the rebuilt engine now: more than 10
    assert held.status == 503 and held.body["error"]["code"] == "overloaded" and "Retry-After" in held.headers
    assert (await globex.events([view("g")])).status == 200
    held_rebuild.release.set()
    assert (await asyncio.wait_for(change, HELD_S)).status == 200
    assert state.catching_up is None
    assert (await acme.events([view("c")])).status == 200
    assert state.engine.config.window_size == 16 and "b19" in state.engine.windows.index


def test_the_rebuild_child_stops_reading_after_its_passes_when_the_log_keeps_growing(tmp_path, monkeypatch):
    # A tenant flooding as fast as a replay applies: every pass finds as many new events as the last. The child
    # hands over after MAX_PASSES (the server then catches up, holding that tenant back).
    from model import TenantConfig
    from server import rebuild
    from server.storage import Store

    Store(tmp_path).close()
    passes = []
    monkeypatch.setattr(rebuild, "replay", lambda engine, log, tenant_id: passes.append(1) or 10_000)
    state = rebuild.replay_state(str(tmp_path), 1, TenantConfig().to_dict(), settle_events=2_000)
    assert len(passes) == rebuild.MAX_PASSES and "scalars" in state


def test_a_build_reads_the_log_only_as_far_as_it_reached_when_the_change_came(tmp_path):
    # In a worker, the build replays beside the live engine on the same core: chasing a log that grows as fast as
    # it reads, it would not reply until the tenant stopped sending. It stops where the log was; the catch-up
    # rounds that follow hold the tenant's ingest back.
    from model import Engine, EventBatch, TenantConfig
    from server import rebuild
    from server.storage import Store

    cfg = TenantConfig()
    store = Store(tmp_path)
    tenant, _ = store.create_tenant("acme", cfg)
    for k in range(3):
        batch = EventBatch.build([f"u{k}"] * 3, [0] * 3, time.time() - 60 + np.arange(3) + 3 * k)
        store.append([(tenant.id, batch, cfg)])
    engine = Engine(cfg)
    assert rebuild.replay(engine, store, tenant.id, until_seq=3) == 3 and engine.applied_seq == 3
    assert rebuild.replay(engine, store, tenant.id, until_seq=4) == 3 and engine.applied_seq == 6  # whole batches
    assert rebuild.replay(engine, store, tenant.id) == 3 and engine.applied_seq == 9
    store.close()


async def test_while_the_swap_waits_for_its_turn_the_changing_tenant_cannot_pile_up_a_replay(start, monkeypatch):
    """The swap's last replay runs on the device thread that every tenant shares, after the tenant's queued work:
    while it waits, the tenant's ingest is held back once the log is _REBUILD_SWAP_EVENTS ahead."""
    from server import runtime as runtime_module

    monkeypatch.setattr(runtime_module, "_REBUILD_SWAP_EVENTS", 0)
    s = await start(ingest_wait_ms=0)
    acme, globex = s.acme, s.globex
    assert (await acme.events([view(f"a{i}") for i in range(100)])).status == 200
    state = next(st for st in s.runtime.tenants.values() if st.tenant.name == "acme")
    busy = asyncio.ensure_future(s.runtime.on_device(time.sleep, 1.5, lane=state.tenant.id))  # the lane's work
    await asyncio.sleep(0.05)
    change = asyncio.ensure_future(acme.call("PUT", "/v1/config", {"window_size": 16}))
    for _ in range(HELD_S * 20):
        if state.catching_up is not None and state.catch_up_lag == 0:
            break
        await asyncio.sleep(0.01)
    assert not busy.done(), "the swap should still be waiting behind the lane's work"
    assert (await acme.events([view("b")])).status == 200  # the log was not ahead yet
    held = await acme.events([view("c")])
    assert held.status == 503 and held.body["error"]["code"] == "overloaded"
    assert (await globex.events([view("g")])).status == 200
    assert (await asyncio.wait_for(change, HELD_S)).status == 200
    await busy
    assert state.catching_up is None and "b" in state.engine.windows.index
    assert (await acme.events([view("c")])).status == 200


async def test_batches_waiting_for_their_commit_count_as_ahead_of_a_rebuild(start, monkeypatch):
    """Admitted batches not yet committed will be in the log: they count toward how far the tenant is ahead of
    its rebuilt engine, and the swap waits for them to be committed and caught up."""
    s, state, held_rebuild, change = await _catching_up_held(start, monkeypatch)
    acme = s.acme
    commits_open, append = threading.Event(), s.runtime.store.append
    monkeypatch.setattr(s.runtime.store, "append", lambda *a: commits_open.wait(HELD_S) and append(*a))
    waiting = asyncio.ensure_future(acme.events([view(f"p{i}") for i in range(20)]))  # admitted, not committed
    await asyncio.sleep(0.2)
    try:
        held = await asyncio.wait_for(acme.events([view("q")]), 5)  # admitted, it would wait behind the hold
    finally:
        commits_open.set()
    assert held.status == 503 and held.body["error"]["code"] == "overloaded"
    held_rebuild.release.set()
    assert (await waiting).status == 200
    assert (await asyncio.wait_for(change, HELD_S)).status == 200
    assert "p19" in state.engine.windows.index and state.engine.config.window_size == 16


def test_the_rebuild_child_ends_when_the_server_process_is_killed(tmp_path):
    """A server killed mid-build must not leave its child blocked for ever on sending an engine back."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "parent.py"
    script.write_text(
        "import os, time\n"
        "from server.rebuild import child_pool\n"
        "if __name__ == '__main__':\n"
        "    pool = child_pool()\n"
        "    print(pool.submit(os.getpid).result(), flush=True)\n"
        "    pool.submit(time.sleep, 600)\n"
        "    time.sleep(600)\n"
    )
    root = Path(__file__).resolve().parents[2]
    parent = subprocess.Popen([sys.executable, str(script)], cwd=root, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(root)})
    try:
        child = int(parent.stdout.readline())
        os.kill(child, 0)  # alive while its parent is
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            _reap(child)
            time.sleep(0.1)
        else:
            os.kill(child, signal.SIGKILL)
            raise AssertionError("the rebuild child outlived its server")
    finally:
        parent.kill()


def _reap(pid: int) -> None:
    """Collect ``pid`` where it became this process's child (a subreaper), so that it can vanish."""
    import os

    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
