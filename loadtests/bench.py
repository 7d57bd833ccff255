"""nudge against a bare aiohttp msgpack server, under the same load, in one run.

    python -m loadtests.bench [--seconds 6] [--concurrency 16] [--generators 2] [--backend numpy]
                              [--parts workloads,batching,overload[,neighbours][,scaling]] [--only score]
                              [--model MODEL.pt]
                              [--peers] [--neighbour-rate 100] [--flood-factor 3] [--config-changes 3]
                              [--json OUT.json]

Starts ``nudge serve`` on a fresh data dir and ``loadtests.bare_server`` (decode the body, answer a fixed
body) with as many processes as nudge (:data:`NUDGE_PROCESSES`), and drives both from load-generator
processes with the same bodies (``loadtests.bodies``: the locustfile's, without needing locust). Prints, per
workload: requests/s, events or users/s, p50 and p99 latency, and nudge's ratio to the bare server; then the
micro-batching gain (batching on vs ``max_batch_size=1``) and the behaviour at three times the sustainable
scoring rate. The generators' own CPU use is printed too: a generator near 100 % of its core is the
bottleneck, not the server.

``--peers`` also serves the scoring workloads (1 and 100 users per request) with LitServe
(``loadtests.litserve_peer``: nudge's engine, preloaded with the same events, behind LitServe with batching on
and as many workers as nudge has processes) and prints its req/s, p50 and p99 beside nudge's and the bare
server's, with nudge's ratios to it. It needs the ``bench`` extra (``pip install -e .[bench]``).

``--parts neighbours`` (opt-in, not in the default parts) is the noisy-neighbour test: one server, two
tenants. Tenant B scores single users at ``--neighbour-rate`` requests/s (open loop), first alone (nominal),
then while tenant A floods ingest (1000-event bodies) and scoring (100 users) at ``--flood-factor`` times the
rate the server sustained for A alone, and changes its engine config (``window_size``) ``--config-changes``
times (3 by default; each change rebuilds A's engine). That phase lasts ``--seconds``, or on until the last
change has answered (``--neighbour-max-seconds`` at most). It prints B's p50, p99 and errors (by status and
error code) in both phases and the p99 ratio, A's answers by status, and how long each config change took.
The per-tenant rate limit is off, as in every part: what holds A back is the server's overload shedding and
its fair share of the ingest backlogs (429 ``tenant_over_share``).

``--parts scaling`` (opt-in) measures what more worker processes give: for each count in ``--scaling-workers``
(1 and 8 by default), a fresh server with ``--scaling-tenants`` tenants (8), each preloaded alike, serves 100-user
scoring and then 1000-event ingest, every tenant driven at once (``--scaling-concurrency`` requests in flight each,
one generator process per tenant). Workers own tenants by id, so the tenants are what spreads the load over them. It
prints the aggregate users/s and events/s per count, and each one's ratio to the first count's.

``--server-log PATH`` appends nudge's own log, at INFO, to PATH.

``--json PATH`` also writes every part's figures (latency summaries, not the samples) to PATH.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import importlib.util
import itertools
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import msgpack
import numpy as np

from .bodies import events_body, score_body

ROOT = Path(__file__).resolve().parents[1]
SERVER_LOG: str | None = None  # --server-log: nudge's own log (INFO) goes here, appended

# How many processes ``nudge serve`` runs: the server, and ``--workers`` worker processes (0: the engines run on a
# thread of the server's). The bare server and the LitServe peer get this many processes or workers, so that every
# comparison is process for process.
WORKERS = 0
NUDGE_PROCESSES = 1


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
    """A ``nudge serve`` process on a fresh data dir, with one tenant per name in ``tenants`` (``keys``: their API
    keys; ``key``: the first one's)."""

    def __init__(self, backend: str, model: str | None = None, tenants: tuple[str, ...] = ("bench",), **settings):
        self.data_dir = Path(tempfile.mkdtemp(prefix="nudge-bench-"))
        if model:  # served from the first request on: the Transformer predicts for users with history
            (self.data_dir / "models").mkdir()
            for name in tenants:
                shutil.copy(model, self.data_dir / "models" / f"{name}.pt")
        self.keys = {
            name: subprocess.run(
                [sys.executable, "-m", "server.cli", "tenant", "create", name, "--data-dir", str(self.data_dir)],
                cwd=ROOT, check=True, capture_output=True, text=True,
            ).stdout.strip().splitlines()[-1]
            for name in tenants
        }
        self.key = self.keys[tenants[0]]
        port = _free_port()
        env = {**os.environ, "NUDGE_RATE_LIMIT_PER_S": "0", "NUDGE_LOG_LEVEL": "INFO" if SERVER_LOG else "WARNING",
               "NUDGE_WORKERS": str(WORKERS), **{f"NUDGE_{k.upper()}": str(v) for k, v in settings.items()}}
        log = open(SERVER_LOG, "ab") if SERVER_LOG else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--data-dir", str(self.data_dir), "--port", str(port),
             "--backend", backend],
            cwd=ROOT, env=env, stdout=log, stderr=log,
        )
        if SERVER_LOG:
            log.close()  # the child holds its own descriptor
        self.base = f"http://127.0.0.1:{port}"
        _wait_http(self.base + "/readyz", self.proc)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)
        shutil.rmtree(self.data_dir, ignore_errors=True)


