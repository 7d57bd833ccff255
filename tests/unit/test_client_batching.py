"""nudge_client's queue: batches by count and by age, the overflow policies, and counters that account for every
event (nothing is dropped without ``stats.dropped`` saying so)."""
import threading
import time

import httpx
import msgpack
import pytest

from nudge_client import Client, QueueFull
from nudge_client.batching import Pipeline
from nudge_client.delivery import Delivery
from nudge_client.retry import RetryPolicy


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def event(n):
    return {"user_id": f"u{n}", "action": "view", "ts": 1.0, "event_id": f"e{n}"}


def pipeline(batch_size=3, interval=0.5, max_queue=1000, policy="drop_oldest"):
    clock = Clock()
    return Pipeline(batch_size, interval, max_queue, policy, clock=clock), clock


def ids(batch):
    return [e["event_id"] for e in batch.events]


def settle_all(p, batch):
    delivery = Delivery(batch.events, RetryPolicy())
    delivery.answered(200, {"content-type": "application/msgpack"},
                      msgpack.packb({"accepted": len(batch.events), "duplicates": 0}))
    assert p.settle(batch, delivery)


def test_a_batch_is_due_once_it_is_full():
    p, _ = pipeline(batch_size=3)
    p.add(event(0))
    p.add(event(1))
    assert not p.due()
    p.add(event(2))
    assert p.due()
    assert ids(p.take()) == ["e0", "e1", "e2"]
    assert not p.due()


def test_a_batch_is_due_once_its_oldest_event_has_waited_the_interval():
    p, clock = pipeline(batch_size=100, interval=0.5)
    assert p.seconds_until_due() is None
    p.add(event(0))
    clock.now += 0.3
    p.add(event(1))
    assert not p.due() and p.seconds_until_due() == pytest.approx(0.2)
    clock.now += 0.2
    assert p.due() and p.seconds_until_due() == 0.0
    assert ids(p.take()) == ["e0", "e1"]


def test_add_wakes_the_sender_for_the_first_event_and_for_a_full_batch():
    p, _ = pipeline(batch_size=3)
    assert p.add(event(0)) is True  # starts the interval's clock: a sender waiting without a deadline must know
    assert p.add(event(1)) is False
    assert p.add(event(2)) is True  # full


def test_flush_makes_what_is_queued_due_and_waits_for_it_to_settle():
    p, _ = pipeline(batch_size=100)
    for n in range(3):
        p.add(event(n))
    target = p.flush_target()
    assert p.due() and not p.flushed(target)
    batch = p.take()
    p.add(event(3))  # came after the flush: not waited for
    assert not p.flushed(target)
    settle_all(p, batch)
    assert p.flushed(target)
    assert p.stats.sent == 3 and p.stats.pending == 1


def test_drop_oldest_drops_the_oldest_queued_event_and_counts_it():
    p, _ = pipeline(batch_size=2, max_queue=4, policy="drop_oldest")
    for n in range(6):
        p.add(event(n))
    assert [e["event_id"] for _, _, e in p.queue] == ["e2", "e3", "e4", "e5"]
    assert p.stats.enqueued == 6 and p.stats.dropped == 2 and p.stats.pending == 4


def test_drop_oldest_never_breaks_a_batch_already_cut():
    p, _ = pipeline(batch_size=2, max_queue=2, policy="drop_oldest")
    p.add(event(0))
    p.add(event(1))
    batch = p.take()  # on its way
    p.add(event(2))  # nothing queued to drop: the new event goes
    assert ids(batch) == ["e0", "e1"] and not p.queue
    assert p.stats.dropped == 1 and p.stats.pending == 2


def test_drop_newest_drops_the_new_event_and_counts_it():
    p, _ = pipeline(batch_size=2, max_queue=3, policy="drop_newest")
    for n in range(5):
        p.add(event(n))
    assert [e["event_id"] for _, _, e in p.queue] == ["e0", "e1", "e2"]
    assert p.stats.enqueued == 5 and p.stats.dropped == 2 and p.stats.pending == 3


def test_raise_refuses_the_event_and_queues_nothing():
    p, _ = pipeline(batch_size=2, max_queue=2, policy="raise")
    p.add(event(0))
    p.add(event(1))
    with pytest.raises(QueueFull):
        p.add(event(2))
    assert p.stats.enqueued == 2 and p.stats.dropped == 0 and p.stats.pending == 2


def test_settled_events_make_room_again():
    p, _ = pipeline(batch_size=2, max_queue=2, policy="raise")
    p.add(event(0))
    p.add(event(1))
    assert not p.has_room
    settle_all(p, p.take())
    assert p.has_room
    p.add(event(2))


