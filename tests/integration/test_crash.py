"""SIGKILL the server, or one of its worker processes, mid-ingest: every acknowledged event survives, and state
equals a replay of the log."""
import asyncio
import contextlib
import json
import os
import random
import signal
import time

import aiohttp
import numpy as np
import pytest

from loadtests._server_proc import free_port, start_server, wait_ready
from model import Engine, TenantConfig
from model.report import weights_report
from server import Store

ACTIONS = ["view", "view", "view", "search", "add_to_cart", "favorite", "purchase"]


# Event time runs 2000x faster than the clock from two days ago, so horizons close, posteriors
# forget and some events arrive late while the test runs for a few seconds.
SIM_START, SIM_SPEED = time.time() - 2 * 86400, 2000.0


def sim_now(t0: float) -> float:
    return SIM_START + (time.monotonic() - t0) * SIM_SPEED


async def client(session, base, key, name, rng, acked, stop, t0):
    headers = {"Authorization": f"Bearer {key}"}
    n = 0
    while not stop.is_set():
        batch = [
            {
                "user_id": f"user-{rng.randrange(300)}",
                "action": rng.choice(ACTIONS),
                "ts": sim_now(t0) - rng.expovariate(1 / 10.0),
                "event_id": f"{name}-{n}-{i}",
            }
            for i in range(rng.randrange(1, 60))
        ]
        n += 1
        try:
            async with session.post(f"{base}/v1/events", json={"events": batch}, headers=headers) as r:
                if r.status == 200:
                    body = await r.json()
                    assert body == {"accepted": len(batch), "duplicates": 0}
                    acked.append(batch)
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return  # the server is gone


def worker_pids(server_pid: int) -> list[int]:
    """The server's worker processes (its spawned children, not multiprocessing's resource tracker)."""
    pids = []
    for task in os.listdir(f"/proc/{server_pid}/task"):
        with open(f"/proc/{server_pid}/task/{task}/children") as fh:
            pids += [int(p) for p in fh.read().split()]
    workers = []
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as fh:
            if b"spawn_main" in fh.read():
                workers.append(pid)
    return workers


@pytest.mark.slow
@pytest.mark.parametrize("workers, victim", [(0, "server"), (1, "server"), (1, "worker")])
async def test_sigkill_loses_no_acknowledged_event(tmp_path, workers, victim):
    data_dir, port = tmp_path / "data", free_port()
    store = Store(data_dir)
    _, key = store.create_tenant("acme", TenantConfig(horizon_s=30.0, allowed_lateness_s=5.0, recency_half_life_s=60.0))
    store.close()
    base, log_path = f"http://127.0.0.1:{port}", tmp_path / "server.log"
    rng = random.Random(int(os.environ.get("CRASH_SEED", time.time_ns() % 2**32)))
    acked: list[list[dict]] = []
    proc = start_server(data_dir, port, log_path, workers=str(workers))
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            await wait_ready(session, base, proc)
            stop = asyncio.Event()
            t0 = time.monotonic()
            clients = [
                asyncio.ensure_future(client(session, base, key, f"c{i}", random.Random(rng.random()), acked, stop, t0))
                for i in range(8)
            ]
            await asyncio.sleep(rng.uniform(0.8, 2.5))
            if victim == "worker":  # the server starts it again and recovers its tenant, under the same ingest
                (pid,) = worker_pids(proc.pid)
                os.kill(pid, signal.SIGKILL)
                await asyncio.sleep(rng.uniform(0.5, 1.5))
                assert proc.poll() is None
                (restarted,) = worker_pids(proc.pid)
                assert restarted != pid
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            stop.set()
            await asyncio.gather(*clients)
        assert len(acked) > 10, log_path.read_text()[-2000:]

        proc = start_server(data_dir, port, log_path, workers=str(workers))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            await wait_ready(session, base, proc)
            headers = {"Authorization": f"Bearer {key}"}
            async with session.get(f"{base}/readyz") as r:
                recovery = (await r.json())["recovery"]
            async with session.get(f"{base}/v1/weights", headers=headers) as r:
                served = await r.json()

            # Offline replay of exactly what the log holds, through the same engine code.
            store = Store(data_dir)
            tenant = store.tenants()[0]
            engine = Engine(tenant.config)
            logged_ids = set()
            for batch, seqs in store.read_events(tenant.id, tenant.config):
                engine.apply(batch, seqs)
                logged_ids.update(batch.event_ids.tolist())
            store.close()
            replayed = json.loads(json.dumps(weights_report(engine)))

            sent_ids = {e["event_id"] for batch in acked for e in batch}
            assert sent_ids <= logged_ids  # every acknowledged event is in the log
            assert all(i.startswith("c") for i in logged_ids)  # and nothing that was never sent
            assert served["events_applied"] == replayed["events_applied"] == len(logged_ids)
            assert served["late_events"] == replayed["late_events"] > 0
            prior_strength = TenantConfig().prior_strength
            resolved = sum(a["alpha"] + a["beta"] - prior_strength for a in served["actions"])
            assert resolved > 50  # attribution really ran: outcomes were learned before the kill
            for key_name in ("alpha", "beta"):
                np.testing.assert_allclose([a[key_name] for a in served["actions"]], [a[key_name] for a in replayed["actions"]], rtol=1e-9)
            np.testing.assert_allclose(served["transitions"]["probabilities"], replayed["transitions"]["probabilities"], rtol=1e-9)
            np.testing.assert_allclose(served["transitions"]["lift"], replayed["transitions"]["lift"], rtol=1e-9)

            for batch in acked:  # resending every acknowledged batch: all duplicates
                async with session.post(f"{base}/v1/events", json={"events": batch}, headers=headers) as r:
                    assert await r.json() == {"accepted": 0, "duplicates": len(batch)}
        assert recovery["state"] == "ready" and recovery["from_snapshots"] == 1  # snapshot + log replay
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)
