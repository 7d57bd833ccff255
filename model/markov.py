"""First-order Markov chain over consecutive actions within a session."""
from __future__ import annotations

import numpy as np


class MarkovChain:
    """Forgetting transition counts ``counts[prev, next]``; row ``n_actions`` is 'session start'."""

    def __init__(self, n_actions: int, smoothing: float = 1.0):
        self.n_actions = n_actions
        self.smoothing = smoothing
        self.counts = np.zeros((n_actions + 1, n_actions))

    @property
    def start(self) -> int:
        return self.n_actions

    def add(self, prev: np.ndarray, nxt: np.ndarray, weight: np.ndarray) -> None:
        np.add.at(self.counts, (prev, nxt), weight)

    def scale(self, factor: float) -> None:
        self.counts *= factor

    def probabilities(self) -> np.ndarray:
        """P(next | prev) for every row, Dirichlet-smoothed toward the overall next-action mix."""
        overall = self.counts.sum(axis=0) + self.smoothing
        overall /= overall.sum()
        prior = self.smoothing * self.n_actions * overall
        return (self.counts + prior) / (self.counts.sum(axis=1, keepdims=True) + prior.sum())
