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


@pytest.fixture
def fair_now():
    """A FairThread that counts a lane as active only while it has calls queued."""
    thread = FairThread("test-fair-now", active_s=0.0)
    yield thread
    thread.shutdown()


def _joined(log):
    def run(items):
        log.append(list(items))
        return [f"done {item}" for item in items]

    return run


def test_joinable_calls_queued_together_run_as_one_call(fair_now):
    fair = fair_now
    release = _hold(fair)
    log = []
    run = _joined(log)
    futures = [fair.submit_joinable("a", run, i, key="k", weight=10) for i in range(4)]
    release.set()
    assert [f.result(10) for f in futures] == ["done 0", "done 1", "done 2", "done 3"]
    assert log == [[0, 1, 2, 3]]


def test_joining_stops_at_another_key_another_call_or_the_weight(fair_now):
    fair = fair_now
    release = _hold(fair)
    log, ran = [], []
    run = _joined(log)
    futures = [fair.submit_joinable("a", run, 0, key="k"), fair.submit_joinable("a", run, 1, key="other"),
               fair.submit_joinable("a", run, 2, key="other"), fair.submit("a", ran.append, "plain"),
               fair.submit_joinable("a", run, 3, key="other")]
    futures += [fair.submit_joinable("a", run, i, key="w", weight=3000) for i in range(4, 8)]
    release.set()
    for f in futures:
        f.result(10)
    # 8000 in all at most while no other lane waits: 3000 + 3000, then 3000 + 3000.
    assert log == [[0], [1, 2], [3], [4, 5], [6, 7]]
    assert ran == ["plain"]


def test_joining_takes_less_while_other_lanes_wait(fair_now):
    fair = fair_now
    release = _hold(fair)
    log, ran = [], []
    run = _joined(log)
    futures = [fair.submit_joinable("flood", run, i, weight=300) for i in range(4)]
    futures.append(fair.submit("quiet", ran.append, "q"))
    release.set()
    for f in futures:
        f.result(10)
    # While the quiet lane waits, a joined call weighs at most 500: one item of 300, then the quiet call.
    assert log == [[0], [1, 2, 3]]
    assert ran == ["q"]


def test_joining_takes_less_while_another_lane_was_active_lately(fair):
    release = _hold(fair)  # the "hold" lane had a call just now, and so counts as active for a second
    log = []
    run = _joined(log)
    futures = [fair.submit_joinable("flood", run, i, weight=200) for i in range(5)]
    release.set()
    for f in futures:
        f.result(10)
    assert log == [[0, 1], [2, 3], [4]]


def test_a_joined_call_that_fails_fails_each_of_its_items(fair):
    release = _hold(fair)
    log = []

    def fails(items):
        log.append(items)
        return 1 / 0

    def one_result(items):
        return ["one"]

    futures = [fair.submit_joinable("a", fails, i) for i in range(3)]
    wrong = [fair.submit_joinable("b", one_result, i) for i in range(2)]
    release.set()
    for f in futures:
        with pytest.raises(ZeroDivisionError):
            f.result(10)
    for f in wrong:
        with pytest.raises(RuntimeError, match="1 results for 2 items"):
            f.result(10)
    assert log == [[0, 1, 2]]
    assert fair.submit("a", lambda: "still running").result(10) == "still running"


def test_a_cancelled_joinable_call_is_left_out(fair):
    release = _hold(fair)
    log = []
    run = _joined(log)
    futures = [fair.submit_joinable("a", run, i) for i in range(3)]
    assert futures[1].cancel()
    release.set()
    assert futures[0].result(10) == "done 0" and futures[2].result(10) == "done 2"
    assert log == [[0, 2]]
