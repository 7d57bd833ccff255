"""Webhook delivery: one task per subscription reads the signal log from its cursor and POSTs signed batches.

A batch is fixed (its signal range stored) before its first attempt, so every retry, even after a
restart, sends the same signals under the same ``webhook-id``; the cursor moves only once the batch
is delivered or dead-lettered. Deliveries are at least once: receivers dedupe on ``webhook-id``.
Each subscription has its own task, its own connection pool and every request its own timeout, so a
slow or dead endpoint delays nothing but its own deliveries.
"""
from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import secrets
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import aiohttp

from . import signing
from .metrics import Metrics
from .subscription_store import Subscription, webhook_id
from .webhook_urls import GuardedResolver

log = logging.getLogger(__name__)

# What a tenant learns of a failure with no HTTP answer; the detail (refused, timed out, DNS, TLS) goes to the
# log only, so that test calls and delivery reports cannot be used to scan ports.
NO_ANSWER = "no HTTP answer within the timeout, or the connection failed"


@dataclass(frozen=True)
class DeliverySettings:
    """timeout_s per request; retry_period_s before a batch is dead-lettered; backoff_base_s doubling up to
    backoff_max_s (full jitter); batch_size signals per request; allow_private skips the connect-time check;
    test_interval_s between two test deliveries of one subscription."""

    timeout_s: float = 10.0
    retry_period_s: float = 86400.0
    backoff_base_s: float = 1.0
    backoff_max_s: float = 3600.0
    batch_size: int = 100
    allow_private: bool = False
    test_interval_s: float = 10.0


class TestDeliveryLimited(Exception):
    """A subscription was tested again sooner than ``test_interval_s`` after its last test."""

    __test__ = False  # not a test class for pytest, whatever its name

    def __init__(self, retry_after_s: float):
        super().__init__(f"this subscription was tested moments ago; test it again in {retry_after_s:.1f} s")
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Attempt:
    """What one POST came to."""

    ok: bool
    retryable: bool
    error: str | None = None  # what the tenant may see
    status: int | None = None
    retry_after_s: float | None = None
    detail: str | None = None  # what went wrong on the network, for the log only


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


