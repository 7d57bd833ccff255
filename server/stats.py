"""The body of ``GET /v1/stats``: what was sent, how far it got, and whether it helped (signalled vs holdout users)."""
from __future__ import annotations

from typing import Any

from model import TenantConfig
from model.uplift import rate_difference, wilson

from .validation import FEEDBACK_OUTCOMES

_EMPTY_GROUP = {"decisions": 0, "open": 0, "converted": 0, "expired": 0, "withheld": 0,
                "cohort": {"decisions": 0, "converted": 0}}


def _group(counts: dict[str, Any] | None) -> dict[str, Any]:
    """A group's counts, and its conversion rate over its complete cohort."""
    counts = counts or _EMPTY_GROUP
    n, k = counts["cohort"]["decisions"], counts["cohort"]["converted"]
    rate = k / n if n else None
    lo, hi = wilson(k, n) if n else (None, None)
    return {**counts, "resolved": counts["converted"] + counts["expired"],
            "conversion_rate": rate, "conversion_rate_ci95": [lo, hi]}


def _funnel(by_type: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Distinct sent signals at each step, from sent to the outcome, in all and per signal type."""
    steps = ("sent", *FEEDBACK_OUTCOMES)
    per_type = {kind: {s: counts.get(s, 0) for s in steps} for kind, counts in sorted(by_type.items())}
    return {**{s: sum(c[s] for c in per_type.values()) for s in steps}, "by_type": per_type}


def signal_stats_report(counts: dict[str, Any], bandits: dict[str, Any], config: TenantConfig) -> dict[str, Any]:
    """Counts from the signal log, the uplift with its 95 % interval, the delivery funnel and the bandits.

    Conversion rates and the uplift cover the complete cohort only: the decisions made before
    ``decided_before`` (now less ``signal_horizon_s``), converted or not. Open and early-converted decisions
    younger than that wait, else conversions, which close a decision at once, would outweigh non-conversions,
    which close it only when the horizon ends. The uplift is the signalled rate minus the holdout rate, with
    Newcombe's hybrid score interval.
    """
    signalled, holdout = _group(counts["groups"].get("signalled")), _group(counts["groups"].get("holdout"))
    uplift: dict[str, Any] = {"difference": None, "difference_ci95": [None, None]}
    s, h = signalled["cohort"], holdout["cohort"]
    if s["decisions"] and h["decisions"]:
        d, lo, hi = rate_difference(s["converted"], s["decisions"], h["converted"], h["decisions"])
        uplift = {"difference": d, "difference_ci95": [lo, hi]}
    return {
        "signals": {
            "sent_by_type": counts["sent"],
            "sent": signalled["decisions"],
            "withheld": holdout["decisions"],
        },
        "conversion": {
            "cohort": {"decided_before": counts["decided_before"], "decisions": s["decisions"] + h["decisions"]},
            "signalled": signalled,
            "holdout": holdout,
            **uplift,
            "horizon_s": config.signal_horizon_s,
            "holdout_share": config.holdout_share,
        },
        "funnel": _funnel(counts["funnel"]),
        "bandits": bandits,
        "feedback": counts["feedback"],
    }
