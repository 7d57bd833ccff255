"""Workers in processes of their own (``workers`` ≥ 1): the engines leave the server's GIL.

Each worker process owns the tenants whose id falls to it (``tenant_id % workers``) and runs a :class:`Runner` (the
worker and its log reader) on one thread, each tenant in a lane of its own, as :class:`core.ThreadHost` does in the
server. Commands go to it pickled over a pipe; replies come back in the order they were made, and a reader thread
here hands what they decided to the signal writer in that order before it completes their futures.

A worker process that dies is started again at once. Its commands in flight fail with :class:`WorkerLost`, and
``on_restart`` is told which tenants it owned: each is recovered from its snapshot and the log, which holds every
acknowledged event, so a restart loses nothing acknowledged.
"""
from __future__ import annotations

import concurrent.futures
import itertools
import logging
import multiprocessing
import os
import pickle
import queue
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from threadpoolctl import threadpool_limits

from core import Outcome, Worker
from core.fair_thread import FairThread, all_done
from core.host import Sink, join_key
from core import commands as c

from . import gc_tuning
from .config import usable_cores
from .worker_runner import Close, Recover, Runner

log = logging.getLogger(__name__)

_BARRIER = "barrier"  # the command that replies once everything sent before it has run


class WorkerLost(Exception):
    """The worker process ended before it replied; its tenants are recovered from the log."""


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """The math libraries' threads in each worker process: the cores left beside the server's own process, shared
    by the workers; at least one."""
    return max(1, ((usable_cores() if cores is None else cores) - 1) // workers)


def limit_threads(threads: int) -> None:
    """Hold this process's BLAS, OpenMP and torch thread pools to ``threads``.

    By default each pool takes every core. On two cores, NumPy's BLAS doubled the CPU time of an 8,000-event
    engine update (21.9 against 11.1 µs per event), spinning where the server's process or another worker would
    have run.
    """
    threadpool_limits(threads)  # the pools already loaded (NumPy's BLAS)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # those loaded later read it
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def _serve(conn, data_dir: str, backend: str, threads: int) -> None:
    """A worker process: commands in, replies out, until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server stops its workers; a terminal's Ctrl-C reaches both
    limit_threads(threads)
    gc_tuning.tune()  # the engines' many long-lived objects, as in the server (see gc_tuning)
    runner = Runner(Worker(backend), Path(data_dir))
    thread = FairThread("nudge-worker")
    sending = threading.Lock()

    def send(message) -> None:
        with sending:
            conn.send(message)

    def run(request: int, command: Any) -> None:
        try:
            reply = runner.handle(command)
        except BaseException as exc:  # the worker outlives any command; the sender gets the error
            send((request, None, _portable(exc)))
            return
        if isinstance(reply.result, concurrent.futures.Future):  # finished off the worker's thread: reply then
            reply.result.add_done_callback(lambda done: send(
                (request, None, _portable(done.exception())) if done.exception() is not None
                else (request, c.Reply(done.result(), reply.decisions, reply.resolutions), None)))
            return
        send((request, reply, None))
        if isinstance(command, Recover):
            gc_tuning.freeze()  # what a recovery built lives as long as the tenant: no collection walks it

    def apply_joined(items: list[tuple[int, c.Apply]]) -> list[None]:
        """Engine updates queued together, run as one (:meth:`Worker.apply_joined`), a reply to each."""
        try:
            replies = runner.apply_joined([command for _, command in items])
        except BaseException as exc:  # the worker outlives any command; the senders get the error
            for request, _ in items:
                send((request, None, _portable(exc)))
        else:
            for (request, _), reply in zip(items, replies):
                send((request, reply, None))
        return [None] * len(items)

    while True:
        try:
            request, command = conn.recv()
        except (EOFError, OSError):
            break
        if command == _BARRIER:
            thread.barrier().add_done_callback(lambda _, r=request: send((r, c.Reply(), None)))
        elif isinstance(command, Close):  # the last command: once what came before has run, the process ends
            thread.barrier().result()
            run(request, command)
            break
        elif isinstance(command, c.Apply):
            thread.submit_joinable(command.tenant_id, apply_joined, (request, command), join_key(command),
                                   len(command.batch))
        else:
            thread.submit(command.tenant_id, run, request, command)
    thread.shutdown(wait=True)
    conn.close()


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a RuntimeError that says what it was."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _settle(future: concurrent.futures.Future, result: Any = None, exc: BaseException | None = None) -> None:
    """Complete ``future``, unless its caller cancelled it (it stopped waiting; the command ran all the same)."""
    try:
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)
    except concurrent.futures.InvalidStateError:
        pass


class _Child:
    """One worker process, its pipe, and the requests waiting for its replies."""

    def __init__(self, index: int, data_dir: Path, backend: str, threads: int):
        self.index = index
        ctx = multiprocessing.get_context("spawn")  # nothing of the server's threads or sockets is inherited
        self.conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child_conn, str(data_dir), backend, threads),
                                   name=f"nudge-worker-{index}", daemon=True)
        self.process.start()
        child_conn.close()
        self.pending: dict[int, tuple[concurrent.futures.Future, int]] = {}
        self.lock = threading.Lock()  # the pending map against a death
        self.alive = True
        # Sent from a thread of its own: a write into a full pipe waits for the worker to read, and the event loop
        # must not wait with it.
        self.outbox: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._send_all, name=f"nudge-worker-{index}-commands", daemon=True).start()

    def _send_all(self) -> None:
        while (item := self.outbox.get()) is not None:
            try:
                self.conn.send(item)
            except (OSError, ValueError):  # the process died: its reader fails what waits
                return


class ProcessHost:
    """``workers`` worker processes, each owning the tenants whose id falls to it; see the module's docstring.

    Parameters
    ----------
    workers : how many processes.
    data_dir : the server's data dir (each worker reads the log and snapshots there).
    backend : the array backend the engines use.
    sink : takes (tenant_id, decisions, resolutions) of each reply, in order; returns the write's future.
    on_restart : called (on a reader thread) with the index of a worker started again after it died: the tenants
        it owns must be recovered before they serve again.
    """

    def __init__(self, workers: int, data_dir: Path, backend: str, sink: Sink,
                 on_restart: Callable[[int], None] = lambda index: None):
        if workers < 1:
            raise ValueError(f"a process host runs at least one worker, got {workers}")
        self.data_dir, self.backend, self._sink, self._on_restart = Path(data_dir), backend, sink, on_restart
        self._requests = itertools.count()
        self._closing = False
        self._threads = threads_per_worker(workers)
        self._children = [self._start(i) for i in range(workers)]

    @property
    def workers(self) -> int:
        return len(self._children)

    def owner(self, tenant_id: int) -> int:
        """The worker that owns a tenant."""
        return tenant_id % len(self._children)

    def pids(self) -> list[int]:
        return [child.process.pid for child in self._children]

    def _start(self, index: int) -> _Child:
        child = _Child(index, self.data_dir, self.backend, self._threads)
        threading.Thread(target=self._read, args=(child,), name=f"nudge-worker-{index}-replies", daemon=True).start()
        return child

    def send(self, command: Any) -> concurrent.futures.Future:
        """Run ``command`` in the worker owning its tenant, after those sent before it for that tenant; the
        future's result is an :class:`core.Outcome`."""
        return self._send(self._children[self.owner(command.tenant_id)], command, command.tenant_id)

    def _send(self, child: _Child, command: Any, tenant_id: int) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        request = next(self._requests)
        with child.lock:
            if not child.alive:
                future.set_exception(WorkerLost(f"worker {child.index} is restarting"))
                return future
            child.pending[request] = (future, tenant_id)
            child.outbox.put((request, command))
        return future

    def barrier(self) -> concurrent.futures.Future:
        """Done once everything sent before it, to every worker, has run and its reply has been handled."""
        return all_done([self._send(child, _BARRIER, -1) for child in self._children])

    def _read(self, child: _Child) -> None:
        """Replies, in the order the worker made them: what they decided goes to the sink first."""
        while True:
            try:
                request, reply, exc = child.conn.recv()
            except (EOFError, OSError):
                break
            with child.lock:
                waiting = child.pending.pop(request, None)
            if waiting is None:
                continue  # the last command of a shutdown: nobody waits for it
            future, tenant_id = waiting
            if exc is not None:
                _settle(future, exc=exc)
                continue
            written = None  # written even when nobody waits for the reply any more: it was decided
            if reply.decisions or reply.resolutions:
                written = self._sink(tenant_id, reply.decisions, reply.resolutions)
            _settle(future, Outcome(reply.result, written))
        with child.lock:
            child.alive = False
            lost, child.pending = child.pending, {}
        for future, _ in lost.values():
            _settle(future, exc=WorkerLost(f"worker {child.index} ended"))
        if self._closing:
            return
        child.process.join(1.0)
        log.error("worker %d ended (exit code %s); starting it again and recovering its tenants from the log",
                  child.index, child.process.exitcode)
        self._children[child.index] = self._start(child.index)
        self._on_restart(child.index)

    def kill(self, index: int) -> None:
        """SIGKILL a worker process (for tests): it is started again, and its tenants recovered."""
        self._children[index].process.kill()

    def shutdown(self, wait: bool = True) -> None:
        """Run what was sent, then stop the workers (each ends after its :class:`Close`)."""
        self._closing = True
        for child in self._children:
            self._send(child, Close(), -1)
            child.outbox.put(None)
        for child in self._children:
            child.process.join(30.0 if wait else 0.0)
            if child.process.is_alive():
                child.process.kill()
                child.process.join(5.0)