async def post_signed(
    session: aiohttp.ClientSession, url: str, secret: str, msg_id: str, body: bytes, timeout_s: float
) -> Attempt:
    """POST one signed message; 2xx is delivered, 408, 429 and 5xx (and network errors) are worth retrying."""
    headers = signing.headers(secret, msg_id, int(time.time()), body)
    try:
        async with session.post(url, data=body, headers=headers, allow_redirects=False,
                                timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            await resp.read()
            if 200 <= resp.status < 300:
                return Attempt(True, False, status=resp.status)
            retryable = resp.status in (408, 429) or resp.status >= 500
            error = f"HTTP {resp.status}" + (" (redirects are not followed)" if 300 <= resp.status < 400 else "")
            return Attempt(False, retryable, error, resp.status, _retry_after(resp.headers.get("Retry-After")))
    except asyncio.TimeoutError:
        return Attempt(False, True, NO_ANSWER, detail=f"no answer within {timeout_s:g} s")
    except (aiohttp.ClientError, OSError) as exc:
        return Attempt(False, True, NO_ANSWER, detail=f"{type(exc).__name__}: {exc}")


class Deliveries:
    """The delivery tasks of every subscription, and the wake-ups when signals are written."""

    def __init__(self, storage: Callable[..., Awaitable[Any]], store, settings: DeliverySettings, metrics: Metrics):
        self._storage = storage  # runs a function on the storage thread, which owns ``store``
        self._store = store
        self.settings = settings
        self._metrics = metrics
        self._tasks: dict[str, asyncio.Task] = {}
        self._wakeups: dict[int, asyncio.Event] = {}
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._closing: set[asyncio.Task] = set()
        self._last_test: dict[str, float] = {}  # subscription id -> time.monotonic() of its last test

    async def start(self) -> None:
        for sub in await self._storage(self._store.subscriptions):
            self.add(sub)

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        sessions, self._sessions = list(self._sessions.values()), {}
        await asyncio.gather(*self._closing, *(session.close() for session in sessions), return_exceptions=True)

    def add(self, sub: Subscription) -> None:
        self._sessions[sub.id] = self._new_session()
        self._tasks[sub.id] = asyncio.get_running_loop().create_task(self._run(sub.id, sub.tenant_id),
                                                                     name=f"nudge-delivery-{sub.id}")

    def remove(self, sub_id: str) -> None:
        task = self._tasks.pop(sub_id, None)
        if task is not None:
            task.cancel()
        self._last_test.pop(sub_id, None)
        session = self._sessions.pop(sub_id, None)
        if session is not None:
            closing = asyncio.get_running_loop().create_task(self._close_after(task, session))
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    def _new_session(self) -> aiohttp.ClientSession:
        """A connection pool for one subscription, so that endpoints that hang hold no connection another needs."""
        resolver = None if self.settings.allow_private else GuardedResolver()
        # One delivery at a time, and test calls beside it.
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=4, resolver=resolver))

    @staticmethod
    async def _close_after(task: asyncio.Task | None, session: aiohttp.ClientSession) -> None:
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        await session.close()

    def notify(self, tenant_ids) -> None:
        """New signals were committed for these tenants: wake their deliveries and long polls."""
        for tenant_id in tenant_ids:
            event = self._wakeups.pop(tenant_id, None)
            if event is not None:
                event.set()

    def waiter(self, tenant_id: int) -> asyncio.Event:
        """An event set when the tenant's next signals are committed (take it before looking for signals)."""
        return self._wakeups.setdefault(tenant_id, asyncio.Event())

    @staticmethod
    async def wait(event: asyncio.Event, timeout_s: float) -> None:
        """Until ``event`` is set, or ``timeout_s``."""
        try:
            await asyncio.wait_for(event.wait(), timeout_s)
        except asyncio.TimeoutError:
            pass

    async def send_test(self, sub: Subscription) -> dict[str, Any]:
        """One signed test delivery and the endpoint's HTTP status; :class:`TestDeliveryLimited` if too soon."""
        self._claim_test(sub.id)
        signal = {"signal_id": "sig_test_" + secrets.token_hex(8), "user_id": "test-user", "type": "test",
                  "payload": {}, "score": 0.0, "intent": "test", "created_at": time.time(), "variant": "test"}
        msg_id = "msg_test_" + secrets.token_hex(8)
        body = json.dumps({"signals": [signal]}).encode()
        session = self._sessions.get(sub.id)
        if session is None:  # deleted since the caller looked it up
            async with self._new_session() as session:
                attempt = await post_signed(session, sub.url, sub.secret, msg_id, body, self.settings.timeout_s)
        else:
            attempt = await post_signed(session, sub.url, sub.secret, msg_id, body, self.settings.timeout_s)
        if not attempt.ok:
            log.info("test delivery %s to subscription %s failed: %s", msg_id, sub.id, attempt.detail or attempt.error)
        return {"delivered": attempt.ok, "status": attempt.status, "error": attempt.error, "webhook_id": msg_id}

    def _claim_test(self, sub_id: str) -> None:
        """Count a test of the subscription now, or raise :class:`TestDeliveryLimited` if its last was too recent."""
        now = time.monotonic()
        last = self._last_test.get(sub_id)
        if last is not None and now - last < self.settings.test_interval_s:
            raise TestDeliveryLimited(self.settings.test_interval_s - (now - last))
        self._last_test[sub_id] = now

    # ---- one subscription ---------------------------------------------------------------------

    async def _run(self, sub_id: str, tenant_id: int) -> None:
        while True:
            wakeup = self.waiter(tenant_id)  # taken before reading, so no commit slips between
            try:
                step = await self._step(sub_id, tenant_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("delivery of subscription %s failed; retrying in 5 s", sub_id)
                await asyncio.sleep(5.0)
                continue
            if step == "gone":
                self._tasks.pop(sub_id, None)
                self._last_test.pop(sub_id, None)
                session = self._sessions.pop(sub_id, None)
                if session is not None:
                    await session.close()
                return
            if step == "idle":
                await self.wait(wakeup, 1.0)

    async def _step(self, sub_id: str, tenant_id: int) -> str:
        """Deliver (or give up on) one batch: 'busy'; 'idle' when there was nothing to do; 'gone' once deleted."""
        store = self._store
        sub = await self._storage(store.subscription, sub_id)
        if sub is None:
            return "gone"
        redelivery = await self._storage(store.next_redelivery, sub_id)
        if redelivery is not None:
            dl_id, after, until = redelivery
            rows = await self._storage(store.read_signals, tenant_id, after, 1_000_000, sub.types, until)
            ok, attempts, error = await self._attempt_until_done(sub, rows, webhook_id(sub_id, after, until),
                                                                 time.time(), 0)
            await self._storage(store.redelivery_done, dl_id, ok, attempts, error)
            return "busy"
        if sub.inflight_until is None:
            rows = await self._storage(store.read_signals, tenant_id, sub.cursor, self.settings.batch_size, sub.types)
            if not rows:
                return "idle"
            until = rows[-1][0]
            since = await self._storage(store.start_batch, sub_id, until)
        else:
            until, since = sub.inflight_until, sub.inflight_since
            rows = await self._storage(store.read_signals, tenant_id, sub.cursor, self.settings.batch_size,
                                       sub.types, until)
        if not rows:  # erased or purged since: nothing left to send
            await self._storage(store.batch_delivered, sub_id, until, 0)
            return "busy"
        ok, attempts, error = await self._attempt_until_done(
            sub, rows, webhook_id(sub_id, sub.cursor, until), since, sub.attempts, record=True)
        if ok:
            await self._storage(store.batch_delivered, sub_id, until, len(rows))
        else:
            await self._storage(store.dead_letter_batch, sub_id, sub.cursor, until, len(rows), attempts, error)
            log.warning("subscription %s: %d signals dead-lettered after %d attempts: %s",
                        sub_id, len(rows), attempts, error)
        return "busy"

    async def _attempt_until_done(
        self, sub: Subscription, rows: list, msg_id: str, since: float, attempts: int, record: bool = False
    ) -> tuple[bool, int, str | None]:
        """Retry one message with backoff until delivered, refused, or past the retry period."""
        body = json.dumps({"signals": [signal for _, signal in rows]}).encode()
        settings = self.settings
        while True:
            attempt = await post_signed(self._sessions[sub.id], sub.url, sub.secret, msg_id, body, settings.timeout_s)
            attempts += 1
            outcome = "delivered" if attempt.ok else ("retry" if attempt.retryable else "refused")
            self._metrics.webhook_attempts.labels(outcome).inc()
            if attempt.ok:
                return True, attempts, None
            log.info("delivery %s to subscription %s failed (attempt %d): %s",
                     msg_id, sub.id, attempts, attempt.detail or attempt.error)
            deadline = since + settings.retry_period_s
            if not attempt.retryable or time.time() >= deadline:
                return False, attempts, attempt.error
            if record:
                await self._storage(self._store.batch_failed, sub.id, attempts, attempt.error)
            ceiling = min(settings.backoff_max_s, settings.backoff_base_s * 2 ** (attempts - 1))
            delay = random.uniform(0.0, ceiling)  # full jitter
            if attempt.retry_after_s is not None:
                delay = max(delay, min(attempt.retry_after_s, settings.backoff_max_s))
            await asyncio.sleep(max(0.0, min(delay, deadline - time.time())))
