"""What scoring reads, resident on the device of a GPU backend: one packed row per user, and the tenant's tables.

The host arrays stay the source of truth (snapshots, attribution, the catalog). After each applied batch the
rows of the users it touched are packed on the host into one byte array and sent in one copy; the device
scatters them into place. A row holds the user's window oldest first (the Transformer's per-event inputs
among it, computed when the event arrived), and their state on several time scales. The tenant-wide tables
(posteriors, lifts, the chain's conversion rates, item and category shares, the learned predictions'
weights) change only at ticks of event time, and go to the device before the first score after one.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .contexts import context_parts
from .user_state import SCALES_S, UserState
from .windows import UserWindows

_TORCH = {np.dtype(np.int8): torch.int8, np.dtype(np.int16): torch.int16, np.dtype(np.int32): torch.int32,
          np.dtype(np.int64): torch.int64, np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


def row_layout(window: int, n_actions: int) -> np.dtype:
    """The packed row of one user: the window oldest first, then the user's state (C-aligned, so that every
    field can be viewed in place on the device)."""
    k = (window,)
    return np.dtype([
        ("row", np.int64),  # where the row goes on the device: user index + 1 (row 0 is the blank user)
        ("ts", np.float64, k), ("touched", np.float64), ("first_ts", np.float64), ("last_ts", np.float64),
        ("session_start", np.float64), ("last_conversion", np.float64),
        ("counts", np.float32, (len(SCALES_S) * n_actions,)), ("last_gap", np.float32),
        ("session_events", np.float32),
        ("action", np.int32, k), ("category", np.int32, k), ("item", np.int32, k),
        ("length", np.int32), ("last_ctx", np.int32), ("last_item", np.int32), ("last_category", np.int32),
        ("gap", np.int16, k), ("device", np.int8, k), ("daypart", np.int8, k),
    ], align=True)


class Rows:
    """Typed views of packed rows [n, bytes] on the device: ``rows.ts`` is [n, K] float64, and so on."""

    def __init__(self, raw: torch.Tensor, layout: np.dtype):
        self.raw = raw
        for name, (dtype, offset) in layout.fields.items():
            base = dtype.base
            width = int(np.prod(dtype.shape)) if dtype.shape else 1
            view = raw[:, offset:offset + width * base.itemsize].view(_TORCH[base])
            setattr(self, name, view if dtype.shape else view[:, 0])


@dataclass
class Tables:
    """The tenant-wide tables on the device, as of the last tick."""

    alpha: torch.Tensor  # [contexts, actions] float32
    beta: torch.Tensor
    theta: torch.Tensor  # alpha / (alpha + beta)
    lift: torch.Tensor  # [actions, actions]
    prior_mean: torch.Tensor  # [actions]
    conversion_pair: torch.Tensor  # [3, actions + 1, actions] float64: the chain's conversion rates per horizon
    conversion_overall: torch.Tensor  # [3]
    item_rate: torch.Tensor  # [buckets, 2] float32: shrunk conversion share and events seen
    category_rate: torch.Tensor
    weights: torch.Tensor  # [3, width] float64: the learned predictions' posterior means (score, 5 m, 60 m)
    draw_factor: torch.Tensor  # [width, width] float64: the score's posterior spread, S = F F'


class DeviceState:
    """Users' packed rows and the tenant's tables as torch tensors on one device."""

    def __init__(self, window_size: int, n_actions: int, device: str):
        self.device = torch.device(device)
        self.layout = row_layout(window_size, n_actions)
        self.raw = torch.zeros((1, self.layout.itemsize), dtype=torch.uint8, device=self.device)
        self.tables: Tables | None = None
        self.next_probs: torch.Tensor | None = None  # [actions + 1, actions]: the chain's P(next | prev)
        # Bumped whenever a tensor that scoring reads is replaced rather than written in place: a captured CUDA
        # graph reads the tensors it was captured with, so it must be captured again.
        self.generation = 0
        self.graphs: dict = {}  # (batch size, id of the predictor) -> a captured pass (model.device_graphs)
        self.graphs_failed: dict = {}  # id of a predictor whose pass could not be captured -> that predictor

    def to_device(self, array: np.ndarray, out: torch.Tensor | None = None) -> torch.Tensor:
        """One host-to-device copy, into ``out`` where given (the one place a copy in is made, so that tests can
        count them)."""
        host = torch.from_numpy(np.ascontiguousarray(array))
        if out is not None:
            return out.copy_(host, non_blocking=True)
        return host.to(self.device, non_blocking=True)

    def _ensure(self, users: int) -> None:
        have = self.raw.shape[0]
        if users + 1 <= have:
            return
        grow = max(users + 1, 2 * have, 1024) - have
        self.raw = torch.cat([self.raw, self.raw.new_zeros((grow, self.raw.shape[1]))])
        self.generation += 1

    def push_users(self, windows: UserWindows, state: UserState, users: np.ndarray) -> None:
        """Copy these users' rows from the host: packed there, one copy in, scattered here."""
        self._ensure(len(windows.ids))
        if not len(users):
            return
        packed = pack_rows(self.layout, windows, state, users)
        rows = self.to_device(packed.view(np.uint8).reshape(len(users), -1))
        self.raw[Rows(rows, self.layout).row] = rows

    def push_tables(self, tables: Tables) -> None:
        """Written in place where the shapes allow (they change only with a config)."""
        old = self.tables
        if old is not None and all(getattr(old, f).shape == getattr(tables, f).shape for f in Tables.__dataclass_fields__):
            for field in Tables.__dataclass_fields__:
                getattr(old, field).copy_(getattr(tables, field))
            return
        self.tables = tables
        self.generation += 1

    def push_next_probs(self, probabilities: np.ndarray) -> None:
        if self.next_probs is not None and self.next_probs.shape == probabilities.shape:
            self.to_device(probabilities, out=self.next_probs)
            return
        self.next_probs = self.to_device(probabilities)
        self.generation += 1

    def gather(self, users: torch.Tensor) -> Rows:
        """The packed rows of ``users`` (dense indexes on the device, -1 unknown: the blank row)."""
        return Rows(self.raw[users + 1], self.layout)


def pack_rows(layout: np.dtype, windows: UserWindows, state: UserState, users: np.ndarray) -> np.ndarray:
    """The packed rows of ``users`` (dense indexes), from the host arrays."""
    out = np.zeros(len(users), layout)
    out["row"] = users + 1
    actions, ts, lengths = windows.gather(users)
    rings = windows.gather_features(users)
    _, device, daypart = context_parts(rings["ctx"])
    out["action"], out["ts"], out["length"] = actions, ts, lengths
    out["gap"], out["category"], out["item"] = rings["gap"], rings["category"], rings["item"]
    out["device"], out["daypart"] = device, daypart
    out["last_ctx"] = windows.last_ctx[users]
    state.reserve(int(users.max()) + 1)
    for name in ("touched", "first_ts", "last_ts", "session_start", "last_conversion", "last_gap",
                 "session_events", "last_item", "last_category"):
        out[name] = getattr(state, name)[users]
    out["counts"] = state.counts[users].reshape(len(users), -1)
    return out
