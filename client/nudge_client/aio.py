"""The asyncio client: the same batching, retries, overflow policy and spool as :class:`~nudge_client.Client`,
with an asyncio task in place of the sender thread. Use it as ``async with AsyncClient(...) as nudge:``, or
``await nudge.close()``: there is no exit hook, since the event loop is gone by then.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
from os import PathLike
from typing import Any, AsyncIterator, Iterable, Mapping

import httpx

from .base import ClientBase
from .batching import WAIT, Batch
from .delivery import Delivery, ErrorHandler, report
from .errors import ClientClosed
from .retry import RetryPolicy
from .types import Context, FeedbackReport, FeedbackResult, Outcome, ScoreResult, SignalPage, Stats, UserView
from .wire import (BODY_HEADERS, HEADERS, call_answered, call_unreachable, make_event, pack, score_body,
                   signals_params, user_path)

log = logging.getLogger("nudge_client")


class AsyncClient(ClientBase):
    """See :class:`~nudge_client.Client` for the parameters; ``transport`` is an ``httpx.AsyncBaseTransport``.
    The sender task starts with the first ``track``, ``flush`` or ``async with`` (or at once when made inside a
    running event loop)."""

    def __init__(self, url: str, key: str, *, batch_size: int = 100, flush_interval_s: float = 0.5,
                 max_queue: int = 10_000, on_overflow: str = "drop_oldest", spool_dir: str | PathLike | None = None,
                 retry: RetryPolicy | None = None, timeout_s: float = 10.0, on_error: ErrorHandler | None = None,
                 transport: httpx.AsyncBaseTransport | None = None):
        super().__init__(batch_size=batch_size, flush_interval_s=flush_interval_s, max_queue=max_queue,
                         on_overflow=on_overflow, spool_dir=spool_dir, retry=retry, timeout_s=timeout_s,
                         on_error=on_error)
        self._cond = asyncio.Condition()
        self._http = httpx.AsyncClient(base_url=url, headers={**HEADERS, "Authorization": f"Bearer {key}"},
                                       timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
                                       transport=transport)
        self._task: asyncio.Task | None = None
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self._start()

    def _start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="nudge-client-sender")

    # ---- events -------------------------------------------------------------------------------------------

    async def track(self, user_id: str | int, action: str, ts: float | None = None, event_id: str | None = None,
                    item_id: str | int | None = None, category: str | int | None = None, query: str | None = None,
                    context: Context | Mapping[str, Any] | None = None) -> str:
        """Queue one event; returns its ``event_id``. Waits only under ``on_overflow="block"``."""
        event = make_event(user_id, action, ts, event_id, item_id, category, query, context)
        self._start()
        async with self._cond:
            if self._pipeline.on_overflow == "block":
                await self._cond.wait_for(lambda: self._closed or self._pipeline.has_room)
            if self._closed:
                raise ClientClosed("the client is closed")
            if self._pipeline.add(event):
                self._cond.notify_all()
        return event["event_id"]

    async def flush(self, timeout: float | None = None) -> bool:
        """As :meth:`Client.flush`."""
        self._start()
        async with self._cond:
            target = self._pipeline.flush_target()
            self._cond.notify_all()
            try:
                await asyncio.wait_for(
                    self._cond.wait_for(lambda: self._pipeline.flushed(target) or self._sender_done), timeout)
            except TimeoutError:
                pass
            return self._pipeline.flushed(target)

    @property
    def stats(self) -> Stats:
        return self._pipeline.stats

    async def close(self, timeout: float | None = 10.0) -> None:
        """As :meth:`Client.close`."""
        if self._close_called:
            return
        self._close_called = True
        self._start()
        async with self._cond:
            self._closed = self._pipeline.closing = True
            self._cond.notify_all()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            pass
        async with self._cond:
            self._abort = True
            self._cond.notify_all()
        await self._task
        await self._keep_unsent()
        await self._http.aclose()
        if self._spool is not None:
            self._spool.close()

    async def __aenter__(self) -> AsyncClient:
        self._start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ---- calls --------------------------------------------------------------------------------------------

    async def score(self, users: Iterable[str | int | Mapping[str, Any]], explain: bool = False) -> list[ScoreResult]:
        results = (await self._call("POST", "/v1/score", score_body(users, explain)))["results"]
        return [ScoreResult.from_wire(r) for r in results]

    async def feedback(self, signal_id: str, outcome: Outcome, ts: float | None = None) -> FeedbackResult:
        return await self.feedback_many([FeedbackReport(signal_id, outcome, ts)])

    async def feedback_many(self, reports: Iterable[FeedbackReport]) -> FeedbackResult:
        answered = await self._call("POST", "/v1/feedback", {"feedback": [r.to_wire() for r in reports]})
        return FeedbackResult(int(answered["accepted"]))

    async def signals(self, after: str | None = None, limit: int = 100, wait_s: float = 0.0) -> SignalPage:
        return SignalPage.from_wire(await self._call("GET", "/v1/signals", params=signals_params(after, limit, wait_s),
                                                     wait_s=wait_s))

    async def signals_iter(self, after: str | None = None, limit: int = 100,
                           wait_s: float = 20.0) -> AsyncIterator[SignalPage]:
        while True:
            page = await self.signals(after, limit, wait_s)
            yield page
            after = page.next

    async def user(self, user_id: str | int) -> UserView:
        return UserView.from_wire(await self._call("GET", user_path(user_id)))

    async def _call(self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None,
                    wait_s: float = 0.0) -> Any:
        content = pack(body) if body is not None else None
        timeout = httpx.Timeout(self._timeout_s + wait_s, connect=min(self._timeout_s, 5.0))
        for attempt in itertools.count():
            try:
                r = await self._http.request(method, path, content=content, params=params, timeout=timeout,
                                             headers=BODY_HEADERS if content is not None else None)
            except httpx.RequestError as exc:
                error = call_unreachable(method, exc)
            else:
                done, result = call_answered(r)
                if done:
                    return result
                error = result
            if attempt >= self._retry.max_call_retries:
                raise error
            await asyncio.sleep(self._retry.delay(attempt, getattr(error, "retry_after_s", None)))

    # ---- the sender task ----------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while (batch := await self._next_batch()) is not None:
                await self._deliver(batch)
        except Exception:
            log.exception("the nudge client's sender stopped on an unexpected error; the client takes no more events")
            self._closed = True
        finally:
            self._sender_done = True
            async with self._cond:
                self._cond.notify_all()

    async def _wait(self, timeout: float | None) -> None:
        """Wait for a notification, at most ``timeout`` seconds (the condition's lock held)."""
        try:
            await asyncio.wait_for(self._cond.wait(), timeout)
        except TimeoutError:
            pass

    async def _next_batch(self) -> Batch | None:
        pipeline = self._pipeline
        async with self._cond:
            while (batch := pipeline.next_batch(self._abort)) is WAIT:
                await self._wait(pipeline.seconds_until_due())
        if batch is None:
            return None
        if batch.path is None:
            await self._spool_batch(batch)
        return batch

    async def _deliver(self, batch: Batch) -> None:
        delivery = Delivery(batch.events, self._retry)
        while (events := delivery.request()) is not None and not self._abort:
            try:
                r = await self._http.post("/v1/events", content=pack({"events": events}), headers=BODY_HEADERS)
            except httpx.RequestError as exc:
                wait = delivery.unreachable(exc)
            else:
                wait = delivery.answered(r.status_code, r.headers, r.content)
            if wait:
                await self._pause(wait)
        async with self._cond:
            settled = self._pipeline.settle(batch, delivery)
            if delivery.failures:
                self.last_error = delivery.failures[-1][0]
            self._cond.notify_all()
        if settled and batch.path is not None:
            await asyncio.to_thread(self._spool.remove, batch.path)
        for error, events in delivery.failures:
            report(error, events, self._on_error)

    async def _pause(self, seconds: float) -> None:
        """As :meth:`Client._pause`: with a spool, batches that come due meanwhile go to disk."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            async with self._cond:
                while True:
                    left = deadline - loop.time()
                    if self._abort or left <= 0:
                        return
                    if self._spool is not None and self._pipeline.due():
                        batch = self._pipeline.take()
                        break
                    due_in = self._pipeline.seconds_until_due() if self._spool is not None else None
                    await self._wait(left if due_in is None else min(left, due_in))
            await self._spool_batch(batch)

    async def _spool_batch(self, batch: Batch) -> None:
        if self._spool is None:
            return
        try:
            batch.path = await asyncio.to_thread(self._spool.write, batch.events)
        except OSError:
            log.exception("could not write a batch of %d events to the spool; it is kept in memory only",
                          len(batch.events))
            return
        self._pipeline.count_spooled()

    async def _keep_unsent(self) -> None:
        batches = [b for b in self._pipeline.cut if b.path is None] + self._pipeline.take_all()
        for batch in batches:
            await self._spool_batch(batch)
            if batch.path is None:
                self._pipeline.drop_unsent(batch)
