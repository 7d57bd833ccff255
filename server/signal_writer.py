"""Writes decisions and their outcomes to the signal log, in the order the device thread made them.

The device thread hands writes over as it makes them (a deque append is thread-safe), so a
conversion's resolution can never reach the database before the decision it resolves.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
from typing import Awaitable, Callable

from model.signals import Decision, Resolution

from .metrics import Metrics

log = logging.getLogger(__name__)

_MAX_GROUP = 256


class SignalWriter:
    """Decisions and resolutions in, group-committed to the signal log by one task."""

    def __init__(self, write: Callable[[list], Awaitable[None]], metrics: Metrics):
        self._write = write  # runs Store.write_signals on the storage thread
        self._metrics = metrics
        self.on_written: Callable[[set[int]], None] = lambda tenant_ids: None
        self._pending: collections.deque = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None

    def start(self) -> asyncio.Task:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        return self._loop.create_task(self._run(), name="nudge-signal-writer")

    def submit(
        self, tenant: tuple[int, str], decisions: list[Decision], resolutions: list[Resolution]
    ) -> concurrent.futures.Future | None:
        """Queue a write (any thread); the future completes once it is durable. None when there is nothing."""
        if not decisions and not resolutions:
            return None
        done: concurrent.futures.Future = concurrent.futures.Future()
        self._pending.append((tenant, decisions, resolutions, done))
        self._loop.call_soon_threadsafe(self._wake.set)
        return done

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Write everything queued so far."""
        while self._pending:
            group = [self._pending.popleft() for _ in range(min(_MAX_GROUP, len(self._pending)))]
            try:
                await self._write([(tenant[0], d, r) for tenant, d, r, _ in group])
            except Exception as exc:
                log.exception("writing %d signal log entries failed", len(group))
                for *_, done in group:
                    done.set_exception(exc)
                continue
            for (tenant_id, name), decisions, resolutions, done in group:
                for d in decisions:
                    self._metrics.signals.labels(name, d.type, "withheld" if d.withheld else "sent").inc()
                for r in resolutions:
                    self._metrics.signal_outcomes.labels(name, "converted" if r.converted else "no_conversion").inc()
                done.set_result(None)
            self.on_written({tenant[0] for tenant, decisions, _, _ in group if decisions})
