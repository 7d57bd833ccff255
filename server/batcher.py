"""Micro-batching: requests of a few items each in, one batch per device call out, same order back."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Sequence

log = logging.getLogger(__name__)

_RATE_SAMPLE_ITEMS = 32
_WARM_UP_BATCHES = 3


class Overloaded(Exception):
    """The queue is full; the caller should retry after ``retry_after_s``."""

    def __init__(self, queued: int, retry_after_s: float):
        super().__init__(f"{queued} items already wait to be processed")
        self.retry_after_s = retry_after_s


class MicroBatcher:
    """Collects submitted item lists into batches of up to ``max_batch_size`` items.

    Parameters
    ----------
    run_batch : awaited with the concatenated items, one batch at a time; returns one result per item.
    max_batch_size : a batch closes once it holds this many items (one larger request runs alone).
    max_wait_ms : a batch closes this long after its first request arrived; a request that finds the batcher idle
        waits for company only while requests have recently come less than this far apart.
    max_queue_items : submissions beyond this many waiting items raise :class:`Overloaded`.
    max_queue_delay_ms : submissions raise :class:`Overloaded` while the items already waiting would take
        longer than this to process at the recently measured rate (0 disables): the queue is bounded in time,
        which is what a caller's latency feels, not only in items.
    on_batch : optional callback with each batch's size, for metrics.
    max_in_flight : batches running at once. With 2, the next batch is already on its way while one runs, so the
        processor does not sit idle for the round trip between a batch's answer and the next batch (a worker in
        another process runs them in order all the same).
    """

    def __init__(
        self,
        run_batch: Callable[[list[Any]], Awaitable[Sequence[Any]]],
        *,
        max_batch_size: int,
        max_wait_ms: float,
        max_queue_items: int,
        max_queue_delay_ms: float = 0.0,
        on_batch: Callable[[int], None] | None = None,
        max_in_flight: int = 1,
    ):
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_ms = max_wait_ms
        self.max_queue_items = max_queue_items
        self.max_queue_delay_ms = max_queue_delay_ms
        self.items_per_s: float | None = None  # recent processing rate, smoothed
        self._rate_samples = 0
        self._on_batch = on_batch
        self._queue: asyncio.Queue[tuple[list[Any], asyncio.Future]] = asyncio.Queue()
        self.queued_items = 0
        self._task: asyncio.Task | None = None
        self._carry: tuple[list[Any], asyncio.Future] | None = None
        self._last_arrival: float | None = None
        self._gap_s: float | None = None  # the recent time between two requests, smoothed
        self._slots = asyncio.Semaphore(max(1, max_in_flight))
        self._running: set[asyncio.Task] = set()
        self._in_flight: list[int] = []  # the items of each batch sent and not yet answered, oldest first
        self._last_done = 0.0  # perf_counter when the last batch finished: where a pipelined batch's own time starts

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._worker())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for task in list(self._running):
            task.cancel()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        waiting = [self._carry] if self._carry else []
        self._carry = None
        while not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        for _, fut in waiting:
            if not fut.done():
                fut.set_exception(RuntimeError("the server is shutting down"))

    def check_delay(self) -> None:
        """:class:`Overloaded` while the items already waiting would take longer than ``max_queue_delay_ms``
        (cheap: callers check it before they read a request). What fits in the next batch is never refused: it
        waits for one batch whatever the bound, and a slow model (a Transformer on a CPU) makes that batch long."""
        # Batches sent behind the one running wait too: their items count as queued.
        waiting = self.queued_items + sum(self._in_flight[1:])
        if self.max_queue_delay_ms and waiting > self.max_batch_size and self.items_per_s:
            if 1000.0 * waiting / self.items_per_s > self.max_queue_delay_ms:
                raise Overloaded(waiting, retry_after_s=1.0)

    async def submit(self, items: list[Any]) -> list[Any]:
        """Results for ``items`` in their order, once their batch has run."""
        if self.queued_items + len(items) > self.max_queue_items and self.queued_items:
            raise Overloaded(self.queued_items, retry_after_s=1.0)
        self.check_delay()
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._last_arrival is not None:
            gap = now - self._last_arrival
            self._gap_s = gap if self._gap_s is None else 0.8 * self._gap_s + 0.2 * gap
        self._last_arrival = now
        fut: asyncio.Future = loop.create_future()
        self.queued_items += len(items)
        self._queue.put_nowait((items, fut))
        self.start()
        return await fut

    async def _collect(self) -> list[tuple[list[Any], asyncio.Future]]:
        first = self._carry if self._carry is not None else await self._queue.get()
        self._carry = None
        batch, size = [first], len(first[0])
        loop = asyncio.get_running_loop()
        # Requests that queued while the previous batch ran go at once, with whatever else is queued: waiting
        # for more would only add latency, since more keep coming while this batch runs. A request that finds
        # the batcher idle waits up to max_wait_ms for company, but only while requests come often enough for
        # company to be likely within it: at a trickle, waiting is latency that buys nothing.
        wait_s = self.max_wait_ms / 1000.0
        company_likely = self._gap_s is not None and self._gap_s < wait_s
        deadline = loop.time() + (wait_s if self._queue.empty() and company_likely else 0.0)
        while size < self.max_batch_size:
            if self._queue.empty():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    entry = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            else:
                entry = self._queue.get_nowait()
            if size + len(entry[0]) > self.max_batch_size:
                self._carry = entry  # opens the next batch, so request order is kept
                break
            batch.append(entry)
            size += len(entry[0])
        return batch

    async def _worker(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                batch = await self._collect()
            except BaseException:
                self._slots.release()
                raise
            size = sum(len(items) for items, _ in batch)
            self.queued_items -= size
            self._in_flight.append(size)
            task = asyncio.get_running_loop().create_task(self._run_guarded(batch, size))
            self._running.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        self._running.discard(task)
        self._slots.release()

    async def _run_guarded(self, batch: list[tuple[list[Any], asyncio.Future]], size: int) -> None:
        try:
            await self._run(batch)
        except asyncio.CancelledError:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(RuntimeError("the server is shutting down"))
            raise
        except Exception:  # _run settles every future itself; this is a bug, not a request's failure
            log.exception("a scoring batch failed outside its requests")
            for _, fut in batch:
                _settle(fut, exc=RuntimeError("the batch failed"))
        finally:
            self._in_flight.remove(size)

    async def _run(self, batch: list[tuple[list[Any], asyncio.Future]]) -> None:
        flat = [item for items, _ in batch for item in items]
        if self._on_batch:
            self._on_batch(len(flat))
        started = time.perf_counter()
        try:
            results = await self._run_batch(flat)
            done = time.perf_counter()
            # A batch sent while another ran began its own work only when that one finished.
            spent = done - max(started, self._last_done)
            self._last_done = done
            if len(flat) >= _RATE_SAMPLE_ITEMS:  # small batches say little about throughput
                self._rate_samples += 1
                rate = len(flat) / max(spent, 1e-6)
                if self._rate_samples > _WARM_UP_BATCHES:  # the first batches pay one-off start-up costs
                    self.items_per_s = rate if self.items_per_s is None else 0.8 * self.items_per_s + 0.2 * rate
            if len(results) != len(flat):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(flat)} items")
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0][1], exc=exc)
                return
            # One bad request must not fail its neighbours: run each on its own to find it.
            for items, fut in batch:
                try:
                    _settle(fut, await self._run_batch(items))
                except Exception as single_exc:
                    _settle(fut, exc=single_exc)
            return
        start = 0
        for items, fut in batch:
            _settle(fut, list(results[start : start + len(items)]))
            start += len(items)


def _settle(fut: asyncio.Future, result: Any = None, exc: BaseException | None = None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)
