"""The exceptions the client raises or hands to ``on_error``; all derive from :class:`NudgeError`."""
from __future__ import annotations

from typing import Any


class NudgeError(Exception):
    """Anything that went wrong talking to nudge."""


class ApiError(NudgeError):
    """The server refused a request: its HTTP status, error ``code`` and ``details`` (one per field at fault).

    ``details`` of a refused event batch are ``{"index", "field", "reason"}``; when the error reaches ``on_error``
    the indexes point into the events handed over with it.
    """

    def __init__(self, status: int, code: str, message: str, details: list[dict[str, Any]] | None = None,
                 request_id: str | None = None, retry_after_s: float | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
        self.request_id = request_id
        self.retry_after_s = retry_after_s


class Unreachable(NudgeError):
    """No HTTP answer: the connection failed or timed out (the httpx exception is the ``__cause__``)."""


class QueueFull(NudgeError):
    """``track`` under ``on_overflow="raise"`` found the queue full; the event was not queued."""


class ClientClosed(NudgeError):
    """The client was closed (or its sender stopped on an unexpected error) and takes no more events."""


class SpoolLocked(NudgeError):
    """Another live client holds this spool directory."""


class WebhookVerificationError(NudgeError):
    """A webhook delivery is not genuine or not fresh; the message says which check failed."""
