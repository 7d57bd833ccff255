"""The queue between ``track`` and the sender: bounded, with an explicit overflow policy, cut into batches by
count and by age, and the counters that account for every event.

It does no I/O and never waits: the sync client drives it under a ``threading.Condition``, the async one
under an ``asyncio.Condition``.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from .delivery import Delivery
from .errors import QueueFull
from .types import Stats

log = logging.getLogger("nudge_client")

OVERFLOW_POLICIES = ("block", "drop_oldest", "drop_newest", "raise")


class WAIT:
    """:meth:`Pipeline.next_batch`: nothing to send yet."""


@dataclass
class Batch:
    """Events cut from the queue (or found in the spool), sent together. ``first`` is the sequence number of its
    first event; ``path`` its spool file, if it has one."""

    events: list[dict[str, Any]]
    first: int
    path: Path | None = None


class Pipeline:
    """Events queued (each with a sequence number and the time it came) and batches cut from them, oldest first.

    ``max_queue`` bounds every event not yet settled, spooled ones included. When it is reached, ``on_overflow``
    says what gives: ``block`` (the driver waits for room before ``add``), ``drop_oldest`` (the oldest event still
    in the queue; batches already cut are never broken up), ``drop_newest`` (the new event) or ``raise``
    (:class:`QueueFull`). Dropped events are counted and logged.
    """

    def __init__(self, batch_size: int, flush_interval_s: float, max_queue: int, on_overflow: str,
                 clock: Callable[[], float] = time.monotonic):
        if on_overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"on_overflow must be one of {OVERFLOW_POLICIES}, not {on_overflow!r}")
        if not 1 <= batch_size <= max_queue:
            raise ValueError("batch_size must be at least 1 and at most max_queue")
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.max_queue = max_queue
        self.on_overflow = on_overflow
        self.clock = clock
        self.queue: deque[tuple[int, float, dict[str, Any]]] = deque()
        self.cut: deque[Batch] = deque()  # the head is the batch being delivered
        self.stats = Stats()
        self.closing = False  # send what is queued without waiting for a full batch
        self._next_seq = 0
        self._flush_upto = -1  # queued events up to this sequence number are sent without waiting

    @property
    def has_room(self) -> bool:
        return self.stats.pending < self.max_queue

    def add(self, event: dict[str, Any]) -> bool:
        """Queue ``event``, or apply the overflow policy when there is no room. True when the sender must be
        woken: a batch is due, or the queue was empty until now and the event starts the ``flush_interval_s``
        clock (a sender with nothing queued waits without a deadline)."""
        if not self.has_room:
            if self.on_overflow == "raise":
                raise QueueFull(f"{self.stats.pending} events are waiting (max_queue={self.max_queue})")
            if self.on_overflow == "drop_oldest" and self.queue:
                self.queue.popleft()
                self._count(enqueued=1, dropped=1)
                self.queue.append((self._take_seq(), self.clock(), event))
            else:
                # drop_newest; or drop_oldest when everything pending is cut already (spooled, or on its way).
                self._take_seq()
                self._count(enqueued=1, dropped=1)
            self._warn_dropped()
            return self.due()
        self.queue.append((self._take_seq(), self.clock(), event))
        self._count(enqueued=1)
        return len(self.queue) == 1 or self.due()

    def restore(self, batches: list[tuple[Path, list[dict[str, Any]]]]) -> None:
        """Put batches found in the spool ahead of everything else."""
        for path, events in batches:
            self.cut.append(Batch(events, self._next_seq, path))
            self._next_seq += len(events)
            self._count(restored=len(events))

    # ---- batches ----------------------------------------------------------------------------------------

    def due(self) -> bool:
        """Whether a batch should be cut from the queue now."""
        if not self.queue:
            return False
        seq, since, _ = self.queue[0]
        return (len(self.queue) >= self.batch_size or self.closing or seq <= self._flush_upto
                or self.clock() - since >= self.flush_interval_s)

    def next_batch(self, abort: bool) -> Batch | None | type[WAIT]:
        """What the sender does next: deliver this batch (the head of ``cut``, or one cut now), stop (None), or
        :data:`WAIT` until ``seconds_until_due``."""
        if abort:
            return None
        if self.cut:
            return self.cut[0]
        if self.due():
            return self.take()
        return None if self.closing else WAIT

    def seconds_until_due(self) -> float | None:
        """How long until the oldest queued event makes a batch due; None with nothing queued."""
        if not self.queue:
            return None
        return max(0.0, self.queue[0][1] + self.flush_interval_s - self.clock())

    def take(self) -> Batch:
        """Cut the next batch from the queue; it joins ``cut``."""
        n = min(self.batch_size, len(self.queue))
        items = [self.queue.popleft() for _ in range(n)]
        batch = Batch([event for _, _, event in items], items[0][0])
        self.cut.append(batch)
        return batch

    def take_all(self) -> list[Batch]:
        """Every queued event, in batches (when the client closes)."""
        batches = []
        while self.queue:
            batches.append(self.take())
        return batches

    def settle(self, batch: Batch, delivery: Delivery) -> bool:
        """Count what ``delivery`` settled of ``batch``; True when all of it was (it leaves ``cut``)."""
        self._count(sent=delivery.accepted, duplicates=delivery.duplicates, retries=delivery.retries,
                    failed=sum(len(events) for _, events in delivery.failures), failed_batches=len(delivery.failures))
        remaining = delivery.remaining()
        if remaining:
            batch.events = remaining  # ``first`` stays: still no later than the first remaining event
            return False
        self.cut.remove(batch)
        return True

    def drop_unsent(self, batch: Batch) -> None:
        """A batch that can be neither sent nor spooled (the client closed): counted as dropped."""
        self.cut.remove(batch)
        self._count(dropped=len(batch.events))
        log.warning("nudge client closed with %d events unsent and no spool: counted as dropped", len(batch.events))

    def count_spooled(self) -> None:
        self._count(spooled=1)

    # ---- flush ------------------------------------------------------------------------------------------

    def flush_target(self) -> int:
        """Ask for everything queued now to go without waiting; returns the sequence number to wait for."""
        self._flush_upto = self._next_seq - 1
        return self._flush_upto

    def flushed(self, target: int) -> bool:
        """Whether every event up to sequence number ``target`` is settled: nothing that old is pending."""
        if self.cut:
            return self.cut[0].first > target
        if self.queue:
            return self.queue[0][0] > target
        return True

    # ---- counters ---------------------------------------------------------------------------------------

    def _take_seq(self) -> int:
        self._next_seq += 1
        return self._next_seq - 1

    def _count(self, **deltas: int) -> None:
        self.stats = replace(self.stats, **{k: getattr(self.stats, k) + v for k, v in deltas.items()})

    def _warn_dropped(self) -> None:
        dropped = self.stats.dropped
        if dropped == 1 or dropped % 1000 == 0:
            log.warning("nudge client queue full (max_queue=%d, on_overflow=%s): %d events dropped so far",
                        self.max_queue, self.on_overflow, dropped)
