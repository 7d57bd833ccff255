"""nudge_client's retry policy: which answers are retried, how long it waits, and Retry-After in both forms."""
import email.utils
import random

import pytest

from nudge_client import RetryPolicy
from nudge_client.retry import call_retryable, parse_retry_after, retryable


@pytest.mark.parametrize("status, expected", [
    (408, True), (429, True), (500, True), (502, True), (503, True), (504, True),
    (400, False), (401, False), (404, False), (409, False), (413, False), (415, False),
])
def test_retryable_statuses_are_timeouts_rate_limits_and_server_errors(status, expected):
    assert retryable(status) is expected


def test_calls_retry_only_answers_that_did_nothing():
    assert call_retryable(429) and call_retryable(503)
    assert not any(call_retryable(s) for s in (400, 408, 500, 502, 504))


@pytest.mark.parametrize("value, seconds", [("0", 0.0), ("1", 1.0), ("120", 120.0), (" 7 ", 7.0)])
def test_retry_after_in_seconds(value, seconds):
    assert parse_retry_after(value) == seconds


def test_retry_after_as_an_http_date_counts_from_now():
    now = 1_700_000_000.0
    header = email.utils.formatdate(now + 90, usegmt=True)  # "Tue, 14 Nov 2023 22:14:50 GMT"
    assert parse_retry_after(header, now=now) == pytest.approx(90.0)
    assert parse_retry_after(email.utils.formatdate(now - 90, usegmt=True), now=now) == 0.0  # in the past: now


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5x", "Mon, 99 Foo 2023"])
def test_retry_after_that_cannot_be_read_is_none(value):
    assert parse_retry_after(value) is None


def test_backoff_is_full_jitter_within_a_doubling_capped_ceiling():
    policy = RetryPolicy(base_s=0.5, max_s=4.0)
    rng = random.Random(1)
    for attempt, ceiling in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 4.0), (60, 4.0)]:
        delays = [policy.delay(attempt, rng=rng) for _ in range(300)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > 0.8 * ceiling and min(delays) < 0.2 * ceiling  # spread over the whole range


def test_retry_after_is_a_floor_with_the_jitter_on_top():
    policy = RetryPolicy(base_s=0.25, max_s=30.0)
    rng = random.Random(2)
    delays = [policy.delay(0, retry_after_s=3.0, rng=rng) for _ in range(200)]
    assert all(3.0 <= d <= 3.25 for d in delays)
    assert len(set(delays)) > 100  # clients told the same Retry-After do not come back together


def test_an_outlandish_retry_after_is_capped():
    policy = RetryPolicy(base_s=0.1, max_retry_after_s=60.0)
    assert 60.0 <= policy.delay(0, retry_after_s=86_400.0, rng=random.Random(3)) <= 60.1
