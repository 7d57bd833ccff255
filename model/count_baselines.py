"""The simple baselines every quality report prints beside the learned score.

Each is computed per event, just after it, from the event stream alone: the user's purchases so far, the
user's events in the last 30 minutes, and a logistic regression on simple per-action counts refitted
prequentially (only on outcomes known before the events it predicts).
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

from .events import EventBatch

RECENT_S = 1800.0
_L2 = 1.0
_MAX_REFITS = 40


def _by_user(batch: EventBatch) -> tuple[np.ndarray, np.ndarray]:
    """(order sorting events by user then time, dense user index per event)."""
    _, user = np.unique(batch.user_ids.astype(str), return_inverse=True)
    return np.lexsort((np.arange(len(batch)), batch.ts, user)), user


def simple_counts(batch: EventBatch, n_actions: int) -> np.ndarray:
    """[n, 2 * n_actions]: per action, the user's count so far and in the last 30 minutes (this event included)."""
    n = len(batch)
    order, user = _by_user(batch)
    u, ts, act = user[order], batch.ts[order], batch.actions[order]
    starts = np.r_[0, np.flatnonzero(u[1:] != u[:-1]) + 1]
    group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    # A key that orders by user, then time, so one sorted search finds each window's first event.
    key = u * (float(ts.max() - ts.min()) + 2 * RECENT_S + 1.0) + (ts - ts.min())
    first_recent = np.searchsorted(key, key - RECENT_S, side="right")
    out = np.zeros((n, 2 * n_actions), np.float32)
    for a in range(n_actions):
        hits = np.cumsum(act == a)
        before_group = np.where(group_start > 0, hits[group_start - 1], 0)
        before_recent = np.where(first_recent > 0, hits[first_recent - 1], 0)
        out[order, a] = hits - before_group
        out[order, n_actions + a] = hits - before_recent
    return out


def purchases_so_far(counts: np.ndarray, conversion: int) -> np.ndarray:
    return counts[:, conversion]


def events_last_30m(counts: np.ndarray, n_actions: int) -> np.ndarray:
    return counts[:, n_actions:].sum(axis=1)


def prequential_logistic(features: np.ndarray, ts: np.ndarray, labels: np.ndarray, observed: np.ndarray,
                         horizon_s: float) -> np.ndarray:
    """P(label) per event from a logistic regression on ``log1p(features)``, refitted at points of event time
    (daily, or every 1/40 of a shorter span) on the events whose outcome was known by then; 0.5 before the first."""
    x = np.c_[np.ones(len(ts)), np.log1p(features)].astype(np.float64)
    step = min(86400.0, max((ts.max() - ts.min()) / _MAX_REFITS, 1.0)) if len(ts) else 1.0
    out = np.full(len(ts), 0.5)
    weights = None
    refit_at = ts.min() if len(ts) else 0.0
    bounds = np.flatnonzero(np.diff(np.floor((ts - refit_at) / step))) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(ts)]):
        now = ts[lo]
        known = observed & (ts + horizon_s < now)
        if known.any() and labels[known].any() and not labels[known].all():
            weights = _fit(x[known], labels[known].astype(np.float64), weights)
        if weights is not None:
            out[lo:hi] = expit(x[lo:hi] @ weights)
    return out


def _fit(x: np.ndarray, y: np.ndarray, start: np.ndarray | None) -> np.ndarray:
    def objective(w: np.ndarray):
        z = x @ w
        penalty = 0.5 * _L2 * float(w[1:] @ w[1:])
        grad = x.T @ (expit(z) - y)
        grad[1:] += _L2 * w[1:]
        return float(np.logaddexp(0.0, z).sum() - y @ z) + penalty, grad

    start = np.zeros(x.shape[1]) if start is None else start
    return minimize(objective, start, jac=True, method="L-BFGS-B").x
