"""Event-loop lag as the overload signal: when the loop runs late, new work is refused early and cheaply.

The micro-batcher's and the committer's queues are bounded, but under a flood the first queue to
fill is not theirs: requests wait, unparsed, for the event loop itself. The loop's lag (how late a
timer fires) measures exactly that wait, so the server sheds new requests, before reading their
bodies, while the lag is high: admitted requests keep their latency instead of everybody's
growing without bound.
"""
from __future__ import annotations

import asyncio
import time


class LoopLag:
    """Samples how late the event loop runs a timer; ``overloaded`` while the recent lag exceeds the limit.

    Parameters
    ----------
    max_lag_ms : lag above which the server counts as overloaded (0 disables shedding).
    interval_ms : how often the lag is sampled.
    """

    def __init__(self, max_lag_ms: float, interval_ms: float = 10.0):
        self.max_lag_ms = max_lag_ms
        self.interval_s = interval_ms / 1000.0
        self.lag_ms = 0.0
        self._shedding = False
        self._late_ticks = 0

    @property
    def overloaded(self) -> bool:
        return self._shedding

    def _update(self, lag: float) -> None:
        # Rise at once, decay over several samples; and once shedding, go on until the lag is a quarter
        # of the limit: the backlog of waiting requests drains (cheap 503s) before work is taken again.
        self.lag_ms = lag if lag > self.lag_ms else 0.8 * self.lag_ms + 0.2 * lag
        limit = self.max_lag_ms
        # One late tick (a garbage collection, an import) is not an overload: two in a row are.
        self._late_ticks = self._late_ticks + 1 if lag > limit else 0
        self._shedding = limit > 0 and (self._late_ticks >= 2 or (self._shedding and self.lag_ms > limit / 4))

    async def run(self) -> None:
        while True:
            expected = time.perf_counter() + self.interval_s
            await asyncio.sleep(self.interval_s)
            self._update(max(0.0, (time.perf_counter() - expected) * 1000.0))
