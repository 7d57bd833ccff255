"""Statistics for quality reports: binary metrics, weighted AUC, and a paired bootstrap over users.

Events of one user are not independent (the same person, the same labels again and again), so intervals
come from resampling users, never events.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy.special import expit, log_expit, logit

__all__ = ["WeightedAuc", "binary_metrics", "user_bootstrap", "weighted_auc"]

_PROB_EPS = 1e-6
_LOGIT_LIMIT = 15.0
_ECE_BINS = 10
_NEWTON_STEPS = 50
_NEWTON_TOL = 1e-9
_NAN = float("nan")


def _labels(y: Any, n: int) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"labels must be a 1-d array with one entry per event ({n}), got shape {y.shape}")
    if y.dtype != bool:
        if not np.isin(y, (0, 1)).all():
            raise ValueError("labels must be booleans or 0/1; map other outcomes to 0/1 before scoring")
        y = y.astype(bool)
    return y


def _scores(scores: Any, what: str) -> np.ndarray:
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 1:
        raise ValueError(f"{what} must be a 1-d array, one entry per event, got shape {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError(f"{what} must be finite; drop or impute the {int((~np.isfinite(scores)).sum())} nan/inf")
    return scores


class WeightedAuc:
    """AUC of fixed scores and labels under many event weightings, each in O(n) after one sort.

    Parameters
    ----------
    scores : np.ndarray
        One finite score per event; higher means more likely positive. Tied scores count half.
    y : np.ndarray
        Boolean (or 0/1) label per event.
    """

    def __init__(self, scores: np.ndarray, y: np.ndarray) -> None:
        scores = _scores(scores, "scores")
        y = _labels(y, len(scores))
        distinct, inverse = np.unique(scores, return_inverse=True)
        self._groups = len(distinct)
        # Positives of a tie group count into bin g, negatives into bin groups + g: one bincount splits both.
        self._bins = (inverse.reshape(-1) + np.where(y, 0, self._groups)).astype(np.intp)

    def __call__(self, w: np.ndarray) -> float:
        """AUC with non-negative event weights ``w``; nan when either class has zero total weight."""
        w = np.asarray(w, dtype=float)
        if w.shape != self._bins.shape:
            raise ValueError(f"weights must have one entry per event {self._bins.shape}, got shape {w.shape}")
        if not (np.isfinite(w).all() and (w >= 0).all()):
            raise ValueError("weights must be finite and non-negative")
        return self._auc(w)

    def _auc(self, w: np.ndarray) -> float:
        sums = np.bincount(self._bins, weights=w, minlength=2 * self._groups)
        pos, neg = sums[: self._groups], sums[self._groups :]
        total_pos, total_neg = pos.sum(), neg.sum()
        if total_pos <= 0 or total_neg <= 0:
            return _NAN
        below = np.concatenate(([0.0], np.cumsum(neg)[:-1]))
        return float(pos @ (below + 0.5 * neg) / (total_pos * total_neg))


def weighted_auc(scores: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    """AUC (Mann-Whitney, ties counted half) with event weights ``w``; nan when a class has no weight."""
    return WeightedAuc(scores, y)(w)


def _ece(p: np.ndarray, y: np.ndarray) -> float:
    order = np.argsort(p, kind="stable")
    # Equal-count bins over the sorted predictions; sizes differ by at most one.
    bins = np.empty(len(p), dtype=np.intp)
    bins[order] = np.arange(len(p)) * _ECE_BINS // len(p)
    # share * |mean p - mean y| of a bin is |sum of (p - y) in it| / n.
    gap = np.bincount(bins, weights=p - y, minlength=_ECE_BINS)
    return float(np.abs(gap).sum() / len(p))


def _calibration(p: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) of y ~ a + b logit(p) by Newton; nan when constant, one-class or separated."""
    x = np.clip(logit(p), -_LOGIT_LIMIT, _LOGIT_LIMIT)
    if np.ptp(x) == 0 or y.all() or not y.any():
        return _NAN, _NAN
    # With one covariate the maximum likelihood runs off to infinity exactly when a threshold splits the classes.
    if x[~y].max() <= x[y].min() or x[y].max() <= x[~y].min():
        return _NAN, _NAN
    design = np.column_stack([np.ones_like(x), x])
    yf = y.astype(float)

    def loglik(beta: np.ndarray) -> float:
        eta = design @ beta
        return float(np.where(y, log_expit(eta), log_expit(-eta)).sum())

    beta = np.array([0.0, 1.0])  # perfect calibration: the usual answer, so Newton starts close
    current = loglik(beta)
    for _ in range(_NEWTON_STEPS):
        mu = expit(design @ beta)
        hessian = design.T @ (design * (mu * (1 - mu))[:, None])
        try:
            step = np.linalg.solve(hessian, design.T @ (yf - mu))
        except np.linalg.LinAlgError:  # every prediction saturated: no curvature left to fit
            break
        if np.abs(step).max() < _NEWTON_TOL * (1 + np.abs(beta).max()):
            return float(beta[1]), float(beta[0])
        # Halving keeps every step uphill, so a poor start cannot overshoot into divergence.
        for _ in range(30):
            candidate = loglik(beta + step)
            if candidate >= current:
                break
            step = step / 2
        else:
            break
        beta, current = beta + step, candidate
    return _NAN, _NAN


