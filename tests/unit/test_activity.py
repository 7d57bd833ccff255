"""The per-tenant activity ring behind GET /v1/activity: a minute of per-second buckets and latency percentiles."""
import random

import pytest

from server.activity import WINDOW_S, Activity


def test_a_minute_of_seconds_is_kept_and_older_ones_are_forgotten():
    now = [1000.2]
    activity = Activity(clock=lambda: now[0])
    activity.record_ingest(100, 0.002)
    now[0] = 1030.5
    activity.record_ingest(40, 0.004)
    activity.record_score(3, 0.001)
    now[0] = 1059.9  # the second of the first record is the oldest still in the window
    report = activity.report()
    assert report["window_s"] == WINDOW_S == 60
    assert (report["ingest"]["requests"], report["ingest"]["events"]) == (2, 140)
    assert report["ingest"]["events_per_s"] == pytest.approx(140 / 60)
    series = report["ingest"]["events_per_second"]
    assert len(series) == 60 and series[0] == 100 and series[30] == 40 and sum(series) == 140
    assert (report["score"]["requests"], report["score"]["users"]) == (1, 3)

    now[0] = 1060.0  # one second later the first record has left the window
    report = activity.report()
    assert (report["ingest"]["requests"], report["ingest"]["events"]) == (1, 40)
    assert report["ingest"]["events_per_second"][29] == 40 and report["ingest"]["events_per_second"][-1] == 0

    now[0] = 1090.6  # the slot the first record used is reused for this second, not added to
    activity.record_ingest(7, 0.002)
    report = activity.report()
    assert (report["ingest"]["requests"], report["ingest"]["events"]) == (1, 7)
    assert report["ingest"]["events_per_second"][-1] == 7
    assert report["score"] == {**report["score"], "requests": 0, "users": 0,
                               "latency_ms": {"p50": None, "p95": None, "p99": None}}


def test_latency_percentiles_are_within_nine_percent_of_the_exact_ones():
    rng = random.Random(3)
    latencies = sorted(rng.lognormvariate(-5.0, 1.2) for _ in range(5000))  # ~7 ms median, a long tail
    activity = Activity(clock=lambda: 50.0)
    for seconds in latencies:
        activity.record_score(1, seconds)
    got = activity.report()["score"]["latency_ms"]
    for name, q in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99)):
        exact_ms = latencies[int(q * len(latencies)) - 1] * 1000
        assert got[name] == pytest.approx(exact_ms, rel=0.095), name
    # Outside the bins' range the first and last bins hold the extremes, whatever they are.
    extremes = Activity(clock=lambda: 5.0)
    extremes.record_ingest(1, 0.0)
    extremes.record_ingest(1, 1e6)
    report = extremes.report()["ingest"]["latency_ms"]
    assert report["p50"] == 0.05 and report["p99"] > 100_000
