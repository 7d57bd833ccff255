"""The body of GET /v1/stats: rates over complete cohorts only, the funnel, and intervals within their range."""
import pytest

from model import TenantConfig
from model.signals import Decision, Resolution
from model.uplift import rate_difference, wilson
from server.stats import signal_stats_report
from server.storage import Store

HORIZON_S = 3600.0
NOW = 1_000_000.0


def group(decisions, open_, converted, expired, cohort, cohort_converted, withheld=False):
    return {"decisions": decisions, "open": open_, "converted": converted, "expired": expired,
            "withheld": decisions if withheld else 0, "cohort": {"decisions": cohort, "converted": cohort_converted}}


def counts(signalled, holdout, funnel=None):
    return {"sent": {}, "groups": {"signalled": signalled, "holdout": holdout}, "decided_before": NOW - HORIZON_S,
            "funnel": funnel or {}, "feedback": {}}


def report(c):
    return signal_stats_report(c, {}, TenantConfig(signal_horizon_s=HORIZON_S))


def test_stats_report_gives_no_rate_while_only_early_conversions_are_closed():
    # The reviewer's case: 26 decisions converted at once, 3,147 still open, no horizon closed yet.
    body = report(counts(group(2900, 2876, 24, 0, 0, 0), group(273, 271, 2, 0, 0, 0, withheld=True)))
    signalled, holdout = body["conversion"]["signalled"], body["conversion"]["holdout"]
    assert signalled["conversion_rate"] is None and holdout["conversion_rate"] is None  # was 1.0 over 24 resolved
    assert body["conversion"]["difference"] is None and body["conversion"]["difference_ci95"] == [None, None]
    assert body["conversion"]["cohort"] == {"decided_before": NOW - HORIZON_S, "decisions": 0}
    assert signalled["open"] == 2876 and signalled["converted"] == 24 and signalled["resolved"] == 24
    assert holdout["withheld"] == 273 and signalled["withheld"] == 0
    assert body["signals"]["sent"] == 2900 and body["signals"]["withheld"] == 273


def test_stats_report_rates_and_uplift_cover_the_complete_cohort_only():
    # Signalled: 100 complete decisions, 30 converted; 50 younger ones, 20 of which already converted.
    # Holdout: 40 complete, 8 converted; 10 younger, 5 converted. Over resolved decisions: 50/120 and 13/45.
    body = report(counts(group(150, 30, 50, 70, 100, 30), group(50, 5, 13, 32, 40, 8, withheld=True)))
    conversion = body["conversion"]
    assert conversion["signalled"]["conversion_rate"] == pytest.approx(0.3)
    assert conversion["holdout"]["conversion_rate"] == pytest.approx(0.2)
    assert conversion["difference"] == pytest.approx(0.1)
    lo, hi = conversion["difference_ci95"]
    assert -1.0 <= lo < 0.1 < hi <= 1.0
    assert conversion["signalled"]["conversion_rate_ci95"] == pytest.approx(list(wilson(30, 100)))
    assert conversion["cohort"]["decisions"] == 140
    assert conversion["signalled"]["expired"] == 70 and conversion["signalled"]["resolved"] == 120


def test_stats_report_orders_the_funnel_and_sums_it_over_types():
    funnel = {"offer_discount": {"sent": 10, "received": 9, "handled": 7, "converted": 2},
              "proactive_support": {"sent": 4, "received": 4, "dismissed": 1}}
    body = report(counts(group(14, 14, 0, 0, 0, 0), group(0, 0, 0, 0, 0, 0, withheld=True), funnel))
    steps = ["sent", "received", "handled", "shown", "clicked", "converted", "dismissed"]
    assert list(body["funnel"]) == [*steps, "by_type"]
    assert [body["funnel"][s] for s in steps] == [14, 13, 7, 0, 0, 2, 1]
    assert body["funnel"]["by_type"]["offer_discount"] == dict(zip(steps, [10, 9, 7, 0, 0, 2, 0]))


def test_intervals_stay_within_their_range():
    for n in (16, 21, 40):  # rounding put these a hair outside [0, 1] and [-1, 1]
        assert 0.0 <= wilson(0, n)[0] and wilson(n, n)[1] <= 1.0
        assert rate_difference(n, n, 0, n)[2] <= 1.0 and rate_difference(0, n, n, n)[1] >= -1.0


def decision(signal_id, created_at, withheld=False, kind="offer_discount"):
    return Decision(signal_id, "u" + signal_id, "cart_abandon_risk", kind, "10", {}, 0.5, created_at, withheld)


def test_signal_log_counts_groups_cohorts_and_distinct_signals_per_step(tmp_path):
    store = Store(tmp_path)
    try:
        old, young = NOW - HORIZON_S - 10, NOW - 60
        store.write_signals([(1, [
            decision("a", old), decision("b", old), decision("c", old), decision("h", old, withheld=True),
            decision("d", young), decision("e", young), decision("f", young, kind="proactive_support"),
            decision("g", young, withheld=True),
        ], [Resolution("a", True, old + 5), Resolution("b", False, NOW - 5), Resolution("h", False, NOW - 5),
            Resolution("d", True, young + 5), Resolution("g", True, young + 5)])])
        # c's horizon closed but the sweeper has not run yet: it counts in the cohort, not converted.
        store.add_feedback(1, [("a", "ua", "received", old), ("a", "ua", "received", old + 1),  # a retried report
                               ("a", "ua", "handled", old), ("a", "ua", "converted", old + 5),
                               ("e", "ue", "received", young), ("e", "ue", "converted", young + 1),
                               ("f", "uf", "received", young), ("f", "uf", "dismissed", young)])
        c = store.signal_stats(1, NOW, HORIZON_S)
    finally:
        store.close()
    assert c["decided_before"] == NOW - HORIZON_S
    assert c["groups"]["signalled"] == {"decisions": 6, "open": 3, "converted": 2, "expired": 1, "withheld": 0,
                                        "cohort": {"decisions": 3, "converted": 1}}
    assert c["groups"]["holdout"] == {"decisions": 2, "open": 0, "converted": 1, "expired": 1, "withheld": 2,
                                      "cohort": {"decisions": 1, "converted": 0}}
    # a converted by report and by attribution counts once; d by attribution, e by report only.
    assert c["funnel"] == {"offer_discount": {"sent": 5, "converted": 3, "received": 2, "handled": 1},
                           "proactive_support": {"sent": 1, "converted": 0, "received": 1, "dismissed": 1}}
    body = report(c)
    assert body["conversion"]["signalled"]["conversion_rate"] == pytest.approx(1 / 3)  # not 2 / 3 over resolved
    assert body["conversion"]["holdout"]["conversion_rate"] == 0.0
    assert body["funnel"]["received"] == 3 and body["funnel"]["converted"] == 3
