"""Calibrating a served model's conversion probabilities to one tenant, online.

A model trained on one shop, or on another month, ranks users well and misjudges how many convert. Each
head (5 and 60 minutes) gets an online Platt layer, P = sigmoid(a · logit(p) + b), starting as the identity.
The model's predictions wait until their horizon has passed; the tenant's outcomes then teach the layer.
Only predictions made before the layer learned from their outcome teach it (prequential), so it learns
what the model gets wrong on this tenant's data.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .combiner import OnlineLogit, sigmoid

HORIZONS_S = (300.0, 3600.0)
_EPS = 1e-6


def log_odds(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), _EPS, 1.0 - _EPS)
    return np.log(p / (1.0 - p))


class ModelCalibration:
    """Platt layers of a model's two conversion heads, and its predictions that wait for their outcome.

    Parameters
    ----------
    forget_half_life_s : what the layers learned halves in weight after this much event time.
    max_pending : most predictions waiting per head; more are not recorded (the layer needs a sample, not all).
    """

    def __init__(self, forget_half_life_s: float = 7 * 86400.0, max_pending: int = 50_000):
        self.layers = [OnlineLogit(np.array([0.0, 1.0]), np.array([1.0, 0.5]), forget_half_life_s)
                       for _ in HORIZONS_S]
        self.max_pending = max_pending
        self._pending = [_Pending() for _ in HORIZONS_S]

    @property
    def outcomes(self) -> int:
        """Outcomes learned from (of the 5-minute head, which resolves first)."""
        return int(self.layers[0].outcomes)

    def apply(self, probs: np.ndarray) -> np.ndarray:
        """[B, 2] calibrated probabilities of [B, 2] model probabilities."""
        z = log_odds(probs)
        out = np.empty_like(z)
        for h, layer in enumerate(self.layers):
            b, a = layer.mean
            out[:, h] = sigmoid(a * z[:, h] + b)
        return out

    def record(self, users: np.ndarray, ts: np.ndarray | float, probs: np.ndarray,
               observable: np.ndarray | None = None) -> None:
        """Remember the model's (uncalibrated) predictions for users at ``ts`` until their outcome is known;
        ``observable`` [B, 2] leaves out the heads whose outcome will never be known (offline, at a data's end)."""
        ts = np.broadcast_to(np.asarray(ts, np.float64), (len(users),))
        for h, pending in enumerate(self._pending):
            keep = np.ones(len(users), bool) if observable is None else observable[:, h]
            keep &= np.cumsum(keep) <= self.max_pending - len(pending)
            if keep.any():
                pending.add(users[keep], ts[keep], log_odds(probs[keep, h]))

    def resolve(self, watermark: float, converted: Callable[[np.ndarray, np.ndarray, float], np.ndarray]) -> int:
        """Learn from every prediction whose horizon ended before ``watermark``; returns how many.

        ``converted(users, ts, horizon_s)`` says whether each user converted within the horizon after ``ts``.
        """
        learned = 0
        for h, (pending, layer) in enumerate(zip(self._pending, self.layers)):
            users, ts, z = pending.pop_due(watermark - HORIZONS_S[h])
            if len(users):
                y = converted(users, ts, HORIZONS_S[h]).astype(np.float64)
                layer.update(np.c_[np.ones(len(z)), z], y, np.ones(len(z)), watermark)
                learned += len(users)
        return learned

    def describe(self) -> dict:
        return {f"purchase_{int(h // 60)}m": {"slope": float(layer.mean[1]), "intercept": float(layer.mean[0]),
                                              "outcomes": int(layer.outcomes)}
                for h, layer in zip(HORIZONS_S, self.layers)}


class _Pending:
    """Predictions in the order they were made (so in time order)."""

    def __init__(self) -> None:
        self.users = np.zeros(0, np.int64)
        self.ts = np.zeros(0)
        self.z = np.zeros(0)

    def __len__(self) -> int:
        return len(self.ts)

    def add(self, users, ts, z) -> None:
        self.users = np.concatenate([self.users, users])
        self.ts = np.concatenate([self.ts, ts])
        self.z = np.concatenate([self.z, z])

    def pop_due(self, cutoff: float):
        due = self.ts < cutoff
        out = self.users[due], self.ts[due], self.z[due]
        if due.any():
            self.users, self.ts, self.z = self.users[~due], self.ts[~due], self.z[~due]
        return out