def binary_metrics(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Discrimination and calibration of probabilities ``p`` against labels ``y``; nan where undefined."""
    p = _scores(p, "probabilities")
    if ((p < 0) | (p > 1)).any():
        raise ValueError("probabilities must lie in [0, 1]; pass predicted probabilities, not logits or scores")
    y = _labels(y, len(p))
    n = len(p)
    if n == 0:
        names = ("auc", "logloss", "brier", "ece", "calibration_slope", "calibration_intercept",
                 "mean_predicted", "observed_rate")
        return {"n": 0, "positives": 0, **{name: _NAN for name in names}}
    yf = y.astype(float)
    q = np.clip(p, _PROB_EPS, 1 - _PROB_EPS)
    slope, intercept = _calibration(p, y)
    return {
        "n": n,
        "positives": int(y.sum()),
        "auc": WeightedAuc(p, y)._auc(np.ones(n)),
        "logloss": float(-np.where(y, np.log(q), np.log1p(-q)).mean()),
        "brier": float(np.mean((p - yf) ** 2)),
        "ece": _ece(p, yf),
        "calibration_slope": slope,
        "calibration_intercept": intercept,
        "mean_predicted": float(p.mean()),
        "observed_rate": float(yf.mean()),
    }


def _dense_ids(users: Any) -> tuple[np.ndarray, int]:
    users = np.asarray(users)
    if users.ndim != 1:
        raise ValueError(f"users must be a 1-d array of ids, one per event, got shape {users.shape}")
    try:
        distinct, inverse = np.unique(users, return_inverse=True)
    except TypeError:  # ids of mixed types cannot be sorted; first-seen order serves as well
        index: dict[Any, int] = {}
        inverse = np.fromiter((index.setdefault(u, len(index)) for u in users.tolist()), np.intp, len(users))
        return inverse, len(index)
    return inverse.reshape(-1), len(distinct)


def _interval(draws: np.ndarray, level: float) -> tuple[float, float]:
    if len(draws) == 0:
        return _NAN, _NAN
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def user_bootstrap(
    users: np.ndarray,
    y: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    *,
    reference: str | None = None,
    replicates: int = 200,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, dict[str, Any]]:
    """Each predictor's AUC with a percentile interval from resampling users, and paired differences to ``reference``.

    Per predictor: ``auc``, ``auc_ci``, ``replicates`` (those used; a draw with no weight on a class is
    skipped) and, for every predictor but ``reference``, ``diff`` = AUC - AUC(reference) with ``diff_ci``.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie strictly between 0 and 1 (e.g. 0.95), got {level}")
    if int(replicates) != replicates or replicates < 1:
        raise ValueError(f"replicates must be a positive integer, got {replicates}")
    if reference is not None and reference not in predictions:
        raise ValueError(f"reference {reference!r} is not among the predictions {sorted(predictions)}")
    uid, n_users = _dense_ids(users)
    y = _labels(y, len(uid))
    ranked = [WeightedAuc(_scores(s, f"predictions[{name!r}]"), y) for name, s in predictions.items()]
    point = np.array([r._auc(np.ones(len(y))) for r in ranked])
    positives = np.bincount(uid, weights=y, minlength=n_users)
    negatives = np.bincount(uid, minlength=n_users) - positives

    rng = np.random.default_rng(seed)
    draws = np.empty((int(replicates), len(ranked)))
    kept = 0
    for _ in range(int(replicates) if n_users else 0):
        # Drawing n_users users with replacement is the same as giving each user a multinomial count.
        counts = np.bincount(rng.integers(0, n_users, n_users), minlength=n_users).astype(float)
        if counts @ positives == 0 or counts @ negatives == 0:
            continue
        w = counts[uid]
        draws[kept] = [r._auc(w) for r in ranked]
        kept += 1
    draws = draws[:kept]

    names = list(predictions)
    out: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(names):
        row: dict[str, Any] = {"auc": float(point[i]), "auc_ci": _interval(draws[:, i], level), "replicates": kept}
        if reference is not None and name != reference:
            j = names.index(reference)
            row["diff"] = float(point[i] - point[j])
            row["diff_ci"] = _interval(draws[:, i] - draws[:, j], level)
        out[name] = row
    return out
