"""The engine state that the scoring kernels read, resident on the device of a GPU backend.

The host arrays stay the source of truth (snapshots, the Markov chain, attribution). After each
applied batch the rows of the users it touched, and the small posterior and lift tables, are
copied to the device; a scoring batch then sends only user indexes in and brings scores out.
"""
from __future__ import annotations

import numpy as np
import torch

from .windows import UserWindows


class DeviceState:
    """User windows, per-context posteriors and lifts as torch tensors on one device."""

    def __init__(self, window_size: int, device: str):
        self.device = torch.device(device)
        self.size = window_size
        z = dict(device=self.device)
        self.actions = torch.zeros((0, window_size), dtype=torch.int32, **z)
        self.ts = torch.zeros((0, window_size), dtype=torch.float64, **z)
        self.head = torch.zeros(0, dtype=torch.int64, **z)
        self.length = torch.zeros(0, dtype=torch.int64, **z)
        self.last_ctx = torch.zeros(0, dtype=torch.int64, **z)
        self.alpha = self.beta = self.lift = self.prior_mean = None

    def _to_device(self, array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(device=self.device, dtype=dtype)

    def _ensure(self, rows: int) -> None:
        have = self.actions.shape[0]
        if rows <= have:
            return
        grow = max(rows, 2 * have, 1024) - have
        cat = lambda t: torch.cat([t, torch.zeros((grow, *t.shape[1:]), dtype=t.dtype, device=self.device)])  # noqa: E731
        self.actions, self.ts = cat(self.actions), cat(self.ts)
        self.head, self.length, self.last_ctx = cat(self.head), cat(self.length), cat(self.last_ctx)

    def push_users(self, windows: UserWindows, rows: np.ndarray) -> None:
        """Copy these users' windows from the host."""
        self._ensure(len(windows.ids))
        if not len(rows):
            return
        index = self._to_device(rows, torch.int64)
        self.actions[index] = self._to_device(windows.actions[rows], torch.int32)
        self.ts[index] = self._to_device(windows.ts[rows], torch.float64)
        self.head[index] = self._to_device(windows.head[rows], torch.int64)
        self.length[index] = self._to_device(windows.length[rows], torch.int64)
        self.last_ctx[index] = self._to_device(windows.last_ctx[rows], torch.int64)

    def push_tables(self, alpha: np.ndarray, beta: np.ndarray, lift: np.ndarray, prior_mean: np.ndarray) -> None:
        """Copy the posterior tables [contexts, actions], the lifts [actions, actions] and the prior means."""
        self.alpha = self._to_device(alpha, torch.float32)
        self.beta = self._to_device(beta, torch.float32)
        self.lift = self._to_device(lift, torch.float32)
        self.prior_mean = self._to_device(prior_mean, torch.float32)

    def gather(self, users: np.ndarray, now_s: float, default_ctx: int):
        """Windows oldest first, ages, lengths and contexts of ``users`` (-1 = unknown), on the device."""
        u = self._to_device(users, torch.int64)
        known = u >= 0
        rows = torch.where(known, u, torch.zeros_like(u))
        if self.actions.shape[0] == 0:
            shape = (len(users), self.size)
            zeros = torch.zeros(shape, dtype=torch.int32, device=self.device)
            return zeros, zeros.float(), torch.zeros(len(users), dtype=torch.int32, device=self.device), \
                torch.full((len(users),), default_ctx, dtype=torch.int64, device=self.device)
        lengths = torch.where(known, self.length[rows], torch.zeros_like(rows))
        offsets = torch.arange(self.size, device=self.device)
        slots = (self.head[rows, None] - lengths[:, None] + offsets[None, :]) % self.size
        actions = self.actions[rows[:, None], slots]
        ages = (now_s - self.ts[rows[:, None], slots]).clamp(min=0.0).to(torch.float32)
        ctx = torch.where(known, self.last_ctx[rows], torch.full_like(rows, default_ctx))
        return actions, ages, lengths.to(torch.int32), ctx
