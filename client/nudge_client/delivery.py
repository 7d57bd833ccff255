"""Delivering one batch of events, without I/O: which request to send next and what each answer means.

The sync and the async client share this; each runs the same small loop around it::

    while (events := delivery.request()) is not None:
        answer = post(events)                        # or delivery.unreachable(exc) when there is none
        wait = delivery.answered(status, headers, body)
        sleep(wait)
"""
from __future__ import annotations

import logging
import random
from typing import Any, Callable, Mapping

from .errors import ApiError, NudgeError, Unreachable
from .retry import RetryPolicy, retryable
from .wire import api_error, unpack

log = logging.getLogger("nudge_client")

ErrorHandler = Callable[[NudgeError, list[dict[str, Any]]], None]


class Delivery:
    """One batch on its way. A batch may go out in several requests: a 413 splits it in halves, and a
    400 ``invalid_event`` fails the events it names and sends the others again (the server refuses a
    batch whole for one bad event; the client made the batch, so one bad ``track`` must not sink the others).

    Afterwards: ``accepted`` and ``duplicates`` as the server counted them, ``failures`` (error, events) for
    what failed, ``retries``, and ``remaining()`` for what was not settled (when the client gave up waiting).
    """

    def __init__(self, events: list[dict[str, Any]], policy: RetryPolicy, rng: random.Random | None = None):
        self.parts = [events] if events else []
        self.policy = policy
        self.rng = rng
        self.attempt = 0  # retries of the current part
        self.accepted = 0
        self.duplicates = 0
        self.retries = 0
        self.failures: list[tuple[NudgeError, list[dict[str, Any]]]] = []

    def request(self) -> list[dict[str, Any]] | None:
        """The events to POST now; None once every event is settled."""
        return self.parts[0] if self.parts else None

    def remaining(self) -> list[dict[str, Any]]:
        return [e for part in self.parts for e in part]

    def answered(self, status: int, headers: Mapping[str, str], content: bytes) -> float:
        """Take the answer to ``request()``; returns the seconds to wait before the next request."""
        part = self.parts[0]
        if 200 <= status < 300:
            body = unpack(headers.get("content-type"), content)
            body = body if isinstance(body, dict) else {}
            self.accepted += int(body.get("accepted", len(part)))
            self.duplicates += int(body.get("duplicates", 0))
            self._next_part()
            return 0.0
        error = api_error(status, headers, content)
        # 409 config_changed: the tenant's config changed while the batch was in flight and nothing was stored;
        # sent again, it is validated against the new config (and any event that no longer fits is refused alone).
        if retryable(status) or (status == 409 and error.code == "config_changed"):
            return self._retry(error)
        if status == 413 and len(part) > 1:
            half = len(part) // 2
            self.parts[:1] = [part[:half], part[half:]]
            return 0.0
        bad = sorted({d["index"] for d in error.details if isinstance(d.get("index"), int) and 0 <= d["index"] < len(part)})
        if error.code == "invalid_event" and 0 < len(bad) < len(part):
            position = {index: n for n, index in enumerate(bad)}
            details = [{**d, "index": position[d["index"]]} for d in error.details if d.get("index") in position]
            refused = ApiError(error.status, error.code, f"{len(bad)} of {len(part)} events are invalid; the others "
                               "were sent again", details, error.request_id)
            self.failures.append((refused, [part[i] for i in bad]))
            self.parts[0] = [e for i, e in enumerate(part) if i not in position]
            return 0.0
        self._fail(error)
        return 0.0

    def unreachable(self, exc: Exception) -> float:
        """No answer came (connection refused or reset, timeout): the request may or may not have been stored,
        and sending it again is safe because every event carries its ``event_id``."""
        error = Unreachable(f"no answer from nudge: {exc!r}")
        error.__cause__ = exc
        return self._retry(error)

    def _retry(self, error: NudgeError) -> float:
        limit = self.policy.max_retries
        if limit is not None and self.attempt >= limit:
            self._fail(error)
            return 0.0
        wait = self.policy.delay(self.attempt, getattr(error, "retry_after_s", None), self.rng)
        self.attempt += 1
        self.retries += 1
        return wait

    def _fail(self, error: NudgeError) -> None:
        self.failures.append((error, self.parts[0]))
        self._next_part()

    def _next_part(self) -> None:
        self.parts.pop(0)
        self.attempt = 0


def report(error: NudgeError, events: list[dict[str, Any]], on_error: ErrorHandler | None) -> None:
    """Tell of events that failed: in the log, and to the client's ``on_error`` (whose own errors are logged)."""
    log.warning("%d events failed: %s", len(events), error)
    if on_error is not None:
        try:
            on_error(error, events)
        except Exception:
            log.exception("the on_error callback raised")
