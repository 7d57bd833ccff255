"""nudge against a bare aiohttp msgpack server, under the same load, in one run.

    python -m loadtests.bench [--seconds 6] [--concurrency 16] [--generators 2] [--backend numpy]
                              [--parts workloads,batching,overload] [--only score] [--model MODEL.pt]

Starts ``nudge serve`` on a fresh data dir and ``loadtests.bare_server`` (decode the body, answer a fixed
body), and drives both from load-generator processes with the same bodies. Prints, per workload:
requests/s, events or users/s, p50 and p99 latency, and nudge's ratio to the bare server; then the
micro-batching gain (batching on vs ``max_batch_size=1``) and the behaviour at three times the
sustainable scoring rate. The generators' own CPU use is printed too: a generator near 100 % of its
core is the bottleneck, not the server.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from .locustfile import events_body, score_body

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(url)


class Nudge:
    """A ``nudge serve`` process on a fresh data dir, with one tenant."""

    def __init__(self, backend: str, model: str | None = None, **settings):
        self.data_dir = Path(tempfile.mkdtemp(prefix="nudge-bench-"))
        if model:  # served from the first request on: the Transformer predicts for users with history
            (self.data_dir / "models").mkdir()
            shutil.copy(model, self.data_dir / "models" / "bench.pt")
        self.key = subprocess.run(
            [sys.executable, "-m", "server.cli", "tenant", "create", "bench", "--data-dir", str(self.data_dir)],
            cwd=ROOT, check=True, capture_output=True, text=True,
        ).stdout.strip().splitlines()[-1]
        port = _free_port()
        env = {**os.environ, "NUDGE_RATE_LIMIT_PER_S": "0", "NUDGE_LOG_LEVEL": "WARNING",
               **{f"NUDGE_{k.upper()}": str(v) for k, v in settings.items()}}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--data-dir", str(self.data_dir), "--port", str(port),
             "--backend", backend],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.base = f"http://127.0.0.1:{port}"
        _wait_http(self.base + "/readyz", self.proc)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


class Bare:
    def __init__(self):
        port = _free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "loadtests.bare_server", "--port", str(port)], cwd=ROOT)
        self.base = f"http://127.0.0.1:{port}"
        self.key = "none"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("bare server")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


# ---- the load generator (runs in worker processes) ------------------------------------------------

def _fast_loop() -> None:
    """The generators run on uvloop where it is installed: cheaper requests, more load per core."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _closed_loop(url: str, key: str, bodies: list[bytes], seconds: float, concurrency: int) -> dict:
    """``concurrency`` requests in flight, each sent as soon as the previous one answered."""
    import aiohttp

    _fast_loop()

    async def run():
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/msgpack"}
        latencies, statuses = [], collections.Counter()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            deadline = time.perf_counter() + seconds

            async def worker(i: int):
                k = i
                while time.perf_counter() < deadline:
                    body = bodies[k % len(bodies)]
                    k += concurrency
                    started = time.perf_counter()
                    async with session.post(url, data=body, headers=headers) as r:
                        await r.read()
                    statuses[r.status] += 1
                    if r.status == 200:
                        latencies.append(time.perf_counter() - started)

            started = time.perf_counter()
            await asyncio.gather(*(worker(i) for i in range(concurrency)))
            return latencies, statuses, time.perf_counter() - started

    cpu = time.process_time()
    latencies, statuses, elapsed = asyncio.run(run())
    return {"latencies": latencies, "statuses": dict(statuses), "elapsed": elapsed, "cpu_s": time.process_time() - cpu}


def _open_loop(url: str, key: str, bodies: list[bytes], seconds: float, rate: float) -> dict:
    """Requests sent at a fixed rate whatever the answers (at most 4096 outstanding)."""
    import aiohttp

    _fast_loop()

    async def run():
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/msgpack"}
        latencies, statuses = [], collections.Counter()
        outstanding = asyncio.Semaphore(4096)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            async def one(body):
                started = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as r:
                        await r.read()
                    statuses[r.status] += 1
                    if r.status == 200:
                        latencies.append(time.perf_counter() - started)
                    elif "Retry-After" in r.headers:
                        statuses["with Retry-After"] += 1
                except aiohttp.ClientError:
                    statuses["connection error"] += 1
                finally:
                    outstanding.release()

            tasks, start = [], time.perf_counter()
            for i in range(int(seconds * rate)):
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if outstanding.locked():
                    statuses["not sent (4096 outstanding)"] += 1
                    continue
                await outstanding.acquire()
                tasks.append(asyncio.create_task(one(bodies[i % len(bodies)])))
            await asyncio.gather(*tasks)
            return latencies, statuses, time.perf_counter() - start

    cpu = time.process_time()
    latencies, statuses, elapsed = asyncio.run(run())
    return {"latencies": latencies, "statuses": dict(statuses), "elapsed": elapsed, "cpu_s": time.process_time() - cpu}


