"""Per-tenant token bucket."""
from __future__ import annotations

import math
import time


class TokenBucket:
    """``rate_per_s`` requests a second on average, bursts up to ``burst``; rate 0 means unlimited."""

    def __init__(self, rate_per_s: float, burst: float, clock=time.monotonic):
        self.rate_per_s = rate_per_s
        self.burst = max(burst, 1.0)
        self._clock = clock
        self._tokens = self.burst
        self._stamp = clock()

    def take(self) -> float | None:
        """Spend one token; None if allowed, else the whole seconds to wait before retrying."""
        if self.rate_per_s <= 0:
            return None
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate_per_s)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return None
        return float(max(1, math.ceil((1.0 - self._tokens) / self.rate_per_s)))
