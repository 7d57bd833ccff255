"""Ingest throughput and score latency of a real ``nudge serve`` process, in msgpack.

    python -m loadtests.bench_core [--seconds 10] [--concurrency 8]

Starts the server on a fresh data dir, drives it from this process with aiohttp, prints one row
per workload. The load generator shares the machine: on 2 cores it takes about half of it, so the
figures are a floor, not the server's ceiling (issue 6's benchmark adds a bare-server ratio).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import msgpack
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ACTIONS = ["view"] * 6 + ["search", "favorite", "add_to_cart", "purchase"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _events_body(rng: random.Random, n: int, users: int) -> bytes:
    now = time.time()
    events = [
        {"user_id": f"u{rng.randrange(users)}", "action": rng.choice(ACTIONS), "ts": now - rng.uniform(0, 60),
         "context": {"device": "mobile"}}
        for _ in range(n)
    ]
    return msgpack.packb({"events": events})


def _score_body(rng: random.Random, n: int, users: int) -> bytes:
    return msgpack.packb({"users": [{"user_id": f"u{rng.randrange(users)}"} for _ in range(n)]})


async def _drive(session, url, key, bodies, seconds, concurrency):
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/msgpack"}
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker(i: int):
        nonlocal errors
        k = i
        while time.perf_counter() < deadline:
            body = bodies[k % len(bodies)]
            k += concurrency
            started = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as r:
                await r.read()
                if r.status != 200:
                    errors += 1
                    continue
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return np.array(latencies), time.perf_counter() - started, errors


async def run(seconds: float, concurrency: int) -> list[dict]:
    data_dir = Path(tempfile.mkdtemp(prefix="nudge-bench-"))
    port = _free_port()
    key = subprocess.run(
        [sys.executable, "-m", "server.cli", "tenant", "create", "bench", "--data-dir", str(data_dir)],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout.strip().splitlines()[-1]
    env = {**os.environ, "NUDGE_RATE_LIMIT_PER_S": "0", "NUDGE_LOG_LEVEL": "WARNING"}
    server = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--data-dir", str(data_dir), "--port", str(port), "--backend", "numpy"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    rng = random.Random(0)
    rows = []
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            for _ in range(200):
                try:
                    async with session.get(f"{base}/readyz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            workloads = [
                ("ingest, 1000 events/request", "/v1/events", [_events_body(rng, 1000, 50_000) for _ in range(20)], 1000),
                ("ingest, 100 events/request", "/v1/events", [_events_body(rng, 100, 50_000) for _ in range(50)], 100),
                ("score, 1 user/request", "/v1/score", [_score_body(rng, 1, 50_000) for _ in range(200)], 1),
                ("score, 100 users/request", "/v1/score", [_score_body(rng, 100, 50_000) for _ in range(50)], 100),
            ]
            for name, path, bodies, per_request in workloads:
                lat, elapsed, errors = await _drive(session, base + path, key, bodies, seconds, concurrency)
                rows.append({
                    "workload": name,
                    "requests_per_s": len(lat) / elapsed,
                    "items_per_s": len(lat) * per_request / elapsed,
                    "p50_ms": float(np.percentile(lat, 50) * 1e3) if len(lat) else float("nan"),
                    "p99_ms": float(np.percentile(lat, 99) * 1e3) if len(lat) else float("nan"),
                    "errors": errors,
                })
    finally:
        server.terminate()
        server.wait(30)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per workload")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    args = parser.parse_args()
    rows = asyncio.run(run(args.seconds, args.concurrency))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}; "
          f"backend numpy; {args.concurrency} requests in flight; {args.seconds:g} s per workload")
    print("| workload | requests/s | events or users/s | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['workload']} | {r['requests_per_s']:.0f} | {r['items_per_s']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} |")


if __name__ == "__main__":
    main()