def drive(pool, generators: int, fn, *args) -> dict:
    """Run one load shape on every generator process at once and merge the results."""
    parts = [pool.submit(fn, *args) for _ in range(generators)]
    results = [p.result() for p in parts]
    statuses = collections.Counter()
    for r in results:
        statuses.update(r["statuses"])
    latencies = np.array([x for r in results for x in r["latencies"]])
    elapsed = max(r["elapsed"] for r in results)
    return {"latencies": latencies, "statuses": dict(statuses), "elapsed": elapsed,
            "generator_cores": sum(r["cpu_s"] for r in results) / elapsed, "ok": len(latencies)}


def _summary(result: dict, per_request: int) -> dict:
    lat = result["latencies"]
    ok = result["ok"]
    return {
        "rps": ok / result["elapsed"], "items_per_s": ok * per_request / result["elapsed"],
        "p50_ms": float(np.percentile(lat, 50) * 1e3) if ok else float("nan"),
        "p99_ms": float(np.percentile(lat, 99) * 1e3) if ok else float("nan"),
        "errors": sum(n for s, n in result["statuses"].items() if s != 200),
        "generator_cores": result["generator_cores"],
    }


def _preload(target, rng: random.Random, batches: int = 60) -> None:
    """Give the scored users a history."""
    import aiohttp

    async def run():
        headers = {"Authorization": f"Bearer {target.key}", "Content-Type": "application/msgpack"}
        async with aiohttp.ClientSession() as session:
            for _ in range(batches):
                body = events_body(rng, 1000, False)
                while True:
                    async with session.post(target.base + "/v1/events", data=body, headers=headers) as r:
                        await r.read()
                    if r.status != 503:
                        break
                    await asyncio.sleep(0.2)  # shed while the engine catches up
            if isinstance(target, Nudge):  # a barrier: answered once every acknowledged event is applied
                async with session.get(target.base + "/v1/stats", headers=headers) as r:
                    await r.read()

    asyncio.run(run())


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


WORKLOADS = [
    ("ingest rows, 100 events", "/v1/events", 100, lambda rng: events_body(rng, 100, False)),
    ("ingest rows, 1000 events", "/v1/events", 1000, lambda rng: events_body(rng, 1000, False)),
    ("ingest columns, 100 events", "/v1/events", 100, lambda rng: events_body(rng, 100, True)),
    ("ingest columns, 1000 events", "/v1/events", 1000, lambda rng: events_body(rng, 1000, True)),
    ("score 1 user", "/v1/score", 1, lambda rng: score_body(rng, 1)),
    ("score 100 users", "/v1/score", 100, lambda rng: score_body(rng, 100)),
]


