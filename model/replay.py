"""Offline replay: feed an event file through the engine in log order and measure what it predicted.

Prequential: every event is applied as serving would apply it, and the user is scored just after it with
everything known at that moment; the label is whether that user converts within 5 (60) minutes after the
event. Events whose horizon runs past the end of the data are left out of that horizon (censored).

Beside the learned score, the report prints the baselines it has to beat, computed on the same events:
the heuristic weights alone, the user's purchases so far, the user's events in the last 30 minutes and a
logistic regression on simple counts refitted prequentially. Intervals come from a paired bootstrap over
users (events of one user are not independent).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from scipy.stats import rankdata

from .config import TenantConfig
from .count_baselines import events_last_30m, prequential_logistic, purchases_so_far, simple_counts
from .engine import PREDICT_HORIZONS_S, Engine
from .evaluation_stats import binary_metrics, user_bootstrap
from .events import EventBatch
from .score_features import HEURISTIC
from .sequences import next_conversion_delay

HORIZONS = {"5m": PREDICT_HORIZONS_S[0], "60m": PREDICT_HORIZONS_S[1]}
BASELINES = ("heuristic_weights", "purchases_so_far", "events_last_30m", "logistic_counts")
# Predictors that are probabilities (calibration metrics mean something for them).
PROBABILITIES = ("score", "purchase_5m", "purchase_60m", "markov", "heuristic_weights", "logistic_counts")


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


@dataclass(frozen=True)
class ReplayReport:
    """What a replay measured: one row per predictor, and the served score against each baseline."""

    events: int
    users: int
    seconds: float
    rows: list[dict[str, Any]]
    comparisons: list[dict[str, Any]]
    labels: dict[str, dict[str, int]]
    weights: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def table(self) -> str:
        """Markdown: AUC with user-bootstrap intervals, calibration, and the score's margin over each baseline."""
        def ci(row, key):
            value = row.get(key)
            if value is None or not np.isfinite(value):
                return "–"
            lo, hi = row[f"{key}_ci"]
            return f"{value:.4f} ({lo:.3f}–{hi:.3f})"

        lines = ["| predictor | AUC 5 min (95 % CI) | AUC 60 min (95 % CI) |", "|---|---|---|"]
        lines += [f"| {r['predictor']} | {ci(r, 'auc_5m')} | {ci(r, 'auc_60m')} |" for r in self.rows]
        lines += ["", "| predictor | horizon | log-loss | Brier | ECE | calibration slope | mean predicted | observed |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in self.rows:
            for h in HORIZONS:
                if r.get(f"logloss_{h}") is None:
                    continue
                cells = [f"{r[f'{m}_{h}']:.4f}" for m in ("logloss", "brier", "ece", "calibration_slope",
                                                           "mean_predicted", "observed_rate")]
                lines.append(f"| {r['predictor']} | {h} | " + " | ".join(cells) + " |")
        lines += ["", "| score minus | AUC 5 min (95 % CI) | AUC 60 min (95 % CI) |", "|---|---|---|"]
        for c in self.comparisons:
            cells = []
            for h in HORIZONS:
                d = c.get(f"diff_{h}")
                cells.append("–" if d is None or not np.isfinite(d) else
                             f"{d:+.4f} ({c[f'diff_{h}_ci'][0]:+.3f}–{c[f'diff_{h}_ci'][1]:+.3f})")
            lines.append(f"| {c['baseline']} | " + " | ".join(cells) + " |")
        counts = ", ".join(f"{h}: {v['scored']} scored, {v['positives']} positive" for h, v in self.labels.items())
        return "\n".join(lines + ["", f"events per horizon: {counts}"])


def prequential(batch: EventBatch, config: TenantConfig, progress: Callable[[int, int], None] | None = None):
    """Apply ``batch`` (time-sorted) to a fresh engine; per event, the score's features and the learned
    predictions just after it. Returns (engine, features [n, d], predictions {role: [n]})."""
    engine = Engine(config)
    n = len(batch)
    features = np.zeros((n, engine.features.width), np.float32)
    predictions: dict[str, np.ndarray] = {}
    pieces = max(1, min(200, n // 2000))
    bounds = np.linspace(0, n, pieces + 1).astype(int)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        observed = engine.observe(batch.take(slice(lo, hi)))
        features[lo:hi] = observed.features
        for role, values in observed.predictions.items():
            predictions.setdefault(role, np.zeros(n))[lo:hi] = values
        if progress is not None:
            progress(hi, n)
    return engine, features, predictions


def replay(batch: EventBatch, config: TenantConfig, *, replicates: int = 200, seed: int = 0,
           progress: Callable[[int, int], None] | None = None) -> ReplayReport:
    """Prequential replay of a time-sorted batch: the served score, the Markov chain and the baselines."""
    started = time.perf_counter()
    engine, x, predicted = prequential(batch, config, progress)
    names = engine.features.index
    counts = simple_counts(batch, len(config.actions))
    _, users = np.unique(batch.user_ids.astype(str), return_inverse=True)
    rows: dict[str, dict[str, Any]] = {
        p: {"predictor": p} for p in ("score", "purchase_5m", "purchase_60m", "markov", *BASELINES)}
    comparisons: dict[str, dict[str, Any]] = {b: {"baseline": b} for b in ("markov", *BASELINES)}
    labels = {}
    for h, horizon_s in HORIZONS.items():
        label, observed = conversion_labels(batch, config.conversion_code, horizon_s)
        labels[h] = {"scored": int(observed.sum()), "positives": int(label[observed].sum())}
        values = {
            "score": predicted["score"],
            f"purchase_{h}": predicted[f"purchase_{h}"],
            "markov": _probability(x[:, names[f"markov_{h}"]]),
            "heuristic_weights": _probability(x[:, names[HEURISTIC]]),
            "purchases_so_far": purchases_so_far(counts, config.conversion_code),
            "events_last_30m": events_last_30m(counts, len(config.actions)),
            "logistic_counts": prequential_logistic(counts, batch.ts, label, observed, horizon_s),
        }
        y = label[observed]
        chosen = {name: v[observed] for name, v in values.items()}
        boot = user_bootstrap(users[observed], y, chosen, reference="score", replicates=replicates, seed=seed) \
            if 0 < y.sum() < len(y) else {}
        for name, v in chosen.items():
            row = rows[name]
            row[f"auc_{h}"] = auc(v, y)
            row[f"auc_{h}_ci"] = tuple(boot.get(name, {}).get("auc_ci", (float("nan"),) * 2))
            if name in PROBABILITIES:
                metrics = binary_metrics(np.clip(v, 0.0, 1.0), y)
                for m in ("logloss", "brier", "ece", "calibration_slope", "mean_predicted", "observed_rate"):
                    row[f"{m}_{h}"] = metrics[m]
            if name in comparisons and name in boot:
                # The bootstrap gives predictor minus score; the report states the score's margin.
                diff, (lo, hi) = boot[name]["diff"], boot[name]["diff_ci"]
                comparisons[name][f"diff_{h}"] = -diff
                comparisons[name][f"diff_{h}_ci"] = (-hi, -lo)
    alpha, beta = engine.pooled_posterior()
    weights = {a: float(alpha[i] / (alpha[i] + beta[i])) for i, a in enumerate(config.actions)}
    return ReplayReport(len(batch), len(engine.windows), round(time.perf_counter() - started, 2),
                        list(rows.values()), list(comparisons.values()), labels, weights)


def _probability(log_odds: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(log_odds, np.float64)))


def progress_bar(what: str, out=sys.stderr) -> Callable[[int, int], None]:
    """A progress callback that redraws one line: done / total, and the seconds so far."""
    started = time.perf_counter()

    def show(done: int, total: int) -> None:
        width = 30
        filled = int(width * done / max(total, 1))
        out.write(f"\r{what} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} "
                  f"{time.perf_counter() - started:6.1f} s")
        if done >= total:
            out.write("\n")
        out.flush()

    return show
