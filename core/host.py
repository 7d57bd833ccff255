"""The host: runs a worker and routes commands to it, in order per tenant.

:class:`ThreadHost` runs its worker on one thread, each tenant in a lane of its own (:class:`FairThread`): a tenant's
commands run in the order they were sent, and another tenant's wait for at most one command of each busy lane. The
decisions and resolutions in a command's reply go to the signal writer (``sink``) on that thread, before the next
command runs, so the signal log holds them in the order they were made.
"""
from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass
from typing import Any, Callable, Hashable

from model.signals import Decision, Resolution

from .commands import Apply, Command, Reply
from .fair_thread import FairThread
from .worker import Worker

Sink = Callable[[int, list[Decision], list[Resolution]], "concurrent.futures.Future | None"]


@dataclass(frozen=True)
class Outcome:
    """A command's result, and the write of what it decided: done once durable in the signal log (None: nothing)."""

    result: Any
    written: concurrent.futures.Future | None = None


def join_key(command: Apply) -> tuple:
    """Engine updates run joined only with those of the same kind (live or a replay) under the same config."""
    return command.live, command.config


class ThreadHost:
    """A worker on a thread of its own; see the module's docstring."""

    def __init__(self, worker: Worker, sink: Sink, name: str = "nudge-device"):
        self.worker = worker
        self._sink = sink
        self._thread = FairThread(name)

    def send(self, command: Command) -> concurrent.futures.Future:
        """Run ``command`` after those sent before it for its tenant; the future's result is an :class:`Outcome`.
        Engine updates queued together run as one (:meth:`Worker.apply_joined`)."""
        if isinstance(command, Apply):
            return self._thread.submit_joinable(command.tenant_id, self._apply_joined, command,
                                                join_key(command), len(command.batch))
        return self._thread.submit(command.tenant_id, self.handle, command)

    def handle(self, command: Command) -> Outcome:
        """Run ``command`` now: on the worker's thread only (in a call, or a batch from :meth:`executor`)."""
        return self._outcome(command.tenant_id, self.worker.handle(command))

    def _apply_joined(self, commands: list[Apply]) -> list[Outcome]:
        return [self._outcome(cmd.tenant_id, reply) for cmd, reply in zip(commands, self.worker.apply_joined(commands))]

    def _outcome(self, tenant_id: int, reply: Reply) -> Outcome:
        written = None
        if reply.decisions or reply.resolutions:
            written = self._sink(tenant_id, reply.decisions, reply.resolutions)
        return Outcome(reply.result, written)

    def call(self, lane: Hashable, fn: Callable, *args: Any) -> concurrent.futures.Future:
        """``fn(*args)`` on the worker's thread, in ``lane``: a host step that reads storage between commands (a
        replay, a swap) and must not let the lane's other commands in between."""
        return self._thread.submit(lane, fn, *args)

    def barrier(self) -> concurrent.futures.Future:
        """Done once everything sent before it, for any tenant, has run."""
        return self._thread.barrier()

    def shutdown(self, wait: bool = True) -> None:
        """Run what was sent, then stop."""
        self._thread.shutdown(wait)
