"""The device thread's lanes: calls run in order within a lane, lanes take turns, a barrier waits for all."""
import threading

import pytest

from core.fair_thread import FairThread


@pytest.fixture
def fair():
    thread = FairThread("test-fair")
    yield thread
    thread.shutdown()


def _hold(fair):
    """Occupies the thread until the returned event is set, so the calls submitted meanwhile queue up."""
    release, started = threading.Event(), threading.Event()
    fair.submit("hold", lambda: (started.set(), release.wait(10)))
    assert started.wait(10)
    return release


def test_lanes_take_turns_and_keep_their_own_order(fair):
    release = _hold(fair)
    ran = []
    futures = [fair.submit("flood", ran.append, f"a{i}") for i in range(5)]
    futures += [fair.submit("quiet", ran.append, "b0"), fair.submit("quiet", ran.append, "b1")]
    release.set()
    for f in futures:
        f.result(10)
    # The quiet lane's first call waits for one call of the flooding lane, not for all five.
    assert ran == ["a0", "b0", "a1", "b1", "a2", "a3", "a4"]


def test_a_barrier_waits_for_every_call_submitted_before_it(fair):
    release = _hold(fair)
    ran = []
    for i in range(3):
        fair.submit(i, ran.append, i)
    barrier = fair.barrier()
    assert not barrier.done()
    release.set()
    barrier.result(10)
    assert sorted(ran) == [0, 1, 2]


def test_a_failing_call_fails_its_future_only_and_the_executor_view_works(fair):
    failed = fair.submit("x", lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failed.result(10)
    assert fair.executor("y").submit(lambda a, b=0: a + b, 2, b=3).result(10) == 5
    assert threading.current_thread().name != fair.submit("z", lambda: threading.current_thread().name).result(10)


def test_shutdown_runs_what_is_queued_then_refuses(fair):
    release = _hold(fair)
    queued = fair.submit("q", lambda: "done")
    release.set()
    fair.shutdown()
    assert queued.result(10) == "done"
    with pytest.raises(RuntimeError):
        fair.submit("q", lambda: None)