class Bare:
    """``loadtests.bare_server`` with ``processes`` processes on one port."""

    def __init__(self, processes: int | None = None):
        processes = processes or NUDGE_PROCESSES
        port = _free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "loadtests.bare_server", "--port", str(port),
                                      "--processes", str(processes)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        self.base = f"http://127.0.0.1:{port}"
        self.key = "none"
        # Once all its processes listen, not when the first one does: the port answers before that.
        waiter = concurrent.futures.ThreadPoolExecutor(1)
        try:
            line = waiter.submit(self.proc.stdout.readline).result(timeout=60)
        except concurrent.futures.TimeoutError:
            self.stop()
            raise TimeoutError("bare server") from None
        finally:
            waiter.shutdown(wait=False)
        if line.strip() != "listening":
            self.stop()
            raise RuntimeError(f"the bare server did not start (exit code {self.proc.poll()})")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.proc.stdout.close()


def litserve_missing() -> str | None:
    """Why the LitServe peer cannot run here, or None."""
    if importlib.util.find_spec("litserve") is None:
        return ("--peers needs LitServe, which is not installed: pip install -e '.[bench]' "
                "(or pip install 'litserve>=0.2.19')")
    return None


class LitServePeer:
    """``loadtests.litserve_peer``: nudge's engine behind LitServe, replaying ``preload`` (ingest bodies) at setup.

    Starting returns at once (the peer replays its events meanwhile); :meth:`wait` blocks until it serves.
    """

    def __init__(self, backend: str, preload: list[bytes], workers: int | None = None,
                 max_batch_size: int = 1024, batch_timeout_ms: float = 2.0):
        workers = workers or NUDGE_PROCESSES
        self.dir = Path(tempfile.mkdtemp(prefix="nudge-bench-peer-"))
        (self.dir / "preload.msgpack").write_bytes(msgpack.packb(preload))
        port = _free_port()
        self.log = open(self.dir / "peer.log", "wb")
        # Its own process group: LitServe's API server and inference workers go with it on stop.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "loadtests.litserve_peer", "--port", str(port), "--preload",
             str(self.dir / "preload.msgpack"), "--backend", backend, "--workers", str(workers),
             "--max-batch-size", str(max_batch_size), "--batch-timeout-ms", str(batch_timeout_ms)],
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.base = f"http://127.0.0.1:{port}"
        self.key = "none"

    def wait(self) -> None:
        try:
            _wait_http(self.base + "/health", self.proc, seconds=300)
        except (RuntimeError, TimeoutError):
            self.log.flush()
            sys.stderr.write((self.dir / "peer.log").read_text(errors="replace")[-3000:])
            raise

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        except ProcessLookupError:
            pass
        try:  # workers that outlived the main process
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


# ---- the load generator (runs in worker processes) ------------------------------------------------

