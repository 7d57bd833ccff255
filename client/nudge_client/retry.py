"""When to send a request again, and how long to wait first: exponential backoff with full jitter that
never comes back before the server's ``Retry-After``."""
from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass
from datetime import timezone


def retryable(status: int) -> bool:
    """Answers that may go better next time: timeouts, rate limits, overload and server errors. Any other 4xx
    would be refused again (the request itself is at fault)."""
    return status in (408, 429) or 500 <= status <= 599


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True)
class RetryPolicy:
    """How failed requests are retried.

    base_s, max_s : the n-th retry waits a random time in [0, min(max_s, base_s * 2**n)] (full jitter).
    max_retries : retries of one event batch before its events count as failed; None retries until it is
        acknowledged (the default with a spool, whose point is to outlast an outage).
    max_retry_after_s : the longest ``Retry-After`` obeyed, so that a misconfigured proxy cannot stall the client.
    max_call_retries : retries of ``score``, ``feedback``, ``signals`` and ``user``, which the caller waits on.
    """

    base_s: float = 0.25
    max_s: float = 30.0
    max_retries: int | None = 10
    max_retry_after_s: float = 300.0
    max_call_retries: int = 3

    def delay(self, attempt: int, retry_after_s: float | None = None, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0 for the first)."""
        ceiling = min(self.max_s, self.base_s * 2.0 ** min(attempt, 32))
        jitter = (rng or random).uniform(0.0, ceiling)
        if retry_after_s is None:
            return jitter
        # The jitter comes on top: clients told the same Retry-After must not all come back in the same instant.
        return min(retry_after_s, self.max_retry_after_s) + jitter


def call_retryable(status: int) -> bool:
    """Answers to ``score``, ``feedback`` or a read that are safe to retry: the server turned the request away
    before doing anything (rate limited, overloaded, not ready). Anything else may have had an effect (a score
    can decide a signal), so it is the caller's to retry."""
    return status in (429, 503)
