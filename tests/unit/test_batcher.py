import asyncio
import concurrent.futures

import pytest

from server.batcher import MicroBatcher, Overloaded


@pytest.fixture
def executor():
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        yield pool


def make(executor, fn, **limits):
    """A batcher whose batches run ``fn`` on a thread of its own, as the server's run on the worker's."""
    sizes = []
    options = {"max_batch_size": 8, "max_wait_ms": 20.0, "max_queue_items": 1000, **limits}

    async def run_batch(items):
        return await asyncio.get_running_loop().run_in_executor(executor, fn, items)

    return MicroBatcher(run_batch, on_batch=sizes.append, **options), sizes


async def test_batcher_returns_each_request_its_own_results_in_order(executor):
    batcher, sizes = make(executor, lambda items: [x * 10 for x in items])
    requests = [[i, i + 100] if i % 2 else [i] for i in range(12)]
    results = await asyncio.gather(*(batcher.submit(r) for r in requests))
    assert results == [[x * 10 for x in r] for r in requests]
    assert sum(sizes) == 18 and max(sizes) <= 8 and len(sizes) < 12
    await batcher.stop()


async def test_batcher_closes_a_batch_after_max_wait(executor):
    batcher, sizes = make(executor, lambda items: items, max_batch_size=1000, max_wait_ms=5.0)
    assert await asyncio.wait_for(batcher.submit([1]), 1.0) == [1]
    assert sizes == [1]
    await batcher.stop()


async def test_batcher_failure_reaches_only_the_bad_request(executor):
    def fn(items):
        if "bad" in items:
            raise ValueError("bad item")
        return items

    batcher, _ = make(executor, fn)
    results = await asyncio.gather(batcher.submit(["a"]), batcher.submit(["bad"]), batcher.submit(["c"]), return_exceptions=True)
    assert results[0] == ["a"] and results[2] == ["c"]
    assert isinstance(results[1], ValueError)
    await batcher.stop()


async def test_batcher_sheds_load_when_the_queue_is_full(executor):
    gate = asyncio.Event()
    loop = asyncio.get_running_loop()

    def slow(items):
        asyncio.run_coroutine_threadsafe(gate.wait(), loop).result()
        return items

    batcher, _ = make(executor, slow, max_batch_size=2, max_wait_ms=0.0, max_queue_items=4)
    first = asyncio.ensure_future(batcher.submit([1, 2]))
    await asyncio.sleep(0.05)  # the first batch is running and blocked
    waiting = [asyncio.ensure_future(batcher.submit([i])) for i in range(4)]
    await asyncio.sleep(0)
    with pytest.raises(Overloaded):
        await batcher.submit([99])
    gate.set()
    assert await first == [1, 2]
    assert [await w for w in waiting] == [[0], [1], [2], [3]]
    await batcher.stop()


async def test_batcher_sheds_work_that_would_wait_longer_than_max_queue_delay(executor):
    import time

    def slow(items):  # 2 ms per item: 500 items/s
        time.sleep(0.002 * len(items))
        return items

    batcher, _ = make(executor, slow, max_batch_size=40, max_wait_ms=1.0, max_queue_delay_ms=50.0)
    for _ in range(4):  # warm-up batches, then the rate is known
        await batcher.submit(list(range(40)))
    assert 300 < batcher.items_per_s < 600
    outcomes = await asyncio.gather(*(batcher.submit(list(range(10))) for _ in range(30)), return_exceptions=True)
    shed = [o for o in outcomes if isinstance(o, Overloaded)]
    served = [o for o in outcomes if isinstance(o, list)]
    # 50 ms at 500 items/s is 25 items: beyond what fits in that, requests are refused instead of queued.
    assert shed and served and len(served) * 10 <= 25 + 40
    assert all(o.retry_after_s > 0 for o in shed)
    await batcher.stop()


def test_loop_lag_sheds_after_two_late_ticks_and_until_the_lag_has_fallen():
    from server.overload import LoopLag

    lag = LoopLag(max_lag_ms=20.0)
    lag._update(80.0)
    assert not lag.overloaded  # one late tick: a GC pause, not an overload
    lag._update(60.0)
    assert lag.overloaded
    lag._update(0.0)
    assert lag.overloaded  # still draining the backlog
    for _ in range(12):
        lag._update(0.0)
    assert not lag.overloaded
    assert not LoopLag(max_lag_ms=0.0).overloaded


