"""One worker thread shared fairly: calls queue in lanes (one per tenant), and the thread takes one call from each
lane with work in turn, in order within a lane.

Every tenant's engine runs on the one device thread (a GPU is driven from one thread). With a single queue, a
tenant that floods ingest puts seconds of engine updates ahead of every other tenant's scores; with a lane each,
another tenant's score waits for at most one call of each busy lane. A tenant's own calls keep their order, so a
score asked after an acknowledged ingest still sees its events (read-your-writes).

Calls submitted as joinable run together: once the thread takes one, it takes with it the joinable calls of the
same function and key that follow it at the head of its lane, up to a weight (smaller while other lanes are active),
and runs the function once on all their items. An engine update has a fixed cost, whatever its size, and a backlog is
where updates queue up.
"""
from __future__ import annotations

import collections
import concurrent.futures
import threading
import time
from typing import Any, Callable, Hashable

_BARRIER = object()  # the lane of barrier no-ops


def _nothing() -> None:
    return None


class FairThread:
    """A single worker thread with round-robin lanes."""

    def __init__(self, name: str, join_weight: int = 8000, shared_join_weight: int = 500, active_s: float = 1.0):
        self.join_weight, self.shared_join_weight, self.active_s = join_weight, shared_join_weight, active_s
        self._lanes: dict[Hashable, collections.deque] = {}
        self._submitted: dict[Hashable, float] = {}  # lane -> when it last had a call submitted
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
            self._submitted[lane] = time.monotonic()
            self._cond.notify()
        return future

    def submit_joinable(self, lane: Hashable, fn: Callable[[list], list], item: Any, key: Any = None,
                        weight: int = 1) -> concurrent.futures.Future:
        """Run ``fn([item, ...])``, which returns one result per item, after the calls queued before it in ``lane``:
        with the joinable calls of the same ``fn`` and an equal ``key`` queued right behind it, up to a weight in
        all."""
        return self.submit(lane, _Joinable(fn, key, weight), item)

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
                calls = [queue.popleft()]
                if isinstance(calls[0][1], _Joinable) and queue:
                    self._join(lane, calls, queue)
                if queue:
                    self._turns.append(lane)  # its next call waits for the other lanes' turns
                else:
                    del self._lanes[lane]
            calls = [call for call in calls if call[0].set_running_or_notify_cancel()]
            if not calls:
                continue
            if isinstance(calls[0][1], _Joinable):
                self._run_joined(calls)
                continue
            future, fn, args = calls[0]
            try:
                result = fn(*args)
            except BaseException as exc:  # the thread outlives any call
                future.set_exception(exc)
            else:
                future.set_result(result)

    def _others_active(self, lane: Hashable) -> bool:
        """Whether another lane waits, or had a call submitted within ``active_s`` (under the lock)."""
        if self._turns:
            return True
        since = time.monotonic() - self.active_s
        for other, at in list(self._submitted.items()):
            if at < since:
                del self._submitted[other]
            elif other != lane:
                return True
        return False

    def _join(self, lane: Hashable, calls: list, queue: collections.deque) -> None:
        """Take the joinable calls like ``calls[0]`` from the head of its lane's ``queue`` (under the lock): up to
        the smaller weight while other lanes are active, since their next call waits for this one."""
        first: _Joinable = calls[0][1]
        limit = self.shared_join_weight if self._others_active(lane) else self.join_weight
        weight = first.weight
        while queue:
            fn = queue[0][1]
            if not (isinstance(fn, _Joinable) and fn.fn == first.fn and fn.key == first.key
                    and weight + fn.weight <= limit):
                break
            weight += fn.weight
            calls.append(queue.popleft())

    @staticmethod
    def _run_joined(calls: list) -> None:
        try:
            results = calls[0][1].fn([args[0] for _, _, args in calls])
            if len(results) != len(calls):
                raise RuntimeError(f"a joined call returned {len(results)} results for {len(calls)} items")
        except BaseException as exc:  # the thread outlives any call
            for future, _, _ in calls:
                future.set_exception(exc)
            return
        for (future, _, _), result in zip(calls, results):
            future.set_result(result)


class _Joinable:
    """A call that may run joined with the like calls behind it (see :meth:`FairThread.submit_joinable`)."""

    __slots__ = ("fn", "key", "weight")

    def __init__(self, fn: Callable[[list], list], key: Any, weight: int):
        self.fn, self.key, self.weight = fn, key, weight


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