def test_unsent_events_at_close_without_a_spool_are_counted_as_dropped():
    p, _ = pipeline(batch_size=2)
    for n in range(3):
        p.add(event(n))
    for batch in p.take_all():
        p.drop_unsent(batch)
    assert p.stats.dropped == 3 and p.stats.pending == 0


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        Pipeline(10, 0.5, 100, "drop_everything")
    with pytest.raises(ValueError):
        Pipeline(200, 0.5, 100, "block")


# ---- the client around it, with a transport in memory ----------------------------------------------------------

class Recorder:
    """An in-memory nudge that stores event batches, optionally slowly (to hold the sender)."""

    def __init__(self, delay_s=0.0):
        self.batches, self.delay_s, self.lock = [], delay_s, threading.Lock()

    def __call__(self, request):
        events = msgpack.unpackb(request.content)["events"]
        time.sleep(self.delay_s)
        with self.lock:
            self.batches.append(events)
        return httpx.Response(200, content=msgpack.packb({"accepted": len(events), "duplicates": 0}),
                              headers={"content-type": "application/msgpack"})

    @property
    def sizes(self):
        with self.lock:
            return [len(b) for b in self.batches]


def wait_until(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_client_sends_full_batches_at_once():
    recorder = Recorder()
    with Client("http://nudge.test", "k", batch_size=50, flush_interval_s=60, transport=httpx.MockTransport(recorder)) as c:
        for n in range(120):
            c.track(f"u{n}", "view")
        wait_until(lambda: sum(recorder.sizes) == 100)
        assert recorder.sizes == [50, 50]  # the remaining 20 wait for the interval, or close
    assert recorder.sizes == [50, 50, 20]
    assert c.stats.sent == 120 and c.stats.pending == 0


def test_client_sends_a_lone_event_once_the_interval_has_passed():
    recorder = Recorder()
    with Client("http://nudge.test", "k", flush_interval_s=0.2, transport=httpx.MockTransport(recorder)) as c:
        time.sleep(0.3)  # a sender that has been idle for a while
        started = time.monotonic()
        c.track("u1", "view")
        wait_until(lambda: recorder.sizes == [1], timeout=3.0)  # no flush, no close: the interval alone
        assert 0.15 <= time.monotonic() - started < 2.0
        assert c.stats.sent == 1


def test_client_overflow_drop_newest_counts_every_drop():
    recorder = Recorder(delay_s=0.3)
    with Client("http://nudge.test", "k", batch_size=5, max_queue=10, on_overflow="drop_newest",
                transport=httpx.MockTransport(recorder)) as c:
        for n in range(40):
            c.track(f"u{n}", "view")
        assert c.flush(timeout=10)
    stats = c.stats
    assert stats.enqueued == 40 and stats.dropped == 30 and stats.sent == 10 and stats.pending == 0
    assert sum(recorder.sizes) == stats.sent


def test_client_overflow_drop_oldest_keeps_the_newest():
    recorder = Recorder(delay_s=0.3)
    with Client("http://nudge.test", "k", batch_size=5, max_queue=10, transport=httpx.MockTransport(recorder)) as c:
        for n in range(40):
            c.track(f"u{n}", "view")
        assert c.flush(timeout=10)
    stats = c.stats
    assert stats.sent + stats.dropped == 40 and stats.dropped >= 25
    sent = [e["user_id"] for b in recorder.batches for e in b]
    assert sent[-5:] == [f"u{n}" for n in range(35, 40)]  # the newest survived


def test_client_overflow_raise_and_block():
    recorder = Recorder(delay_s=0.3)
    with Client("http://nudge.test", "k", batch_size=5, max_queue=5, on_overflow="raise",
                transport=httpx.MockTransport(recorder)) as c:
        for n in range(5):
            c.track(f"u{n}", "view")
        with pytest.raises(QueueFull):
            c.track("u5", "view")
    assert c.stats.sent == 5 and c.stats.dropped == 0
    recorder = Recorder(delay_s=0.1)
    with Client("http://nudge.test", "k", batch_size=5, max_queue=5, on_overflow="block",
                transport=httpx.MockTransport(recorder)) as c:
        for n in range(20):
            c.track(f"u{n}", "view")  # waits for room: nothing is dropped
        assert c.flush(timeout=10)
    assert c.stats.sent == 20 and c.stats.dropped == 0 and sum(recorder.sizes) == 20


def test_close_without_a_spool_counts_what_it_could_not_send_as_dropped():
    def down(request):
        raise httpx.ConnectError("refused", request=request)

    c = Client("http://nudge.test", "k", retry=RetryPolicy(base_s=0.01, max_s=0.02, max_retries=None),
               transport=httpx.MockTransport(down))
    for n in range(7):
        c.track(f"u{n}", "view")
    assert not c.flush(timeout=0.3)
    c.close(timeout=0.2)
    assert c.stats.dropped == 7 and c.stats.pending == 0 and c.stats.retries > 0