async def test_a_request_at_a_trickle_goes_alone_and_a_busy_stream_is_batched(executor):
    batcher, sizes = make(executor, lambda items: items, max_batch_size=1000, max_wait_ms=300.0)
    # Requests 400 ms apart: each goes at once, as waiting up to 300 ms for company would buy nothing; so the
    # last one, which comes only 100 ms after the one before, finds it gone (waiting would have joined them).
    trickle = []
    for pause in (0.4, 0.4, 0.1, 0.0):
        trickle.append(asyncio.ensure_future(batcher.submit([len(trickle)])))
        await asyncio.sleep(pause)
    assert [r[0] for r in await asyncio.gather(*trickle)] == [0, 1, 2, 3]
    assert sizes == [1, 1, 1, 1]
    # Now requests come much closer than the wait: they are batched together.
    burst = [asyncio.ensure_future(batcher.submit([i])) for i in range(20)]
    assert [r[0] for r in await asyncio.gather(*burst)] == list(range(20))
    assert sum(sizes[4:]) == 20 and len(sizes[4:]) < 20
    await batcher.stop()


async def test_with_two_in_flight_the_next_batch_is_sent_while_one_runs():
    started, gates = [], [asyncio.Event(), asyncio.Event()]

    async def run_batch(items):
        started.append(list(items))
        await gates[len(started) - 1].wait()
        return items

    for in_flight, expect_started in ((1, 1), (2, 2)):
        started.clear()
        for gate in gates:
            gate.clear()
        batcher = MicroBatcher(run_batch, max_batch_size=2, max_wait_ms=0.0, max_queue_items=100,
                               max_in_flight=in_flight)
        first = asyncio.ensure_future(batcher.submit([1, 2]))
        second = asyncio.ensure_future(batcher.submit([3]))
        await asyncio.sleep(0.05)
        assert len(started) == expect_started  # the first batch is blocked: only a pipeline sends the second
        gates[1].set()
        if in_flight == 2:
            assert await asyncio.wait_for(second, 1.0) == [3]  # answered before the first: each settles its own
            assert not first.done()
        gates[0].set()
        assert await first == [1, 2] and await second == [3]
        await batcher.stop()


async def test_stop_fails_the_requests_of_every_batch_in_flight():
    never = asyncio.Event()

    async def run_batch(items):
        await never.wait()

    batcher = MicroBatcher(run_batch, max_batch_size=1, max_wait_ms=0.0, max_queue_items=100, max_in_flight=2)
    waiting = [asyncio.ensure_future(batcher.submit([i])) for i in range(3)]
    await asyncio.sleep(0.05)
    await batcher.stop()
    outcomes = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(o, RuntimeError) and "shutting down" in str(o) for o in outcomes)


async def test_a_batch_sent_behind_the_running_one_counts_toward_the_delay_bound():
    gate = asyncio.Event()

    async def run_batch(items):
        await gate.wait()
        return items

    batcher = MicroBatcher(run_batch, max_batch_size=2, max_wait_ms=0.0, max_queue_items=100,
                           max_queue_delay_ms=10.0, max_in_flight=2)
    batcher.items_per_s = 100.0  # 10 ms per item
    running = asyncio.ensure_future(batcher.submit([1, 2]))
    await asyncio.sleep(0.02)
    behind = asyncio.ensure_future(batcher.submit([3, 4]))  # sent at once, and waits in the worker's queue
    await asyncio.sleep(0.02)
    queued = asyncio.ensure_future(batcher.submit([5]))
    await asyncio.sleep(0.02)
    assert batcher.queued_items == 1  # only [5] waits here: [3, 4] waits behind [1, 2]
    with pytest.raises(Overloaded):
        batcher.check_delay()  # three items ahead at 100 items/s: 30 ms > 10 ms
    gate.set()
    assert [await running, await behind, await queued] == [[1, 2], [3, 4], [5]]
    batcher.check_delay()  # nothing waits any more
    await batcher.stop()
