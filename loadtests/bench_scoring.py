"""Scoring latency inside one process: the engine's learned score per array backend, and the Transformer per device.

    python -m loadtests.bench_scoring [--users 20000] [--events 200000] [--batches 1,64,1024,16384] [--repeats 5]
                                      [--devices cpu,cuda] [--save-model PATH]

A synthetic tenant (users with devices, time zones, categories, items and carts) is applied to one engine per
backend that runs for real here (NumPy always; Triton and CuPy only on a CUDA device: their interpreter and
emulation are test tools). For each batch size it prints the best of ``--repeats`` timings, in milliseconds, of

- ``score``: ``Engine.score`` with the Thompson draw (what ``POST /v1/score`` runs before the Transformer);
- ``features``: ``Engine.window_features``, the Transformer's tokens, gathered on the host;
- ``transformer``: ``TransformerPredictor.predict`` on each torch device (cpu, and cuda where present);
- ``decide``: ``model.decisions.predict``, everything a scoring batch does, with the Transformer on that device.

It also checks that every backend's posterior-mean score equals NumPy's (the draws differ by generator).
``--save-model`` writes the trained checkpoint, which ``python -m loadtests.bench --model`` can serve.
No HTTP: ``python -m loadtests.bench`` measures the server end to end.
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

import kernels
from model import Engine, EventBatch, TenantConfig
from model import device_graphs
from model.decisions import predict
from model.predictor import TransformerPredictor, write_checkpoint
from model.training import TrainSettings, train

T0 = 1_700_000_000.0
MIX = {"view": 0.62, "search": 0.12, "add_to_cart": 0.12, "favorite": 0.06, "remove_from_cart": 0.03, "purchase": 0.05}


def synthetic(config: TenantConfig, n_users: int, n_events: int, seed: int = 0) -> EventBatch:
    """Users active over two days, with devices, time zones, categories and items."""
    rng = np.random.default_rng(seed)
    names = list(MIX)
    codes = np.array([config.actions.index(a) for a in names])
    users = rng.zipf(1.3, n_events) % n_users
    return EventBatch.build(
        user_ids=[f"u{u}" for u in users],
        actions=codes[rng.choice(len(names), n_events, p=list(MIX.values()))],
        ts=np.sort(T0 + rng.uniform(0, 2 * 86_400, n_events)).round(),
        device=rng.integers(0, 4, n_events),
        tz_offset_min=rng.choice([-300, 0, 60, 540], n_events),
        categories=[f"c{c}" for c in rng.integers(0, 200, n_events)],
        item_ids=[f"i{i}" for i in rng.zipf(1.2, n_events) % 5000],
    )


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def best_ms(fn, repeats: int) -> float:
    fn()
    _sync()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        _sync()
        best = min(best, time.perf_counter() - started)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batches", default="1,64,1024,16384")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--devices", default="cpu,cuda", help="the Transformer's torch devices (cuda where present)")
    parser.add_argument("--save-model", default=None, help="also write the trained checkpoint here")
    parser.add_argument("--backends", default=None, help="array backends to measure (default: all that run here)")
    parser.add_argument("--profile", action="store_true",
                        help="then profile one decision at the largest batch on the first backend: the top kernels")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]

    config = TenantConfig(allow_backfill=True)
    events = synthetic(config, args.users, args.events)
    backends = [b for b in kernels.available_backends() if b == "numpy" or torch.cuda.is_available()]
    if args.backends:
        backends = [b for b in backends if b in args.backends.split(",")]
    devices = [d for d in args.devices.split(",") if d == "cpu" or (d == "cuda" and torch.cuda.is_available())]
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, GPU {gpu}; "
          f"torch {torch.__version__}; {args.events} events of {args.users} users")

    started = time.perf_counter()
    first = events.take(np.arange(min(len(events), 20_000)))
    checkpoint = train(first, config, TrainSettings(epochs=1, patience=1), log=lambda line: None, show_progress=False)
    print(f"a default-size Transformer trained 1 epoch on {len(first)} events in {time.perf_counter() - started:.1f} s")
    if args.save_model:
        write_checkpoint(checkpoint, args.save_model)

    engines = {}
    for backend in backends:
        started = time.perf_counter()
        engine = Engine(config, backend=backend)
        engine.apply(events)
        engines[backend] = engine
        print(f"{backend}: applied {len(events)} events in {time.perf_counter() - started:.1f} s")
    now = float(events.ts.max()) + 60.0
    ids = sorted(set(events.user_ids.tolist()))
    if "numpy" in engines:
        reference = engines["numpy"].score(ids, now, draw=False).score
    else:
        numpy_engine = Engine(config)
        numpy_engine.apply(events)
        reference = numpy_engine.score(ids, now, draw=False).score
    for backend, engine in engines.items():
        gap = float(np.abs(engine.score(ids, now, draw=False).score - reference).max())
        print(f"{backend}: largest posterior-mean score difference from numpy over {len(ids)} users: {gap:.2e}")

    predictors = {d: TransformerPredictor(checkpoint, config, d) for d in devices}
    fp32 = {d: TransformerPredictor(checkpoint, config, d, precision="float32") for d in devices}
    print(f"\nTransformer precision: {', '.join(f'{d} {p.precision}' for d, p in predictors.items())}; "
          f"CUDA graphs {'on' if device_graphs.ENABLED else 'off'} (NUDGE_CUDA_GRAPHS)")
    print("\n| backend | device | users | score ms | score+draw ms | features ms | transformer ms | decide ms "
          "| decide eager ms | decide fp32 ms |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for backend, engine in engines.items():
        for device, predictor in predictors.items():
            for size in batches:
                chosen = ids[:size] if size <= len(ids) else (ids * (size // len(ids) + 1))[:size]
                users = engine.windows.lookup(chosen, create=False)
                tokens, lengths = engine.window_features(users)
                state = engine.score(chosen, now).features
                has = lengths > 0
                tokens, lengths, state = {k: v[has] for k, v in tokens.items()}, lengths[has], state[has]

                def eager():
                    device_graphs.ENABLED = False
                    try:
                        predict(engine, predictor, chosen, now)
                    finally:
                        device_graphs.ENABLED = True

                row = [
                    best_ms(lambda: engine.score(chosen, now, draw=False), args.repeats),
                    best_ms(lambda: engine.score(chosen, now), args.repeats),
                    best_ms(lambda: engine.window_features(users), args.repeats),
                    best_ms(lambda: predictor.predict(tokens, lengths, state), args.repeats),
                    best_ms(lambda: predict(engine, predictor, chosen, now), args.repeats),
                    best_ms(eager, args.repeats),
                    best_ms(lambda: predict(engine, fp32[device], chosen, now), args.repeats),
                ]
                print(f"| {backend} | {device} | {size} | " + " | ".join(f"{v:.2f}" for v in row) + " |", flush=True)
    if args.profile:
        profile(engines[backends[0]], next(iter(predictors.values())), ids, max(batches), now)


def profile(engine, predictor, ids, size, now) -> None:
    """The top kernels of one decision (as ``decide`` times it, warmed up) by device time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    chosen = (ids * (size // len(ids) + 1))[:size]
    for graphs in (True, False):
        device_graphs.ENABLED = graphs
        predict(engine, predictor, chosen, now)
        _sync()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        with torch_profile(activities=activities) as prof:
            predict(engine, predictor, chosen, now)
            _sync()
        key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        print(f"\none decision of {size} users, CUDA graphs {'on' if graphs else 'off'}, by {key}:")
        print(prof.key_averages().table(sort_by=key, row_limit=14, max_name_column_width=60))
    device_graphs.ENABLED = True


if __name__ == "__main__":
    main()
