"""Beta-Bernoulli Thompson sampling over a few arms (signal variants, items), with batched draws."""
from __future__ import annotations

import numpy as np

import kernels

from .posteriors import beta_interval


class ThompsonBandit:
    """One Beta posterior per arm; each choice draws from all of them and takes the best.

    Parameters
    ----------
    n_arms : number of arms.
    prior : Beta(alpha, beta) pseudo-counts every arm starts from.
    seed : seed of the draws; choices are reproducible for a fixed seed and sequence of calls.
    backend : array backend of the draws (see ``kernels.resolve_backend``).
    """

    def __init__(self, n_arms: int, *, prior: tuple[float, float] = (1.0, 1.0), seed: int = 0, backend: str = "numpy"):
        if n_arms < 1:
            raise ValueError(f"a bandit needs at least one arm, got {n_arms}")
        if min(prior) <= 0:
            raise ValueError(f"prior pseudo-counts must be > 0, got {prior}")
        self.prior = (float(prior[0]), float(prior[1]))
        self.alpha = np.full(n_arms, float(prior[0]))
        self.beta = np.full(n_arms, float(prior[1]))
        self.seed, self.backend, self.draws = seed, backend, 0

    def outcomes(self) -> np.ndarray:
        """Outcomes (rewards, whole or fractional) each arm has learned from."""
        return self.alpha + self.beta - sum(self.prior)

    def warming_up(self, min_outcomes: int) -> bool:
        return bool((self.outcomes() < min_outcomes).any())

    def choose(self, n: int = 1, *, floor_share: float = 0.0, min_outcomes: int = 0) -> np.ndarray:
        """``n`` independent choices (arm indexes).

        Until every arm has ``min_outcomes`` outcomes the arms share the traffic evenly (an early lucky streak
        must not starve the others); after that each choice is a Thompson draw from the posteriors, except that
        every arm keeps at least ``floor_share`` of the traffic (so the bandit keeps learning about all of them).
        """
        self.draws += 1
        rng = np.random.default_rng([self.seed, self.draws])
        k = len(self.alpha)
        if self.warming_up(min_outcomes):
            return rng.integers(0, k, n)
        shape = (n, k)
        theta = kernels.beta_sample(
            np.broadcast_to(self.alpha, shape), np.broadcast_to(self.beta, shape),
            seed=self.seed, offset=self.draws, backend=kernels.for_rows(self.backend, n * k), check=False,
        )
        arms = np.asarray(theta).argmax(axis=1)
        explore = rng.random(n) < floor_share * k
        arms[explore] = rng.integers(0, k, int(explore.sum()))
        return arms

    def update(self, arms: np.ndarray, rewards: np.ndarray) -> None:
        """Add Bernoulli rewards (0/1, or a fraction) observed on ``arms``."""
        arms, rewards = np.atleast_1d(arms), np.atleast_1d(np.asarray(rewards, dtype=np.float64))
        if ((rewards < 0) | (rewards > 1)).any():
            raise ValueError("rewards must lie in [0, 1]")
        np.add.at(self.alpha, arms, rewards)
        np.add.at(self.beta, arms, 1.0 - rewards)

    def posterior(self) -> dict[str, list[float]]:
        """Per arm: posterior mean, 95 % interval, alpha, beta and outcomes learned from."""
        lo, hi = beta_interval(self.alpha, self.beta)
        return {
            "mean": (self.alpha / (self.alpha + self.beta)).tolist(),
            "ci95_low": lo.tolist(), "ci95_high": hi.tolist(),
            "alpha": self.alpha.tolist(), "beta": self.beta.tolist(), "outcomes": self.outcomes().tolist(),
        }
