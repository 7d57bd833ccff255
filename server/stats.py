"""The body of ``GET /v1/stats``: what was sent, and whether it helped (signalled vs holdout users)."""
from __future__ import annotations

from typing import Any

from model import TenantConfig
from model.uplift import rate_difference, wilson


def _group(counts: dict[str, int] | None) -> dict[str, Any]:
    counts = counts or {"decisions": 0, "converted": 0, "open": 0}
    resolved = counts["decisions"] - counts["open"]
    rate = counts["converted"] / resolved if resolved else None
    lo, hi = wilson(counts["converted"], resolved) if resolved else (None, None)
    return {**counts, "resolved": resolved, "conversion_rate": rate, "conversion_rate_ci95": [lo, hi]}


def signal_stats_report(counts: dict[str, Any], bandits: dict[str, Any], config: TenantConfig) -> dict[str, Any]:
    """Counts from the signal log, the uplift with its 95 % interval, and the bandits' posteriors.

    Conversion rates count closed decisions only (converted within ``signal_horizon_s``, or not);
    the uplift is the signalled rate minus the holdout rate, with Newcombe's hybrid score interval.
    """
    signalled, holdout = _group(counts["groups"].get("signalled")), _group(counts["groups"].get("holdout"))
    uplift: dict[str, Any] = {"difference": None, "difference_ci95": [None, None]}
    if signalled["resolved"] and holdout["resolved"]:
        d, lo, hi = rate_difference(
            signalled["converted"], signalled["resolved"], holdout["converted"], holdout["resolved"]
        )
        uplift = {"difference": d, "difference_ci95": [lo, hi]}
    return {
        "signals": {
            "sent_by_type": counts["sent"],
            "sent": signalled["decisions"],
            "withheld": holdout["decisions"],
        },
        "conversion": {
            "signalled": signalled,
            "holdout": holdout,
            **uplift,
            "horizon_s": config.signal_horizon_s,
            "holdout_share": config.holdout_share,
        },
        "bandits": bandits,
        "feedback": counts["feedback"],
    }