def run_workloads(pool, args, rng) -> list[dict]:
    rows = []
    nudge, bare = Nudge(args.backend, args.model), Bare()
    try:
        _preload(nudge, rng)
        for name, path, per_request, make in WORKLOADS:
            if args.only and args.only not in name:
                continue
            bodies = [make(rng) for _ in range(64 if per_request >= 100 else 512)]
            out = {"workload": name}
            for label, target in (("nudge", nudge), ("bare", bare)):
                result = drive(pool, args.generators, _closed_loop, target.base + path, target.key, bodies,
                               args.seconds, args.concurrency // args.generators)
                out[label] = _summary(result, per_request)
            rows.append(out)
    finally:
        nudge.stop()
        bare.stop()
    return rows


def run_batching(pool, args, rng) -> list[dict]:
    rows = []
    bodies = [score_body(rng, 1) for _ in range(512)]
    for label, settings in (("batching on (max_batch_size 1024)", {}), ("unbatched (max_batch_size 1)",
                                                                         {"max_batch_size": 1})):
        nudge = Nudge(args.backend, args.model, **settings)
        try:
            _preload(nudge, rng)
            result = drive(pool, args.generators, _closed_loop, nudge.base + "/v1/score", nudge.key, bodies,
                           args.seconds, max(1, args.batching_concurrency // args.generators))
            rows.append({"mode": label, **_summary(result, 1)})
        finally:
            nudge.stop()
    return rows


def run_overload(pool, args, rng, sustainable_rps: float) -> dict:
    """Open-loop scoring (100 users per request) at three times the sustainable rate; server memory sampled."""
    bodies = [score_body(rng, 100) for _ in range(64)]
    nudge = Nudge(args.backend, args.model)
    try:
        _preload(nudge, rng)
        levels = {}
        for factor in (0.5, 1.0):
            levels[factor] = drive(pool, args.generators, _open_loop, nudge.base + "/v1/score", nudge.key, bodies,
                                   args.seconds, factor * sustainable_rps / args.generators)
        rss = [_rss_mb(nudge.proc.pid)]
        future = concurrent.futures.ThreadPoolExecutor(1).submit(
            drive, pool, args.generators, _open_loop, nudge.base + "/v1/score", nudge.key, bodies, args.seconds,
            3.0 * sustainable_rps / args.generators)
        while not future.done():
            time.sleep(0.25)
            rss.append(_rss_mb(nudge.proc.pid))
        over = future.result()
        rss.append(_rss_mb(nudge.proc.pid))
    finally:
        nudge.stop()
    return {"sustainable_rps": sustainable_rps, "levels": {f: (_summary(r, 1), r["statuses"]) for f, r in levels.items()}
            | {3.0: (_summary(over, 1), over["statuses"])}, "offered_rps": 3.0 * sustainable_rps, "rss_mb": rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="per measurement")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight, over all generators")
    parser.add_argument("--batching-concurrency", type=int, default=64, help="requests in flight for the batching run")
    parser.add_argument("--generators", type=int, default=2, help="load-generator processes")
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--parts", default="workloads,batching,overload")
    parser.add_argument("--only", default="", help="run only the workloads whose name holds this text")
    parser.add_argument("--model", default=None, help="a checkpoint (nudge train) for the tenant to serve")
    parser.add_argument("--sustainable-rps", type=float, default=240.0,
                        help="score-100-users rate the overload run triples, when the workloads part is skipped")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    rng = random.Random(0)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"backend {args.backend}; {args.generators} generator processes; {args.seconds:g} s per measurement; "
          f"predictor {'transformer (' + args.model + ')' if args.model else 'markov'}")
    with concurrent.futures.ProcessPoolExecutor(args.generators) as pool:
        sustainable = None
        if "workloads" in parts:
            rows = run_workloads(pool, args, rng)
            print(f"\n{args.concurrency} requests in flight\n")
            print("| workload | nudge req/s | events or users/s | p50 ms | p99 ms | bare req/s | bare p99 ms "
                  "| throughput ratio | p99 ratio | generator cores (nudge / bare) | errors |")
            print("|---|---|---|---|---|---|---|---|---|---|---|")
            for r in rows:
                n, b = r["nudge"], r["bare"]
                print(f"| {r['workload']} | {n['rps']:.0f} | {n['items_per_s']:.0f} | {n['p50_ms']:.1f} | "
                      f"{n['p99_ms']:.1f} | {b['rps']:.0f} | {b['p99_ms']:.1f} | {n['rps'] / b['rps']:.2f} | "
                      f"{n['p99_ms'] / b['p99_ms']:.1f} | {n['generator_cores']:.2f} / {b['generator_cores']:.2f} | "
                      f"{n['errors']} |")
                if r["workload"] == "score 100 users":
                    sustainable = n["rps"]
        if "batching" in parts:
            rows = run_batching(pool, args, rng)
            print(f"\nmicro-batching, score 1 user, {args.batching_concurrency} requests in flight\n")
            print("| mode | req/s | p50 ms | p99 ms | errors |")
            print("|---|---|---|---|---|")
            for r in rows:
                print(f"| {r['mode']} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} |")
            print(f"\ngain: {rows[0]['rps'] / rows[1]['rps']:.1f}x the throughput, "
                  f"p99 {rows[0]['p99_ms']:.1f} vs {rows[1]['p99_ms']:.1f} ms")
        if "overload" in parts:
            o = run_overload(pool, args, rng, sustainable or args.sustainable_rps)
            print(f"\noverload: score 100 users, open loop at 3 x {o['sustainable_rps']:.0f} = "
                  f"{o['offered_rps']:.0f} req/s\n")
            print("| load | admitted req/s | p50 ms | p99 ms | answers |")
            print("|---|---|---|---|---|")
            for factor, (summary, statuses) in o["levels"].items():
                print(f"| {factor:g} x sustainable | {summary['rps']:.0f} | {summary['p50_ms']:.1f} | "
                      f"{summary['p99_ms']:.1f} | {statuses} |")
            nominal, over = o["levels"][1.0][0], o["levels"][3.0][0]
            print(f"\nadmitted p99 at 3 x: {over['p99_ms'] / nominal['p99_ms']:.1f} x the p99 at the sustainable rate")
            rss = o["rss_mb"]
            print(f"\nserver memory during the overload: {rss[0]:.0f} MB before, max {max(rss):.0f} MB, "
                  f"{rss[-1]:.0f} MB at the end")


if __name__ == "__main__":
    main()
