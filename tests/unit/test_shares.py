"""Each tenant's share of the ingest backlogs: refused beyond it only while another tenant is active."""
import pytest

from server.batcher import Overloaded
from server.shares import ACTIVE_WINDOW_S, OverShare, Shares


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_tenant_alone_may_use_the_whole_backlog():
    shares = Shares(0.5, Clock())
    shares.seen(1)
    shares.add(shares.pending, 1, 900)
    shares.check_pending(1, 99, max_pending=1000)  # 999 of 1000: nobody else is here
    shares.add(shares.unapplied, 1, 900)
    shares.check_unapplied(1, events_per_s=1000.0, max_delay_ms=1000.0)  # 900 ms of 1000


def test_beyond_its_share_while_another_is_active_a_tenant_is_refused_and_the_other_is_not():
    clock = Clock()
    shares = Shares(0.5, clock)
    shares.seen(1)
    shares.seen(2)
    shares.add(shares.pending, 1, 400)
    shares.check_pending(1, 100, max_pending=1000)  # exactly its half
    with pytest.raises(OverShare) as refused:
        shares.check_pending(1, 101, max_pending=1000)
    assert isinstance(refused.value, Overloaded) and refused.value.retry_after_s == 1.0
    shares.check_pending(2, 500, max_pending=1000)  # the other keeps its room

    shares.add(shares.unapplied, 1, 600)
    with pytest.raises(OverShare):
        shares.check_unapplied(1, events_per_s=1000.0, max_delay_ms=1000.0)  # 600 ms > 500 ms
    shares.check_unapplied(2, events_per_s=1000.0, max_delay_ms=1000.0)

    # Once the other tenant has been quiet for the activity window, the share no longer binds.
    clock.now += ACTIVE_WINDOW_S + 0.1
    shares.seen(1)
    shares.check_pending(1, 101, max_pending=1000)
    shares.check_unapplied(1, events_per_s=1000.0, max_delay_ms=1000.0)


def test_counters_go_back_to_nothing_and_an_empty_backlog_is_never_refused():
    shares = Shares(0.1, Clock())
    shares.seen(1)
    shares.seen(2)
    shares.check_pending(1, 10_000, max_pending=1000)  # one request larger than the share still gets in alone
    shares.add(shares.pending, 1, 5)
    shares.add(shares.pending, 1, -5)
    assert shares.pending == {}
    shares.check_unapplied(1, events_per_s=None, max_delay_ms=1000.0)  # no rate measured yet


def test_under_load_the_tenants_sending_more_than_an_even_part_of_the_requests_shed_first():
    clock = Clock()
    shares = Shares(0.5, clock)
    shares.enter(1)
    assert shares.sheds(1)  # alone: it sheds as the server does
    for _ in range(9):
        shares.enter(1)
    shares.enter(2)  # the request being judged counts: the middleware enters it first
    assert shares.sheds(1) and not shares.sheds(2)  # 10 and 1 requests: the even part is 5.5
    # A slowed-down tenant holds more requests in flight without sending more: it is the rate that counts.
    for _ in range(10):
        shares.leave(1)
    for _ in range(20):
        shares.enter(2)
        shares.leave(2)
    clock.now += 1.0
    for _ in range(30):
        shares.enter(1)
    assert shares.sheds(1) and not shares.sheds(2)  # 40 and 21 over this second and the last
    clock.now += 5.0
    shares.enter(2)
    assert shares.sheds(2)  # seconds later, alone again
    assert shares.in_flight == {1: 30, 2: 2}


def test_requests_weigh_by_their_bodies_so_a_few_large_ones_outweigh_many_small_ones():
    shares = Shares(0.5, Clock())
    for _ in range(5):
        shares.enter(1, body_bytes=70_000)  # 1000-event batches, slowed down by the overload
    for _ in range(100):
        shares.enter(2, body_bytes=60)  # single-user scores
    assert shares.sheds(1) and not shares.sheds(2)  # 5 x 69 against 100 x 1
