"""What the sync and the async client share: their settings and state, and the sender's bookkeeping that does no
I/O. Each client adds its own way to wait (a thread and ``threading.Condition``, or a task and
``asyncio.Condition``) and its own HTTP client."""
from __future__ import annotations

from os import PathLike

from .batching import Pipeline
from .delivery import ErrorHandler
from .errors import NudgeError
from .retry import RetryPolicy
from .spool import Spool


class ClientBase:
    def __init__(self, *, batch_size: int, flush_interval_s: float, max_queue: int, on_overflow: str,
                 spool_dir: str | PathLike | None, retry: RetryPolicy | None, timeout_s: float,
                 on_error: ErrorHandler | None):
        self._pipeline = Pipeline(batch_size, flush_interval_s, max_queue, on_overflow)
        self._retry = retry or RetryPolicy(max_retries=None if spool_dir is not None else 10)
        self._timeout_s = timeout_s
        self._on_error = on_error
        self.last_error: NudgeError | None = None
        self._spool = Spool(spool_dir) if spool_dir is not None else None
        if self._spool is not None:
            self._pipeline.restore(self._spool.pending())
        self._closed = False  # track() refuses events
        self._abort = False  # the sender stops at its next step
        self._sender_done = False
        self._close_called = False
