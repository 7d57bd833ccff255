"""Intervals for conversion rates and for the uplift of signalled users over the holdout."""
from __future__ import annotations

import numpy as np
from scipy.stats import norm


def wilson(successes: float, trials: float, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion, clipped to [0, 1]."""
    if trials <= 0:
        return float("nan"), float("nan")
    z = float(norm.ppf(0.5 + level / 2))
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    # Exact arithmetic keeps it inside [0, 1]; rounding can step out by an ulp at 0 or n successes.
    return float(np.clip(centre - half, 0.0, 1.0)), float(np.clip(centre + half, 0.0, 1.0))


def rate_difference(k1: float, n1: float, k2: float, n2: float, level: float = 0.95) -> tuple[float, float, float]:
    """p1 - p2 with Newcombe's hybrid score interval (method 10) in [-1, 1]; sound for small counts, rates near 0."""
    if n1 <= 0 or n2 <= 0:
        return float("nan"), float("nan"), float("nan")
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson(k1, n1, level)
    l2, u2 = wilson(k2, n2, level)
    d = p1 - p2
    lo, hi = d - np.hypot(p1 - l1, u2 - p2), d + np.hypot(u1 - p1, p2 - l2)
    return float(d), float(np.clip(lo, -1.0, 1.0)), float(np.clip(hi, -1.0, 1.0))
