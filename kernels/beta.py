"""Batched, counter-based Thompson draws from Beta posteriors."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._arrays import for_backend, like
from .backend import implementation, resolve_backend

_MASK64 = (1 << 64) - 1


def _log_gamma_draws(gen: np.random.Generator, shape_k: np.ndarray) -> np.ndarray:
    """log of Gamma(k, 1) draws; for k < 1 the boost G(k) = G(k + 1) * U^(1/k) stays in log space."""
    small = shape_k < 1.0
    log_g = np.log(gen.standard_gamma(np.where(small, shape_k + 1.0, shape_k)))
    u = gen.random(shape_k.shape)
    # 1 - u lies in (0, 1], so the log is finite; 1/k can be 1000 and the sum still is.
    return log_g + np.where(small, np.log1p(-u) / shape_k, 0.0)


def beta_sample_numpy(alpha: np.ndarray, beta: np.ndarray, *, seed: int, offset: int = 0) -> np.ndarray:
    """NumPy reference: Beta(alpha, beta) draws as float32, keyed by (seed, offset) through Philox."""
    a = np.asarray(alpha, dtype=np.float64)
    b = np.asarray(beta, dtype=np.float64)
    gen = np.random.Generator(np.random.Philox(key=(int(seed) & _MASK64) | ((int(offset) & _MASK64) << 64)))
    log_x = _log_gamma_draws(gen, a)
    log_y = _log_gamma_draws(gen, b)
    d = log_x - log_y
    # X / (X + Y) = sigmoid(log X - log Y), written so that neither branch overflows.
    e = np.exp(-np.abs(d))
    out = np.where(d >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return out.astype(np.float32)


def beta_sample(alpha: Any, beta: Any, *, seed: int, offset: int = 0, backend: str | None = None,
                check: bool = True) -> Any:
    """Samples of Beta(alpha, beta), float32, same shape and array kind as ``alpha``.

    Counter-based: the same (seed, offset, shape) gives the same samples on the same backend; another
    offset gives independent ones. ``backend=None`` uses the resolver's automatic choice.

    ``check`` raises ValueError for a parameter that is not > 0. On the device that waits for the
    device, so callers passing their own valid tables (the engine) turn it off; the draws of a bad
    parameter are then unspecified, but nothing is read out of bounds.
    """
    name = resolve_backend(backend)
    a, b = for_backend(alpha, name), for_backend(beta, name)
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"alpha and beta must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if int(seed) < 0 or int(offset) < 0:
        raise ValueError(f"seed and offset must be >= 0, got seed={seed}, offset={offset}")
    if name == "triton":  # checked in the kernel, as it reads them
        return like(implementation("beta_sample", name)(a, b, seed=seed, offset=offset, check=check), alpha)
    if check and math.prod(a.shape) and not bool(((a > 0) & (b > 0)).all()):
        raise ValueError("alpha and beta must be > 0 everywhere (and not NaN)")
    return like(implementation("beta_sample", name)(a, b, seed=seed, offset=offset), alpha)
