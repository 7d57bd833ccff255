"""A tenant's recent ingest and scoring activity (``GET /v1/activity``): per-second buckets over the last minute.

Prometheus (``/metrics``) has the same figures for the whole server; these are per tenant and for the tenant's
own key. Each bucket keeps counts and a latency histogram with logarithmic bins a factor 2^(1/4) apart, so a
percentile read from it is within about 9 % of the exact one, and a tenant's memory stays bounded (two kinds of
60 buckets of 90 counters) however many requests it makes. Recording one request costs a logarithm, a modulo
and three list increments on the event loop (about 1 µs); nothing here locks, since only the event loop
records and reads.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable

WINDOW_S = 60
_BINS_PER_OCTAVE = 4
_MIN_LATENCY_S = 50e-6  # the first bin holds everything faster; the last one everything past ~3.5 min
_N_BINS = 90
_PERCENTILES = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))


def _bin(seconds: float) -> int:
    if seconds <= _MIN_LATENCY_S:
        return 0
    return min(int(math.log2(seconds / _MIN_LATENCY_S) * _BINS_PER_OCTAVE) + 1, _N_BINS - 1)


def _bin_ms(index: int) -> float:
    """The latency a bin stands for, in ms: the geometric middle of its edges."""
    if index == 0:
        return _MIN_LATENCY_S * 1000.0
    return _MIN_LATENCY_S * 2.0 ** ((index - 0.5) / _BINS_PER_OCTAVE) * 1000.0


class _Series:
    """One kind of request (ingest or score): per second, requests, items (events or users) and latencies."""

    def __init__(self) -> None:
        self.second = [-1] * WINDOW_S  # which second each slot holds
        self.requests = [0] * WINDOW_S
        self.items = [0] * WINDOW_S
        self.latency: list[list[int]] = [[0] * _N_BINS for _ in range(WINDOW_S)]

    def add(self, second: int, items: int, seconds: float) -> None:
        slot = second % WINDOW_S
        if self.second[slot] != second:
            self.second[slot], self.requests[slot], self.items[slot] = second, 0, 0
            self.latency[slot] = [0] * _N_BINS
        self.requests[slot] += 1
        self.items[slot] += items
        self.latency[slot][_bin(seconds)] += 1

    def report(self, now_second: int, items_name: str) -> dict[str, Any]:
        first = now_second - WINDOW_S + 1
        live = [s for s in range(WINDOW_S) if first <= self.second[s] <= now_second]
        per_second = [0] * WINDOW_S
        for s in live:
            per_second[self.second[s] - first] = self.items[s]
        requests = sum(self.requests[s] for s in live)
        items = sum(per_second)
        merged = [sum(column) for column in zip(*(self.latency[s] for s in live))] if live else [0] * _N_BINS
        return {
            "requests": requests,
            items_name: items,
            "requests_per_s": requests / WINDOW_S,
            f"{items_name}_per_s": items / WINDOW_S,
            "latency_ms": _percentiles(merged, requests),
            f"{items_name}_per_second": per_second,
        }


def _percentiles(histogram: list[int], total: int) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name, q in _PERCENTILES:
        if not total:
            out[name] = None
            continue
        rank, seen = math.ceil(q * total), 0
        for index, count in enumerate(histogram):
            seen += count
            if seen >= rank:
                out[name] = round(_bin_ms(index), 3)
                break
    return out


class Activity:
    """A tenant's accepted ingests and answered scoring requests over the last :data:`WINDOW_S` seconds.

    Only requests answered 200 are recorded: refusals (429, 503 and the rest) are in ``/metrics``. A latency is
    the handler's time, from after authentication to the answer (body read, validation, the durable commit or the
    scoring batch), as ``nudge_request_seconds`` measures it less the middlewares.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.ingest = _Series()
        self.score = _Series()

    def record_ingest(self, events: int, seconds: float) -> None:
        self.ingest.add(int(self.clock()), events, seconds)

    def record_score(self, users: int, seconds: float) -> None:
        self.score.add(int(self.clock()), users, seconds)

    def report(self) -> dict[str, Any]:
        """Totals and rates over the window (the current second included), latency percentiles in ms, and the
        per-second series, oldest first, whose last entry is the current second."""
        now_second = int(self.clock())
        return {
            "window_s": WINDOW_S,
            "ingest": self.ingest.report(now_second, "events"),
            "score": self.score.report(now_second, "users"),
        }