def _fast_loop() -> None:
    """The generators run on uvloop where it is installed: cheaper requests, more load per core."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _error_code(status: int, body: bytes) -> str:
    """``STATUS code`` of an error answer (nudge's error code from its msgpack or JSON body, else ``?``)."""
    for decode in (msgpack.unpackb, json.loads):
        try:
            return f"{status} {decode(body)['error']['code']}"
        except Exception:
            continue
    return f"{status} ?"


def _closed_loop(url: str, key: str, bodies: list[bytes], seconds: float, concurrency: int) -> dict:
    """``concurrency`` requests in flight, each sent as soon as the previous one answered."""
    import aiohttp

    _fast_loop()

    async def run():
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/msgpack"}
        latencies, statuses, codes = [], collections.Counter(), collections.Counter()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            deadline = time.perf_counter() + seconds

            async def worker(i: int):
                k = i
                while time.perf_counter() < deadline:
                    body = bodies[k % len(bodies)]
                    k += concurrency
                    started = time.perf_counter()
                    try:
                        async with session.post(url, data=body, headers=headers) as r:
                            answer = await r.read()
                    except aiohttp.ClientError:
                        statuses["connection error"] += 1
                        codes["connection error"] += 1
                        await asyncio.sleep(0.01)
                        continue
                    statuses[r.status] += 1
                    if r.status == 200:
                        latencies.append(time.perf_counter() - started)
                    else:
                        codes[_error_code(r.status, answer)] += 1

            started = time.perf_counter()
            await asyncio.gather(*(worker(i) for i in range(concurrency)))
            return latencies, statuses, codes, time.perf_counter() - started

    cpu = time.process_time()
    latencies, statuses, codes, elapsed = asyncio.run(run())
    return {"latencies": latencies, "statuses": dict(statuses), "codes": dict(codes), "elapsed": elapsed,
            "cpu_s": time.process_time() - cpu}


def _open_loop(url: str, key: str, bodies: list[bytes], seconds: float, rate: float, until: str | None = None,
               max_seconds: float = 600.0) -> dict:
    """Requests sent at a fixed rate whatever the answers (at most 4096 outstanding), for ``seconds``; with
    ``until`` (a path), on after that until the file exists, ``max_seconds`` at most."""
    import aiohttp

    _fast_loop()

    async def run():
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/msgpack"}
        latencies, statuses, codes = [], collections.Counter(), collections.Counter()
        outstanding = asyncio.Semaphore(4096)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            async def one(body):
                started = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as r:
                        answer = await r.read()
                    statuses[r.status] += 1
                    if r.status == 200:
                        latencies.append(time.perf_counter() - started)
                    else:
                        codes[_error_code(r.status, answer)] += 1
                        if "Retry-After" in r.headers:
                            statuses["with Retry-After"] += 1
                except aiohttp.ClientError:
                    statuses["connection error"] += 1
                    codes["connection error"] += 1
                finally:
                    outstanding.release()

            tasks, start = [], time.perf_counter()
            for i in itertools.count():
                if i >= seconds * rate and (until is None or os.path.exists(until) or i >= max_seconds * rate):
                    break
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if outstanding.locked():
                    statuses["not sent (4096 outstanding)"] += 1
                    continue
                await outstanding.acquire()
                tasks.append(asyncio.create_task(one(bodies[i % len(bodies)])))
            await asyncio.gather(*tasks)
            return latencies, statuses, codes, time.perf_counter() - start

    cpu = time.process_time()
    latencies, statuses, codes, elapsed = asyncio.run(run())
    return {"latencies": latencies, "statuses": dict(statuses), "codes": dict(codes), "elapsed": elapsed,
            "cpu_s": time.process_time() - cpu}


def _merge(results: list[dict]) -> dict:
    statuses, codes = collections.Counter(), collections.Counter()
    for r in results:
        statuses.update(r["statuses"])
        codes.update(r.get("codes", {}))
    latencies = np.array([x for r in results for x in r["latencies"]])
    elapsed = max(r["elapsed"] for r in results)
    return {"latencies": latencies, "statuses": dict(statuses), "codes": dict(codes), "elapsed": elapsed,
            "generator_cores": sum(r["cpu_s"] for r in results) / elapsed, "ok": len(latencies)}


def drive(pool, generators: int, fn, *args) -> dict:
    """Run one load shape on every generator process at once and merge the results."""
    parts = [pool.submit(fn, *args) for _ in range(generators)]
    return _merge([p.result() for p in parts])


def _errors(statuses: dict) -> int:
    """Requests that got no 200: error answers and cut connections (not the annotations beside them)."""
    return sum(n for s, n in statuses.items() if (isinstance(s, int) and s != 200) or s == "connection error")


def _summary(result: dict, per_request: int) -> dict:
    lat = result["latencies"]
    ok = result["ok"]
    return {
        "rps": ok / result["elapsed"], "items_per_s": ok * per_request / result["elapsed"],
        "p50_ms": float(np.percentile(lat, 50) * 1e3) if ok else float("nan"),
        "p99_ms": float(np.percentile(lat, 99) * 1e3) if ok else float("nan"),
        "errors": _errors(result["statuses"]),
        "error_codes": result.get("codes", {}),
        "generator_cores": result["generator_cores"],
    }


def _preload_bodies(rng: random.Random, batches: int = 60) -> list[bytes]:
    """The history the scored users get: ``batches`` bodies of 1000 events."""
    return [events_body(rng, 1000, False) for _ in range(batches)]


def _preload(target, bodies: list[bytes], key: str | None = None) -> None:
    """Send ``bodies`` to ``/v1/events`` (as ``key``, by default the target's), retrying what is shed."""
    import aiohttp

    key = key or target.key

    async def run():
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/msgpack"}
        async with aiohttp.ClientSession() as session:
            for body in bodies:
                while True:
                    async with session.post(target.base + "/v1/events", data=body, headers=headers) as r:
                        await r.read()
                    if r.status not in (429, 503):
                        break
                    await asyncio.sleep(0.2)  # shed while the engine catches up

    asyncio.run(run())
    if isinstance(target, Nudge):
        _barrier(target, key)


def _barrier(nudge: Nudge, key: str) -> None:
    """Returns once every event nudge acknowledged is applied (``GET /v1/stats`` waits for that)."""
    request = urllib.request.Request(nudge.base + "/v1/stats", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=600) as r:
        r.read()


def _rss_mb(pid: int) -> float:
    """The resident memory of a process and of its descendants (nudge's worker processes, multiprocessing's
    resource tracker), in MB."""
    total, pids = 0.0, [pid]
    while pids:
        current = pids.pop()
        try:
            with open(f"/proc/{current}/status") as fh:
                total += next((int(line.split()[1]) for line in fh if line.startswith("VmRSS:")), 0) / 1024
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as fh:
                    pids += [int(child) for child in fh.read().split()]
        except OSError:
            continue  # it ended meanwhile
    return total


WORKLOADS = [
    ("ingest rows, 100 events", "/v1/events", 100, lambda rng: events_body(rng, 100, False)),
    ("ingest rows, 1000 events", "/v1/events", 1000, lambda rng: events_body(rng, 1000, False)),
    ("ingest columns, 100 events", "/v1/events", 100, lambda rng: events_body(rng, 100, True)),
    ("ingest columns, 1000 events", "/v1/events", 1000, lambda rng: events_body(rng, 1000, True)),
    ("score 1 user", "/v1/score", 1, lambda rng: score_body(rng, 1)),
    ("score 100 users", "/v1/score", 100, lambda rng: score_body(rng, 100)),
]


def run_workloads(pool, args, rng) -> list[dict]:
    """Each workload against nudge and the bare server; with ``--peers``, then the scoring ones against LitServe."""
    preload = _preload_bodies(rng)
    workloads = [(name, path, per_request, [make(rng) for _ in range(64 if per_request >= 100 else 512)])
                 for name, path, per_request, make in WORKLOADS if not args.only or args.only in name]
    rows = [{"workload": name} for name, *_ in workloads]

    def measure(label: str, target, paths: tuple[str, ...]) -> None:
        for out, (_, path, per_request, bodies) in zip(rows, workloads):
            if path in paths:
                result = drive(pool, args.generators, _closed_loop, target.base + path, target.key, bodies,
                               args.seconds, args.concurrency // args.generators)
                out[label] = _summary(result, per_request)

    nudge = bare = None
    try:
        nudge, bare = Nudge(args.backend, args.model), Bare()
        _preload(nudge, preload)
        for out, (_, path, per_request, bodies) in zip(rows, workloads):
            # Each workload starts once the events of the ones before it are applied: a score measured behind the
            # last second of an ingest workload's backlog measures that backlog.
            _barrier(nudge, nudge.key)
            for label, target in (("nudge", nudge), ("bare", bare)):
                result = drive(pool, args.generators, _closed_loop, target.base + path, target.key, bodies,
                               args.seconds, args.concurrency // args.generators)
                out[label] = _summary(result, per_request)
    finally:
        for server in (nudge, bare):
            if server is not None:
                server.stop()
    if args.peers and any(path == "/v1/score" for _, path, _, _ in workloads):
        # Started only once nudge and the bare server are measured and gone: an idle LitServe worker still polls
        # its queue. It replays the same preload; nudge's users also got the ingest workloads' events (fewer
        # events for the peer to look at, if anything), unless --only score leaves those out.
        peer = LitServePeer(args.backend, preload)
        try:
            peer.wait()
            measure("litserve", peer, ("/v1/score",))
        finally:
            peer.stop()
    return rows


def run_batching(pool, args, rng) -> list[dict]:
    rows = []
    bodies = [score_body(rng, 1) for _ in range(512)]
    for label, settings in (("batching on (max_batch_size 1024)", {}), ("unbatched (max_batch_size 1)",
                                                                         {"max_batch_size": 1})):
        nudge = Nudge(args.backend, args.model, **settings)
        try:
            _preload(nudge, _preload_bodies(rng))
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
        _preload(nudge, _preload_bodies(rng))
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


def run_scaling(pool, args, rng) -> list[dict]:
    """Aggregate scoring and ingest throughput over ``--scaling-tenants`` tenants, per worker count (see the
    module's docstring)."""
    tenants = tuple(f"tenant{i}" for i in range(args.scaling_tenants))
    preload = _preload_bodies(rng, args.scaling_preload)
    loads = (("score 100 users", "/v1/score", 100, [score_body(rng, 100) for _ in range(64)]),
             ("ingest rows, 1000 events", "/v1/events", 1000, [events_body(rng, 1000, False) for _ in range(32)]))
    rows = []
    for workers in (int(w) for w in args.scaling_workers.split(",")):
        nudge = Nudge(args.backend, args.model, tenants=tenants, workers=workers)
        try:
            for key in nudge.keys.values():
                _preload(nudge, preload, key)
            row = {"workers": workers}
            for name, path, per_request, bodies in loads:
                parts = [pool.submit(_closed_loop, nudge.base + path, key, bodies, args.seconds,
                                     args.scaling_concurrency) for key in nudge.keys.values()]
                row[name] = _summary(_merge([p.result() for p in parts]), per_request)
            rows.append(row)
        finally:
            nudge.stop()
    return rows


def print_scaling(rows: list[dict]) -> None:
    first = rows[0]
    names = [name for name in first if name != "workers"]
    print("\nscaling: the same load over several tenants, by worker processes\n")
    print("| workers | " + " | ".join(f"{n}: items/s | p99 ms | ratio | errors" for n in names) + " |")
    print("|---|" + "---|---|---|---|" * len(names))
    for row in rows:
        cells = []
        for n in names:
            r = row[n]
            cells.append(f"{r['items_per_s']:.0f} | {r['p99_ms']:.1f} | "
                         f"{r['items_per_s'] / max(first[n]['items_per_s'], 1e-9):.2f} | {r['errors']}")
        print(f"| {row['workers']} | " + " | ".join(cells) + " |")


# ---- the noisy neighbour --------------------------------------------------------------------------

# Engine settings tenant A switches between (window_size 32 is the default): each change rebuilds A's engine
# beside the live one.
CONFIG_SETTINGS = ({"window_size": 24}, {"window_size": 32})


def config_changes(n: int) -> list[dict]:
    """``n`` config changes, each undoing the one before it."""
    return [CONFIG_SETTINGS[k % 2] for k in range(n)]


def _put_config(base: str, key: str, change: dict) -> dict:
    """``PUT /v1/config`` (JSON): its status and how long it took to answer."""
    request = urllib.request.Request(base + "/v1/config", data=json.dumps(change).encode(), method="PUT",
                                     headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=600) as r:
            r.read()
            status = r.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError as exc:
        status = f"failed: {exc}"
    return {"change": change, "status": status, "seconds": time.perf_counter() - started}


def _config_changes(base: str, key: str, seconds: float, changes: list[dict]) -> list[dict]:
    """The changes one after the other, the k-th starting no earlier than k/(n+1) of the way through ``seconds``."""
    start, out = time.perf_counter(), []
    for k, change in enumerate(changes, 1):
        delay = start + seconds * k / (len(changes) + 1) - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        out.append({"at_s": time.perf_counter() - start, **_put_config(base, key, change)})
    return out


def run_neighbours(pool, args, rng) -> dict:
    """Tenant B's scoring, alone and beside tenant A's flood of ingest, scoring and config changes."""
    nudge = Nudge(args.backend, args.model, tenants=("quiet", "noisy"))
    quiet, noisy = nudge.keys["quiet"], nudge.keys["noisy"]
    score_url, events_url = nudge.base + "/v1/score", nudge.base + "/v1/events"
    b_bodies = [score_body(rng, 1) for _ in range(512)]
    a_events = [events_body(rng, 1000, False) for _ in range(64)]
    a_scores = [score_body(rng, 100) for _ in range(64)]
    try:
        _preload(nudge, _preload_bodies(rng), key=quiet)
        _preload(nudge, _preload_bodies(rng), key=noisy)
        # 1. nominal: B alone.
        nominal = _merge([pool.submit(_open_loop, score_url, quiet, b_bodies, args.seconds,
                                      args.neighbour_rate).result()])
        # 2. A's capacity, A alone: ingest and scoring together, closed loop.
        capacity = [pool.submit(_closed_loop, events_url, noisy, a_events, args.seconds, args.flood_concurrency),
                    pool.submit(_closed_loop, score_url, noisy, a_scores, args.seconds, args.flood_concurrency)]
        capacity = [_merge([f.result()]) for f in capacity]
        _barrier(nudge, noisy)  # A's backlog applied: the flood starts from a drained server
        ingest_rps = max(capacity[0]["ok"] / capacity[0]["elapsed"], 1.0)
        score_rps = max(capacity[1]["ok"] / capacity[1]["elapsed"], 1.0)
        # 3. noisy: B's same load while A floods at flood_factor x its capacity and changes its config; the phase
        # lasts --seconds, or until the last config change has answered (--neighbour-max-seconds at most).
        stop = Path(tempfile.mkdtemp(prefix="nudge-bench-stop-")) / "stop"
        until = (str(stop), args.neighbour_max_seconds)
        started = time.perf_counter()
        flood = [pool.submit(_open_loop, events_url, noisy, a_events, args.seconds, args.flood_factor * ingest_rps,
                             *until),
                 pool.submit(_open_loop, score_url, noisy, a_scores, args.seconds, args.flood_factor * score_rps,
                             *until)]
        b_future = pool.submit(_open_loop, score_url, quiet, b_bodies, args.seconds, args.neighbour_rate, *until)
        try:
            puts = _config_changes(nudge.base, noisy, args.seconds, config_changes(args.config_changes))
        finally:
            stop.touch()
        noisy_b = _merge([b_future.result()])
        a_ingest, a_score = (_merge([f.result()]) for f in flood)
        phase_s = time.perf_counter() - started
        shutil.rmtree(stop.parent, ignore_errors=True)
    finally:
        nudge.stop()
    b_nominal, b_noisy = _summary(nominal, 1), _summary(noisy_b, 1)
    return {
        "rate_rps": args.neighbour_rate, "flood_factor": args.flood_factor, "noisy_phase_s": phase_s,
        "b_nominal": {**b_nominal, "statuses": nominal["statuses"]},
        "b_noisy": {**b_noisy, "statuses": noisy_b["statuses"]},
        "p99_ratio": b_noisy["p99_ms"] / b_nominal["p99_ms"],
        "a_capacity": {"ingest_rps": ingest_rps, "score_rps": score_rps,
                       "ingest_statuses": capacity[0]["statuses"], "score_statuses": capacity[1]["statuses"]},
        "a_ingest": {**_summary(a_ingest, 1000), "offered_rps": args.flood_factor * ingest_rps,
                     "statuses": a_ingest["statuses"]},
        "a_score": {**_summary(a_score, 100), "offered_rps": args.flood_factor * score_rps,
                    "statuses": a_score["statuses"]},
        "config_changes": puts,
    }


def _counts(counter: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counter.items(), key=lambda kv: str(kv[0]))) or "none"


def print_neighbours(n: dict) -> None:
    print(f"\nnoisy neighbour: tenant B scores 1 user at {n['rate_rps']:g} req/s; tenant A floods at "
          f"{n['flood_factor']:g} x its capacity alone and changes its engine config {len(n['config_changes'])} "
          f"times\n")
    print("| tenant B | req/s | p50 ms | p99 ms | errors | error answers and cut connections |")
    print("|---|---|---|---|---|---|")
    for label, key in (("alone (nominal)", "b_nominal"), ("beside A's flood", "b_noisy")):
        s = n[key]
        print(f"| {label} | {s['rps']:.0f} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | {s['errors']} | "
              f"{_counts(s['error_codes'])} |")
    ok = n["p99_ratio"] <= 2.0 and n["b_noisy"]["errors"] == 0
    print(f"\nB's p99 beside the flood: {n['p99_ratio']:.2f} x its nominal p99, {n['b_noisy']['errors']} errors "
          f"({'within' if ok else 'NOT within'} the bound of 2 x and no errors)")
    cap = n["a_capacity"]
    print(f"\nA alone sustained {cap['ingest_rps']:.0f} ingest req/s (1000 events) and {cap['score_rps']:.0f} score "
          f"req/s (100 users) together\n")
    print("| tenant A | offered req/s | admitted req/s | p99 ms | answers | error answers and cut connections "
          "| generator cores |")
    print("|---|---|---|---|---|---|---|")
    for label, key in (("ingest, 1000 events", "a_ingest"), ("score, 100 users", "a_score")):
        s = n[key]
        print(f"| {label} | {s['offered_rps']:.0f} | {s['rps']:.0f} | {s['p99_ms']:.1f} | {_counts(s['statuses'])} "
              f"| {_counts(s['error_codes'])} | {s['generator_cores']:.2f} |")
    print(f"\nthe noisy phase lasted {n['noisy_phase_s']:.1f} s (--seconds at least, and on until the last config "
          f"change answered)\n")
    print("| config change (tenant A) | sent at s | status | took s |")
    print("|---|---|---|---|")
    for c in n["config_changes"]:
        print(f"| {json.dumps(c['change'])} | {c['at_s']:.2f} | {c['status']} | {c['seconds']:.2f} |")


def print_peers(rows: list[dict]) -> None:
    rows = [r for r in rows if "litserve" in r]
    if not rows:
        return
    print(f"\npeers: the scoring workloads against LitServe (nudge's engine, batching on, {NUDGE_PROCESSES} "
          f"worker{'s' if NUDGE_PROCESSES > 1 else ''})\n")
    print("| workload | nudge req/s | nudge p50 ms | nudge p99 ms | bare req/s | bare p99 ms | litserve req/s "
          "| litserve p50 ms | litserve p99 ms | nudge / litserve throughput | nudge / litserve p99 "
          "| litserve errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        n, b, p = r["nudge"], r["bare"], r["litserve"]
        print(f"| {r['workload']} | {n['rps']:.0f} | {n['p50_ms']:.1f} | {n['p99_ms']:.1f} | {b['rps']:.0f} | "
              f"{b['p99_ms']:.1f} | {p['rps']:.0f} | {p['p50_ms']:.1f} | {p['p99_ms']:.1f} | "
              f"{n['rps'] / p['rps'] if p['rps'] else float('inf'):.2f} | {n['p99_ms'] / p['p99_ms']:.2f} | "
              f"{p['errors']} |")


def _jsonable(value):
    """The figures as JSON: dict keys as text, NaN as null."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="per measurement")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight, over all generators")
    parser.add_argument("--batching-concurrency", type=int, default=64, help="requests in flight for the batching run")
    parser.add_argument("--generators", type=int, default=2, help="load-generator processes")
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--parts", default="workloads,batching,overload",
                        help="comma-separated: workloads, batching, overload; neighbours and scaling (opt-in)")
    parser.add_argument("--only", default="", help="run only the workloads whose name holds this text")
    parser.add_argument("--model", default=None, help="a checkpoint (nudge train) for the tenant to serve")
    parser.add_argument("--sustainable-rps", type=float, default=240.0,
                        help="score-100-users rate the overload run triples, when the workloads part is skipped")
    parser.add_argument("--peers", action="store_true",
                        help="also run the scoring workloads against LitServe (needs the bench extra)")
    parser.add_argument("--neighbour-rate", type=float, default=100.0,
                        help="neighbours: tenant B's scoring requests/s (1 user each)")
    parser.add_argument("--flood-factor", type=float, default=3.0,
                        help="neighbours: tenant A's offered load, in multiples of what it sustained alone")
    parser.add_argument("--flood-concurrency", type=int, default=32,
                        help="neighbours: requests in flight per load shape while measuring A's capacity")
    parser.add_argument("--config-changes", type=int, default=3,
                        help="neighbours: tenant A's engine config changes during the flood (0: the flood alone)")
    parser.add_argument("--server-log", default=None, help="append nudge's own log (at INFO) to this file")
    parser.add_argument("--neighbour-max-seconds", type=float, default=120.0,
                        help="neighbours: the longest the noisy phase runs on waiting for A's config changes")
    parser.add_argument("--workers", type=int, default=0,
                        help="nudge's worker processes (0: the engines on a thread of the server's process)")
    parser.add_argument("--scaling-workers", default="1,8", help="scaling: the worker-process counts compared")
    parser.add_argument("--scaling-tenants", type=int, default=8, help="scaling: tenants, each driven at once")
    parser.add_argument("--scaling-concurrency", type=int, default=8, help="scaling: requests in flight per tenant")
    parser.add_argument("--scaling-preload", type=int, default=10, help="scaling: 1000-event bodies per tenant first")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    global SERVER_LOG, WORKERS, NUDGE_PROCESSES
    SERVER_LOG = args.server_log
    WORKERS, NUDGE_PROCESSES = args.workers, 1 + args.workers
    parts = set(args.parts.split(","))
    unknown = parts - {"workloads", "batching", "overload", "neighbours", "scaling"}
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    if args.peers:
        if "workloads" not in parts:
            parser.error("--peers runs within the workloads part: add it to --parts")
        missing = litserve_missing()
        if missing:
            sys.exit(missing)
    rng = random.Random(0)
    report = {"machine": {"arch": platform.machine(), "cores": os.cpu_count(), "python": platform.python_version()},
              "backend": args.backend, "generators": args.generators, "seconds": args.seconds,
              "nudge_processes": NUDGE_PROCESSES, "workers": WORKERS,
              "predictor": "transformer" if args.model else "markov"}
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"backend {args.backend}; {args.generators} generator processes; {args.seconds:g} s per measurement; "
          f"predictor {'transformer (' + args.model + ')' if args.model else 'markov'}; "
          f"{NUDGE_PROCESSES} nudge process{'es' if NUDGE_PROCESSES > 1 else ''} ({WORKERS} worker processes)")
    # The neighbours part drives three load shapes at once (B, A's ingest, A's scoring), and the scaling part one
    # per tenant: one process each.
    generators = max(args.generators, 3 if "neighbours" in parts else 1,
                     args.scaling_tenants if "scaling" in parts else 1)
    with concurrent.futures.ProcessPoolExecutor(generators) as pool:
        sustainable = None
        if "workloads" in parts:
            rows = run_workloads(pool, args, rng)
            report["workloads"] = rows
            print(f"\n{args.concurrency} requests in flight\n")
            print("| workload | nudge req/s | events or users/s | p50 ms | p99 ms | bare req/s | bare p99 ms "
                  "| throughput ratio | p99 ratio | generator cores (nudge / bare) | errors |")
            print("|---|---|---|---|---|---|---|---|---|---|---|")
            for r in rows:
                n, b = r["nudge"], r["bare"]
                print(f"| {r['workload']} | {n['rps']:.0f} | {n['items_per_s']:.0f} | {n['p50_ms']:.1f} | "
                      f"{n['p99_ms']:.1f} | {b['rps']:.0f} | {b['p99_ms']:.1f} | {n['rps'] / b['rps']:.2f} | "
                      f"{n['p99_ms'] / b['p99_ms']:.1f} | {n['generator_cores']:.2f} / {b['generator_cores']:.2f} | "
                      f"{n['errors']}{' (' + _counts(n['error_codes']) + ')' if n['errors'] else ''} |")
                if r["workload"] == "score 100 users":
                    sustainable = n["rps"]
            print_peers(rows)
        if "batching" in parts:
            rows = run_batching(pool, args, rng)
            report["batching"] = rows
            print(f"\nmicro-batching, score 1 user, {args.batching_concurrency} requests in flight\n")
            print("| mode | req/s | p50 ms | p99 ms | errors |")
            print("|---|---|---|---|---|")
            for r in rows:
                print(f"| {r['mode']} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} |")
            print(f"\ngain: {rows[0]['rps'] / rows[1]['rps']:.1f}x the throughput, "
                  f"p99 {rows[0]['p99_ms']:.1f} vs {rows[1]['p99_ms']:.1f} ms")
        if "overload" in parts:
            o = run_overload(pool, args, rng, sustainable or args.sustainable_rps)
            report["overload"] = o
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
            print(f"\nserver memory (its worker processes included) during the overload: {rss[0]:.0f} MB before, "
                  f"max {max(rss):.0f} MB, "
                  f"{rss[-1]:.0f} MB at the end")
        if "neighbours" in parts:
            n = run_neighbours(pool, args, rng)
            report["neighbours"] = n
            print_neighbours(n)
        if "scaling" in parts:
            rows = run_scaling(pool, args, rng)
            report["scaling"] = rows
            print_scaling(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(_jsonable(report), indent=1) + "\n")
        print(f"\nfigures written to {args.json}")


if __name__ == "__main__":
    main()
