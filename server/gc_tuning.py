"""The garbage collector's settings for a serving process, and how long its collections take.

Ingest allocates many short-lived objects (a 1000-event msgpack body decodes into about 7,000), while the engines
hold many long-lived ones (the item catalog's per-user and per-item dicts). Under CPython's default thresholds
(700, 10, 10) a young collection ran every hundred or so events, and the older generations were walked again and
again: about 20 % of the time of an ingested batch, measured in process (docs/benchmarks.md). With the thresholds
below, collections cost about 3 % there. What recovery built before serving is frozen: it lives as long as the
tenant, and no collection needs to walk it.
"""
from __future__ import annotations

import gc
import time

THRESHOLDS = (20_000, 50, 100)

_spent = [0.0, 0.0, 0.0]
_started = 0.0


def _time_collections(phase: str, info: dict) -> None:
    global _started
    if phase == "start":
        _started = time.perf_counter()
    else:
        _spent[info["generation"]] += time.perf_counter() - _started


def tune() -> None:
    """Serving thresholds, and collection times counted for :func:`seconds_spent` (idempotent)."""
    gc.set_threshold(*THRESHOLDS)
    if _time_collections not in gc.callbacks:
        gc.callbacks.append(_time_collections)


def freeze() -> int:
    """Move every object alive now out of the collector's sight; returns how many are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def seconds_spent(generation: int) -> float:
    """Seconds spent in collections of ``generation`` since :func:`tune` (0 before it)."""
    return _spent[generation]
