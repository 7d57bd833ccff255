"""The synchronous client: ``track`` queues events and a background thread batches and sends them; ``score``,
``feedback``, ``signals`` and ``user`` are plain calls in the caller's thread.

HTTP goes through httpx, a well-kept HTTP client with both a sync and an async API (the same library serves
:class:`~nudge_client.aio.AsyncClient`), connection pooling and separate connect and read timeouts.
"""
from __future__ import annotations

import atexit
import itertools
import logging
import threading
import time
import weakref
from os import PathLike
from typing import Any, Iterable, Iterator, Mapping

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

class Client(ClientBase):
    """Sends events to nudge in batches, in the background, and answers typed calls.

    Parameters
    ----------
    url, key : the server's base URL and a tenant's API key.
    batch_size, flush_interval_s : a batch goes out once it holds ``batch_size`` events or its oldest event has
        waited ``flush_interval_s`` (Segment's defaults: 100 events, 0.5 s).
    max_queue : events not yet settled (queued, on their way, spooled) that the client holds at most.
    on_overflow : what ``track`` does when ``max_queue`` is reached: ``"drop_oldest"`` (the default),
        ``"drop_newest"``, ``"block"`` until there is room, or ``"raise"`` :class:`QueueFull`. Every drop is
        counted in ``stats.dropped`` and logged. The default keeps the caller's thread from ever waiting on nudge
        (tracking sits in request paths), and of two events it keeps the newer: scores weigh recent actions most.
    spool_dir : keep batches on disk until the server has them; the next client on that directory sends what
        this one could not. With a spool, batches are retried until acknowledged (see ``retry``).
    retry : the :class:`RetryPolicy`; by default 10 retries of a batch, unlimited with a spool.
    timeout_s : the limit of each request (the wait of a long poll comes on top).
    on_error : called in the sender thread with the error and the events of each batch (or part) that failed;
        the last error is also kept in ``last_error``.
    transport : an httpx transport, for tests or custom networking.
    """

    def __init__(self, url: str, key: str, *, batch_size: int = 100, flush_interval_s: float = 0.5,
                 max_queue: int = 10_000, on_overflow: str = "drop_oldest", spool_dir: str | PathLike | None = None,
                 retry: RetryPolicy | None = None, timeout_s: float = 10.0, on_error: ErrorHandler | None = None,
                 transport: httpx.BaseTransport | None = None):
        super().__init__(batch_size=batch_size, flush_interval_s=flush_interval_s, max_queue=max_queue,
                         on_overflow=on_overflow, spool_dir=spool_dir, retry=retry, timeout_s=timeout_s,
                         on_error=on_error)
        self._cond = threading.Condition()
        # The sender has its own connection pool, so the caller's calls and the background sends never wait on
        # each other's connections (a long poll holds one for up to 30 s).
        self._http = self._new_http(url, key, transport)
        self._sender_http = self._new_http(url, key, transport)
        self._sender = threading.Thread(target=self._run, name="nudge-client-sender", daemon=True)
        self._sender.start()
        _OPEN.add(self)

    def _new_http(self, url: str, key: str, transport: httpx.BaseTransport | None) -> httpx.Client:
        return httpx.Client(base_url=url, headers={**HEADERS, "Authorization": f"Bearer {key}"},
                            timeout=httpx.Timeout(self._timeout_s, connect=min(self._timeout_s, 5.0)),
                            transport=transport)

    # ---- events -------------------------------------------------------------------------------------------

    def track(self, user_id: str | int, action: str, ts: float | None = None, event_id: str | None = None,
              item_id: str | int | None = None, category: str | int | None = None, query: str | None = None,
              context: Context | Mapping[str, Any] | None = None) -> str:
        """Queue one event; returns its ``event_id`` (made here when not given, so that retries are idempotent).
        ``ts`` defaults to now. The fields are those of ``POST /v1/events``."""
        event = make_event(user_id, action, ts, event_id, item_id, category, query, context)
        with self._cond:
            if self._pipeline.on_overflow == "block":
                self._cond.wait_for(lambda: self._closed or self._pipeline.has_room)
            if self._closed:
                raise ClientClosed("the client is closed")
            if self._pipeline.add(event):
                self._cond.notify_all()
        return event["event_id"]

    def flush(self, timeout: float | None = None) -> bool:
        """Send what is queued now and wait until every event tracked so far is settled (sent, a duplicate,
        dropped or failed: see ``stats``). False if that did not happen within ``timeout`` seconds."""
        with self._cond:
            target = self._pipeline.flush_target()
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._pipeline.flushed(target) or self._sender_done, timeout)
            return self._pipeline.flushed(target)

    @property
    def stats(self) -> Stats:
        with self._cond:
            return self._pipeline.stats

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop taking events, and try for up to ``timeout`` seconds (None: as long as it takes) to send what is
        queued; then wait for a request still under way. What is left goes to the spool, or without one is
        counted in ``stats.dropped``."""
        with self._cond:
            if self._close_called:
                return
            self._close_called = self._closed = self._pipeline.closing = True
            self._cond.notify_all()
        self._sender.join(timeout)
        with self._cond:
            self._abort = True
            self._cond.notify_all()
        self._sender.join()
        self._keep_unsent()
        self._http.close()
        self._sender_http.close()
        if self._spool is not None:
            self._spool.close()
        _OPEN.discard(self)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- calls --------------------------------------------------------------------------------------------

    def score(self, users: Iterable[str | int | Mapping[str, Any]], explain: bool = False) -> list[ScoreResult]:
        """Score users (ids, or ``{"user_id", "state"}`` with the page's category, query, page), in order."""
        results = self._call("POST", "/v1/score", score_body(users, explain))["results"]
        return [ScoreResult.from_wire(r) for r in results]

    def feedback(self, signal_id: str, outcome: Outcome, ts: float | None = None) -> FeedbackResult:
        """Report one step of what became of a signal (received, handled, shown, clicked, converted, dismissed)."""
        return self.feedback_many([FeedbackReport(signal_id, outcome, ts)])

    def feedback_many(self, reports: Iterable[FeedbackReport]) -> FeedbackResult:
        answered = self._call("POST", "/v1/feedback", {"feedback": [r.to_wire() for r in reports]})
        return FeedbackResult(int(answered["accepted"]))

    def signals(self, after: str | None = None, limit: int = 100, wait_s: float = 0.0) -> SignalPage:
        """Signals after the cursor ``after`` (from the oldest retained without one), waiting up to ``wait_s``
        for the first (the server waits at most ``max_poll_wait_s``, 30 s)."""
        return SignalPage.from_wire(self._call("GET", "/v1/signals", params=signals_params(after, limit, wait_s),
                                               wait_s=wait_s))

    def signals_iter(self, after: str | None = None, limit: int = 100, wait_s: float = 20.0) -> Iterator[SignalPage]:
        """Page after page, following the cursor, long-polling; endless. Empty pages come too (after ``wait_s``),
        so the loop can check when to stop. Store ``page.next`` once a page is handled to resume there."""
        while True:
            page = self.signals(after, limit, wait_s)
            yield page
            after = page.next

    def user(self, user_id: str | int) -> UserView:
        """The user's recent actions and posterior-mean score (:class:`ApiError` ``user_not_found`` if none)."""
        return UserView.from_wire(self._call("GET", user_path(user_id)))

    def _call(self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None,
              wait_s: float = 0.0) -> Any:
        content = pack(body) if body is not None else None
        timeout = httpx.Timeout(self._timeout_s + wait_s, connect=min(self._timeout_s, 5.0))
        for attempt in itertools.count():
            try:
                r = self._http.request(method, path, content=content, params=params, timeout=timeout,
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
            time.sleep(self._retry.delay(attempt, getattr(error, "retry_after_s", None)))

    # ---- the sender thread --------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while (batch := self._next_batch()) is not None:
                self._deliver(batch)
        except Exception:
            log.exception("the nudge client's sender stopped on an unexpected error; the client takes no more events")
            with self._cond:
                self._closed = True
        finally:
            with self._cond:
                self._sender_done = True
                self._cond.notify_all()

    def _next_batch(self) -> Batch | None:
        """The oldest batch not yet delivered, once one is due; None when the client closes."""
        pipeline = self._pipeline
        with self._cond:
            while (batch := pipeline.next_batch(self._abort)) is WAIT:
                self._cond.wait(pipeline.seconds_until_due())
        if batch is None:
            return None
        if batch.path is None:
            self._spool_batch(batch)
        return batch

    def _deliver(self, batch: Batch) -> None:
        delivery = Delivery(batch.events, self._retry)
        while (events := delivery.request()) is not None and not self._abort:
            try:
                r = self._sender_http.post("/v1/events", content=pack({"events": events}), headers=BODY_HEADERS)
            except httpx.RequestError as exc:
                wait = delivery.unreachable(exc)
            else:
                wait = delivery.answered(r.status_code, r.headers, r.content)
            if wait:
                self._pause(wait)
        with self._cond:
            settled = self._pipeline.settle(batch, delivery)
            if delivery.failures:
                self.last_error = delivery.failures[-1][0]
            self._cond.notify_all()
        if settled and batch.path is not None:
            self._spool.remove(batch.path)
        for error, events in delivery.failures:
            report(error, events, self._on_error)

    def _pause(self, seconds: float) -> None:
        """Wait before a retry. With a spool, batches that come due meanwhile are cut and written to it: during an
        outage, events move to disk instead of waiting in memory."""
        deadline = time.monotonic() + seconds
        while True:
            with self._cond:
                while True:
                    left = deadline - time.monotonic()
                    if self._abort or left <= 0:
                        return
                    if self._spool is not None and self._pipeline.due():
                        batch = self._pipeline.take()
                        break
                    due_in = self._pipeline.seconds_until_due() if self._spool is not None else None
                    self._cond.wait(left if due_in is None else min(left, due_in))
            self._spool_batch(batch)

    def _spool_batch(self, batch: Batch) -> None:
        if self._spool is None:
            return
        try:
            batch.path = self._spool.write(batch.events)
        except OSError:
            log.exception("could not write a batch of %d events to the spool; it is kept in memory only",
                          len(batch.events))
            return
        with self._cond:
            self._pipeline.count_spooled()

    def _keep_unsent(self) -> None:
        """After the sender stopped: what it did not send goes to the spool, or is counted as dropped."""
        with self._cond:
            batches = [b for b in self._pipeline.cut if b.path is None] + self._pipeline.take_all()
        for batch in batches:
            self._spool_batch(batch)
            if batch.path is None:
                with self._cond:
                    self._pipeline.drop_unsent(batch)


# Clients still open when the interpreter exits get their close(): what they could not send goes to the spool.
_OPEN: weakref.WeakSet[Client] = weakref.WeakSet()


@atexit.register
def _close_open_clients() -> None:
    for client in list(_OPEN):
        client.close()
