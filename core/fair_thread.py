"""One worker thread shared fairly: calls queue in lanes (one per tenant), and the thread takes one call from each
lane with work in turn, in order within a lane.

Every tenant's engine runs on the one device thread (a GPU is driven from one thread). With a single queue, a
tenant that floods ingest puts seconds of engine updates ahead of every other tenant's scores; with a lane each,
another tenant's score waits for at most one call of each busy lane. A tenant's own calls keep their order, so a
score asked after an acknowledged ingest still sees its events (read-your-writes).
"""
from __future__ import annotations

import collections
import concurrent.futures
import threading
from typing import Any, Callable, Hashable

_BARRIER = object()  # the lane of barrier no-ops


def _nothing() -> None:
    return None


class FairThread:
    """A single worker thread with round-robin lanes."""

    def __init__(self, name: str):
        self._lanes: dict[Hashable, collections.deque] = {}
        self._turns: collections.deque = collections.deque()  # lanes with queued calls, in turn order
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, lane: Hashable, fn: Callable, *args: Any) -> concurrent.futures.Future:
        """Run ``fn(*args)`` after the calls queued before it in ``lane``."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("cannot schedule new calls after shutdown")
            queue = self._lanes.get(lane)
            if queue is None:
                queue = self._lanes[lane] = collections.deque()
                self._turns.append(lane)
            queue.append((future, fn, args))
            self._cond.notify()
        return future

    def barrier(self) -> concurrent.futures.Future:
        """Done once every call submitted before it, in any lane, has run."""
        with self._cond:
            lanes = [*self._lanes, _BARRIER]  # _BARRIER: also after the call running now
        return all_done([self.submit(lane, _nothing) for lane in lanes])

    def executor(self, lane: Hashable) -> concurrent.futures.Executor:
        """An Executor whose calls go to ``lane`` (for ``loop.run_in_executor``)."""
        return _LaneExecutor(self, lane)

    def shutdown(self, wait: bool = True) -> None:
        """Run what is queued, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if wait:
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._turns and not self._closed:
                    self._cond.wait()
                if not self._turns:
                    return  # closed, and nothing left
                lane = self._turns.popleft()
                queue = self._lanes[lane]
                future, fn, args = queue.popleft()
                if queue:
                    self._turns.append(lane)  # its next call waits for the other lanes' turns
                else:
                    del self._lanes[lane]
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args)
            except BaseException as exc:  # the thread outlives any call
                future.set_exception(exc)
            else:
                future.set_result(result)


def all_done(futures: list[concurrent.futures.Future]) -> concurrent.futures.Future:
    """A future done (with None) once every one of ``futures`` is done, whatever their outcomes."""
    done: concurrent.futures.Future = concurrent.futures.Future()
    left = [len(futures)]
    lock = threading.Lock()

    def one_done(_: concurrent.futures.Future) -> None:
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            done.set_result(None)

    if not futures:
        done.set_result(None)
    for future in futures:
        future.add_done_callback(one_done)
    return done


class _LaneExecutor(concurrent.futures.Executor):
    def __init__(self, thread: FairThread, lane: Hashable):
        self._thread, self._lane = thread, lane

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        if kwargs:
            return self._thread.submit(self._lane, lambda: fn(*args, **kwargs))
        return self._thread.submit(self._lane, fn, *args)
