"""Offline replay: feed an event file through the engine in event-time order and measure it.

Prequential: just before each event, the acting user is scored with everything seen so far; the
label is whether that user converts within 5 / 60 minutes after the event. Events whose horizon
runs past the end of the data are left out of that horizon's metrics (censored).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import rankdata

from .config import TenantConfig
from .engine import PREDICT_HORIZONS_S, Engine
from .events import EventBatch
from .sequences import next_conversion_delay


# name -> (theta mode, sequence lift); "full" is the engine as served.
VARIANTS = {
    "full": ("thompson", True),
    "heuristic_weights": ("prior", False),
    "posterior_mean": ("mean", True),
    "no_sequence_lift": ("thompson", False),
}


def conversion_labels(batch: EventBatch, conversion: int, horizon_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(label, observed): the user converts within ``horizon_s`` after the event; observed = not censored."""
    label = next_conversion_delay(batch, conversion) <= horizon_s
    observed = batch.ts + horizon_s <= batch.ts.max()
    return label, observed


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half)."""
    pos = int(labels.sum())
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def auc_interval(a: float, labels: np.ndarray) -> tuple[float, float]:
    """95 % interval of an AUC by Hanley and McNeil's standard error."""
    pos, neg = int(labels.sum()), int(len(labels) - labels.sum())
    if not np.isfinite(a) or pos == 0 or neg == 0:
        return float("nan"), float("nan")
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    se = np.sqrt((a * (1 - a) + (pos - 1) * (q1 - a * a) + (neg - 1) * (q2 - a * a)) / (pos * neg))
    return float(a - 1.96 * se), float(a + 1.96 * se)


@dataclass(frozen=True)
class ReplayReport:
    events: int
    users: int
    seconds: float
    rows: list[dict[str, Any]]
    weights: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def table(self) -> str:
        head = "| predictor | AUC 5 min (95 % CI) | AUC 60 min (95 % CI) |\n|---|---|---|"

        def cell(row: dict[str, Any], key: str) -> str:
            value = row[key]
            if not isinstance(value, float):
                return str(value)
            lo, hi = row.get(f"{key}_ci95", (float("nan"),) * 2)
            return f"{value:.4f} ({lo:.3f}–{hi:.3f})"

        lines = [f"| {r['predictor']} | {cell(r, 'auc_5m')} | {cell(r, 'auc_60m')} |" for r in self.rows]
        return "\n".join([head, *lines])


def prequential_scores(
    batch: EventBatch, config: TenantConfig, variants: dict[str, tuple[str, bool]], *, chunk_s: float = 1.0
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """Score each event's user just before the event, per variant; also the Markov estimates and history flag."""
    engine = Engine(config)
    n = len(batch)
    scores = {name: np.zeros(n, np.float32) for name in variants}
    p5, p60 = np.zeros(n), np.zeros(n)
    has_history = np.zeros(n, bool)
    buckets = np.floor(batch.ts / chunk_s)
    bounds = np.flatnonzero(np.diff(buckets)) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, n]):
        users, now = batch.user_ids[lo:hi], float(batch.ts[lo])
        for name, (mode, use_lift) in variants.items():
            result = engine.score(users, now, mode=mode, use_lift=use_lift)
            scores[name][lo:hi] = result.score
        p5[lo:hi], p60[lo:hi] = result.purchase_5m, result.purchase_60m
        has_history[lo:hi] = result.known
        engine.apply(batch.take(slice(lo, hi)))
    return scores, p5, p60, has_history


def replay(batch: EventBatch, config: TenantConfig, *, chunk_s: float = 1.0) -> ReplayReport:
    """Prequential replay of a time-sorted batch; AUC per score variant and for the Markov estimates."""
    started = time.perf_counter()
    n = len(batch)
    scores, p5, p60, has_history = prequential_scores(batch, config, VARIANTS, chunk_s=chunk_s)
    rows = []
    labels = [conversion_labels(batch, config.conversion_code, h) for h in PREDICT_HORIZONS_S]
    candidates: dict[str, tuple[np.ndarray | None, np.ndarray]] = {
        f"engagement score: {k}": (v, np.ones(n, bool)) for k, v in scores.items()
    }
    candidates["markov purchase_5m / purchase_60m"] = (None, np.ones(n, bool))
    candidates["engagement score: full, users with history only"] = (scores["full"], has_history)
    for name, (values, subset) in candidates.items():
        row: dict[str, Any] = {"predictor": name}
        for (label, observed), key, markov in zip(labels, ("auc_5m", "auc_60m"), (p5, p60)):
            used = (markov if values is None else values)[observed & subset]
            row[key] = auc(used, label[observed & subset])
            row[f"{key}_ci95"] = auc_interval(row[key], label[observed & subset])
        rows.append(row)
    (l5, o5), (l60, o60) = labels
    rows.append(
        {"predictor": "(events scored / positives at 5 min, 60 min)",
         "auc_5m": f"{int(o5.sum())} / {int(l5[o5].sum())}", "auc_60m": f"{int(o60.sum())} / {int(l60[o60].sum())}"}
    )
    h5, h60 = o5 & has_history, o60 & has_history
    rows.append(
        {"predictor": "(of which users with history)",
         "auc_5m": f"{int(h5.sum())} / {int(l5[h5].sum())}", "auc_60m": f"{int(h60.sum())} / {int(l60[h60].sum())}"}
    )
    engine = Engine(config)
    engine.apply(batch)
    alpha, beta = engine.pooled_posterior()
    weights = {a: float(alpha[i] / (alpha[i] + beta[i])) for i, a in enumerate(config.actions)}
    return ReplayReport(n, len(engine.windows), round(time.perf_counter() - started, 2), rows, weights)
