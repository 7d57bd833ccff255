"""Each tenant's share of the ingest backlogs, so that one tenant's flood cannot take the others' room.

The server bounds two backlogs for everyone (503 ``overloaded`` beyond them): events waiting for their commit
(``max_pending_events``) and acknowledged events waiting to be applied to their engines
(``max_apply_delay_ms``, in time at the measured apply rate; scores wait behind them). While any other tenant
has sent a request in the last :data:`ACTIVE_WINDOW_S` seconds, one tenant may hold at most ``tenant_share`` of
either, and its ingest beyond that is refused with 429 ``tenant_over_share`` and a ``Retry-After``: the others
keep the rest. A tenant alone on the server may use all of it (the share is work-conserving).

When the event loop runs late and scoring is shed, the tenants sending more than an even part of the requests are
shed first, so a tenant sending a few requests keeps being answered beside one that floods.
"""
from __future__ import annotations

import time
from typing import Callable

from .batcher import Overloaded

ACTIVE_WINDOW_S = 5.0


class OverShare(Overloaded):
    """The tenant holds more than its share of an ingest backlog while other tenants are active."""


class Shares:
    """Per-tenant backlog counters and who has been active lately (event loop only: no locks)."""

    def __init__(self, share: float, clock: Callable[[], float] = time.monotonic):
        self.share = share
        self.clock = clock
        self.pending: dict[int, int] = {}
        self.unapplied: dict[int, int] = {}
        self.in_flight: dict[int, int] = {}  # requests being handled, per tenant
        self._second = -1
        self._arrivals: dict[int, int] = {}  # per tenant, the cost of the requests that arrived in the current second
        self._last_second: dict[int, int] = {}  # and in the second before it
        self._last_seen: dict[int, float] = {}

    def enter(self, tenant_id: int, body_bytes: int = 0) -> None:
        """A request of the tenant arrived; it is being handled until :meth:`leave`. It costs 1, plus 1 per KiB of
        its body: a flood of 1000-event batches weighs more than many single-user scores."""
        self.add(self.in_flight, tenant_id, 1)
        second = int(self.clock())
        if second != self._second:
            # Keep the last whole second's counts: the rates shedding compares.
            self._last_second = self._arrivals if second == self._second + 1 else {}
            self._arrivals, self._second = {}, second
        self._arrivals[tenant_id] = self._arrivals.get(tenant_id, 0) + 1 + body_bytes // 1024

    def leave(self, tenant_id: int) -> None:
        self.add(self.in_flight, tenant_id, -1)

    def sheds(self, tenant_id: int) -> bool:
        """Whether this tenant's request goes while the server sheds load: the tenants sending more than an even
        part of the load (requests weighed by their bodies, over the last whole second and this one) shed first; a
        tenant alone sheds as the server does. Rates, not requests in flight: a tenant the overload slows down
        holds more in flight without asking for more. Weighed, not counted: a flood whose large requests are slowed
        (ingest waits for room) would otherwise look lighter than a neighbour's many small scores."""
        rates: dict[int, int] = {}
        for counts in (self._last_second, self._arrivals):
            for tenant, n in counts.items():
                rates[tenant] = rates.get(tenant, 0) + n
        if len(rates) <= 1:
            return True
        return rates.get(tenant_id, 0) > sum(rates.values()) / len(rates)

    def seen(self, tenant_id: int) -> None:
        self._last_seen[tenant_id] = self.clock()

    def others_active(self, tenant_id: int) -> bool:
        cutoff = self.clock() - ACTIVE_WINDOW_S
        for other, at in list(self._last_seen.items()):
            if at < cutoff:
                del self._last_seen[other]  # the dict holds only recently active tenants
            elif other != tenant_id:
                return True
        return False

    def add(self, counter: dict[int, int], tenant_id: int, n: int) -> None:
        left = counter.get(tenant_id, 0) + n
        if left:
            counter[tenant_id] = left
        else:
            counter.pop(tenant_id, None)

    def check_pending(self, tenant_id: int, adding: int, max_pending: int) -> None:
        held = self.pending.get(tenant_id, 0)
        if held and held + adding > self.share * max_pending and self.others_active(tenant_id):
            raise OverShare(held, retry_after_s=1.0)

    def check_unapplied(self, tenant_id: int, events_per_s: float | None, max_delay_ms: float) -> None:
        """The tenant's share of the apply backlog, with its events waiting for their commit."""
        held = self.unapplied.get(tenant_id, 0) + self.pending.get(tenant_id, 0)
        if not (held and events_per_s and max_delay_ms):
            return
        if 1000.0 * held / events_per_s > self.share * max_delay_ms and self.others_active(tenant_id):
            raise OverShare(held, retry_after_s=1.0)
