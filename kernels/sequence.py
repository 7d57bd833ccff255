"""Engagement score of action sequences: gather, decay, product, reduce."""
from __future__ import annotations

from typing import Any

import numpy as np

from ._arrays import for_backend, like
from .backend import implementation, resolve_backend


def sequence_scores_numpy(
    actions: np.ndarray,
    ages_s: np.ndarray,
    lengths: np.ndarray,
    theta: np.ndarray,
    lift: np.ndarray,
    *,
    half_life_s: float,
) -> np.ndarray:
    """NumPy reference of 1 - prod_k (1 - min(1, theta[a_k] * lift[a_{k-1}, a_k] * 2^(-age_k / half_life_s)))."""
    return _sequence_scores_numpy_many(actions, ages_s, lengths, [(theta, lift)], half_life_s=half_life_s)[0]


def _sequence_scores_numpy_many(actions, ages_s, lengths, weights, *, half_life_s: float) -> list[np.ndarray]:
    """The reference for several (theta, lift) pairs over the same windows: what only depends on the windows
    (codes, previous codes, decay) is computed once."""
    batch, window = actions.shape
    valid = np.arange(window)[None, :] < np.asarray(lengths)[:, None]
    codes = np.where(valid, actions, 0).astype(np.int64)
    prev = np.concatenate([codes[:, :1], codes[:, :-1]], axis=1)
    decay = np.where(valid, np.exp2(-np.asarray(ages_s, dtype=np.float64) / float(half_life_s)), 0.0)
    out = []
    for theta, lift in weights:
        n_actions = theta.shape[1]
        # Flat indexes: a take on the raveled tables is cheaper than take_along_axis and 2-D fancy indexing.
        weight = np.asarray(theta, dtype=np.float64).ravel().take(np.arange(batch)[:, None] * n_actions + codes)
        step_lift = np.asarray(lift, dtype=np.float64).ravel().take(prev * n_actions + codes)
        step_lift[:, 0] = 1.0
        p = np.minimum(1.0, weight * step_lift * decay)  # 0 past each row's length, where decay is 0
        out.append((1.0 - np.prod(1.0 - p, axis=1)).astype(np.float32))
    return out


def _arange_like(x: Any, n: int) -> Any:
    """0..n-1 in the array module (and on the device) of ``x``."""
    module = type(x).__module__
    if module.startswith("torch"):
        import torch

        return torch.arange(n, device=x.device)
    if module.startswith("cupy"):
        import cupy

        return cupy.arange(n)
    return np.arange(n)


def _check_shapes(actions, ages_s, lengths, theta, lift) -> None:
    """From metadata alone: never waits for a device."""
    if actions.ndim != 2:
        raise ValueError(f"actions must be [B, K], got shape {tuple(actions.shape)}")
    batch, window = actions.shape
    if tuple(ages_s.shape) != tuple(actions.shape):
        raise ValueError(f"ages_s must match actions {tuple(actions.shape)}, got {tuple(ages_s.shape)}")
    if tuple(lengths.shape) != (batch,):
        raise ValueError(f"lengths must be [{batch}], got {tuple(lengths.shape)}")
    if theta.ndim != 2 or theta.shape[0] != batch:
        raise ValueError(f"theta must be [{batch}, A], got {tuple(theta.shape)}")
    n_actions = theta.shape[1]
    if tuple(lift.shape) != (n_actions, n_actions):
        raise ValueError(f"lift must be [{n_actions}, {n_actions}], got {tuple(lift.shape)}")


def _check_values(actions, lengths, n_actions) -> None:
    """Lengths and codes in range, from a few reductions where the arrays are (NumPy and CuPy)."""
    batch, window = actions.shape
    if batch and (int(lengths.min()) < 0 or int(lengths.max()) > window):
        raise ValueError(f"lengths must lie in [0, {window}]")
    valid = _arange_like(actions, window)[None, :] < lengths[:, None]
    used = actions[valid]
    if used.shape[0] and (int(used.min()) < 0 or int(used.max()) >= n_actions):
        raise ValueError(f"action codes must lie in [0, {n_actions}) within each row's length")


def sequence_scores(
    actions: Any,
    ages_s: Any,
    lengths: Any,
    theta: Any,
    lift: Any,
    *,
    half_life_s: float,
    backend: str | None = None,
    check: bool = True,
) -> Any:
    """Score per row, float32 [B], of the array kind of ``actions``.

    actions int32 [B, K] (codes, left-aligned, oldest first), ages_s float32 [B, K], lengths int32 [B],
    theta float32 [B, A] (each row's weights), lift float32 [A, A] (lift[prev, cur]).
    ``backend=None`` uses the resolver's automatic choice.

    ``check`` raises ValueError for a length outside [0, K] or a code outside [0, A) within a row's
    length. On a device that waits for the device, so callers passing their own valid windows (the
    engine) turn it off. Shapes are always checked, from metadata.
    """
    if not half_life_s > 0:
        raise ValueError(f"half_life_s must be > 0, got {half_life_s}")
    name = resolve_backend(backend)
    args = [for_backend(x, name) for x in (actions, ages_s, lengths, theta, lift)]
    _check_shapes(*args)
    if name == "triton":  # the kernel checks what it reads and never reads out of bounds
        return like(implementation("sequence_scores", name)(*args, half_life_s=half_life_s, check=check), actions)
    if check:
        _check_values(args[0], args[2], args[3].shape[1])
    return like(implementation("sequence_scores", name)(*args, half_life_s=half_life_s), actions)


def sequence_scores_many(
    actions: Any,
    ages_s: Any,
    lengths: Any,
    weights: list[tuple[Any, Any]],
    *,
    half_life_s: float,
    backend: str | None = None,
    check: bool = True,
) -> list[Any]:
    """:func:`sequence_scores` of the same windows under several (theta, lift) pairs, in that order.

    NumPy computes what depends only on the windows once; the device backends launch once per pair.
    """
    name = resolve_backend(backend)
    if name != "numpy":
        return [sequence_scores(actions, ages_s, lengths, theta, lift, half_life_s=half_life_s, backend=name,
                                check=check) for theta, lift in weights]
    if not half_life_s > 0:
        raise ValueError(f"half_life_s must be > 0, got {half_life_s}")
    arrays = [for_backend(x, name) for x in (actions, ages_s, lengths)]
    pairs = [(for_backend(theta, name), for_backend(lift, name)) for theta, lift in weights]
    for theta, lift in pairs:
        _check_shapes(*arrays, theta, lift)
    if check:  # the windows once per vocabulary size, not once per pair
        for n_actions in {theta.shape[1] for theta, _ in pairs}:
            _check_values(arrays[0], arrays[2], n_actions)
    scores = _sequence_scores_numpy_many(*arrays, pairs, half_life_s=half_life_s)
    return [like(score, actions) for score in scores]

