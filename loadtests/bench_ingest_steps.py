"""Where the time of one ingested batch goes, in process: decoding and validation, the log append, the engine
update and the decisions at ingest, with the garbage collector as ``nudge serve`` sets it.

    python -m loadtests.bench_ingest_steps [--batches 150] [--events 1000]

The bodies are the HTTP benchmark's own (``loadtests/bodies.py``); the first third of the batches warms up.
"""
from __future__ import annotations

import argparse
import gc
import random
import tempfile
import time
from pathlib import Path

import numpy as np

from model import Engine, TenantConfig
from model.decisions import decide, predict, worth_deciding
from model.signals import SignalPolicy
from server import gc_tuning
from server.codecs import MSGPACK
from server.storage import Store
from server.validation import parse_event_body

from .bodies import events_body

STEPS = ("decode and validate", "log append", "engine update", "decisions", "log read (replay)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=150)
    parser.add_argument("--events", type=int, default=1000)
    args = parser.parse_args()
    gc_tuning.tune()
    rng, cfg = random.Random(1), TenantConfig()
    bodies = [events_body(rng, args.events, columns=False) for _ in range(args.batches)]
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp))
        tenant, _ = store.create_tenant("bench", cfg)
        engine, policy = Engine(cfg), SignalPolicy(cfg)
        spent, measured, decided = np.zeros(len(STEPS)), 0, 0
        collected = gc_tuning.seconds_spent
        warm = args.batches // 3
        gc_before = 0.0
        for i, body in enumerate(bodies):
            if i == warm:
                gc_before = sum(collected(g) for g in range(3))
            t = [time.perf_counter()]
            batch = parse_event_body(body, MSGPACK, cfg, time.time(), 100_000)  # as the server decodes it
            t.append(time.perf_counter())
            appended = store.append([(tenant.id, batch, cfg)])[0]
            t.append(time.perf_counter())
            applied, observed = engine.apply_observed(batch, appended.seqs)
            t.append(time.perf_counter())
            now = time.time()
            users = worth_deciding(engine, applied, observed, now)
            if users:
                decided += len([d for d in decide(engine, policy, users, predict(engine, None, users, now), now) if d])
            t.append(time.perf_counter())
            if i >= warm:
                spent[:4] += np.diff(t)
                measured += 1
        gc_s = sum(collected(g) for g in range(3)) - gc_before
        started = time.perf_counter()
        read = sum(len(b) for b, _ in store.read_events(tenant.id, cfg))
        spent[4] = (time.perf_counter() - started) * measured * args.events / read
        store.close()
    per = 1000.0 / measured
    print(f"{measured} batches of {args.events} events (after {warm} to warm up); {decided} signals decided")
    print("| step | ms per batch |\n|---|---|")
    for name, seconds in zip(STEPS, spent):
        print(f"| {name} | {seconds * per:.2f} |")
    print(f"| of which garbage collection | {gc_s * per:.2f} |")
    print(f"| total, ingest (without the replay) | {spent[:4].sum() * per:.2f} |")
    gc.collect()


if __name__ == "__main__":
    main()
