"""What one scoring batch costs the worker, in process: ``Worker.handle(Score)``, the command a worker process runs
for each micro-batch (the prediction, the signal decisions and the packed result rows), with no HTTP and no pipe.

    python -m loadtests.bench_worker_score [--preload 60] [--batches 1,6,100,1024] [--repeats 400]

The tenant first applies ``--preload`` bodies of 1000 events from the HTTP benchmark (``loadtests/bodies.py``) as
live events, then scores every user once, so that users have the open signals those decisions left, as in a server
that has been scoring them for a while. Scores are asked ``--later`` seconds after the events, when carts left
alone have gone idle and abandoned-cart signals fire. Prints the median milliseconds per batch, and per user, for
each size.
"""
from __future__ import annotations

import argparse
import platform
import random
import statistics
import time

import msgpack
import numpy as np

from core import Worker
from core import commands as c
from model import TenantConfig
from server.validation import parse_events

from .bodies import USERS, events_body

TENANT = 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preload", type=int, default=60, help="bodies of 1000 events applied first")
    parser.add_argument("--batches", default="1,6,100,1024")
    parser.add_argument("--later", type=float, default=1200.0, help="seconds after the events that scores are asked")
    parser.add_argument("--repeats", type=int, default=400, help="batches timed per size (a tenth more to warm up)")
    args = parser.parse_args()
    rng, config = random.Random(0), TenantConfig()
    worker = Worker()
    worker.handle(c.Open(TENANT, config))
    seq, decided = 0, 0
    for _ in range(args.preload):
        batch = parse_events(msgpack.unpackb(events_body(rng, 1000, False)), config, time.time(), 100_000)
        reply = worker.handle(c.Apply(TENANT, batch, np.arange(seq + 1, seq + 1 + len(batch)), config))
        seq, decided = seq + len(batch), decided + len(reply.decisions)
    now = time.time() + args.later
    everyone = [f"u{i}" for i in range(USERS)]
    for start in range(0, USERS, 1024):
        decided += len(worker.handle(c.Score(TENANT, everyone[start:start + 1024], [None] * 1024, now)).decisions)
    policy = worker.shards[TENANT].policy
    print(f"machine: {platform.machine()}, Python {platform.python_version()}; {seq} events applied, "
          f"{decided} signals decided (at ingest, then scoring every user once), "
          f"{len(policy.open_signal)} users with an open signal\n")
    print("| users per batch | ms per batch (median) | µs per user |\n|---|---|---|")
    for size in (int(b) for b in args.batches.split(",")):
        warm = max(1, args.repeats // 10)
        times = []
        for i in range(warm + args.repeats):
            users = [f"u{rng.randrange(USERS)}" for _ in range(size)]
            started = time.perf_counter()
            worker.handle(c.Score(TENANT, users, [None] * size, now))
            if i >= warm:
                times.append(time.perf_counter() - started)
        ms = 1e3 * statistics.median(times)
        print(f"| {size} | {ms:.3f} | {1e3 * ms / size:.1f} |")


if __name__ == "__main__":
    main()
