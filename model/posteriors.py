"""Beta posteriors: heuristic priors plus forgetting evidence; transition lifts."""
from __future__ import annotations

import numpy as np
from scipy.special import betaincinv

LIFT_MIN, LIFT_MAX = 0.25, 4.0


class Evidence:
    """Success and failure pseudo-counts that all forget at the same rate."""

    def __init__(self, shape: tuple[int, ...]):
        self.success = np.zeros(shape)
        self.failure = np.zeros(shape)

    def add(self, index: tuple[np.ndarray, ...], success: np.ndarray, weight: np.ndarray) -> None:
        np.add.at(self.success, index, np.where(success, weight, 0.0))
        np.add.at(self.failure, index, np.where(success, 0.0, weight))

    def scale(self, factor: float) -> None:
        self.success *= factor
        self.failure *= factor


def prior_params(means: np.ndarray, strength: float) -> tuple[np.ndarray, np.ndarray]:
    """Beta(alpha0, beta0) with the given means and pseudo-count."""
    return means * strength, (1.0 - means) * strength


def beta_mean(alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    return alpha / (alpha + beta)


def beta_interval(alpha: np.ndarray, beta: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Equal-tailed credible interval."""
    tail = (1.0 - level) / 2.0
    return betaincinv(alpha, beta, tail), betaincinv(alpha, beta, 1.0 - tail)


def shrunk_rate(success: np.ndarray, failure: np.ndarray, base: np.ndarray, strength: float) -> np.ndarray:
    """Posterior mean of a Beta prior centred on ``base`` with pseudo-count ``strength``."""
    return (success + strength * base) / (success + failure + strength)


def transition_lift(pair_s: np.ndarray, pair_f: np.ndarray, action_mean: np.ndarray, strength: float) -> np.ndarray:
    """lift[prev, cur] = P(conv | prev -> cur) / P(conv | cur), clipped to [0.25, 4]; 1 without evidence."""
    pair_mean = shrunk_rate(pair_s, pair_f, action_mean[None, :], strength)
    return np.clip(pair_mean / action_mean[None, :], LIFT_MIN, LIFT_MAX)
