"""Attribution: each action becomes a success or a failure once its horizon has closed.

Every action waits, once per horizon, until the watermark passes ``ts + horizon``; it is then a
success if the same user converted within ``[ts, ts + horizon]``. Only events that arrive on
time take part (the engine filters late ones): a conversion that arrives on time cannot fall in
the horizon of an action that has already been resolved, so outcomes do not depend on when the
sweep runs. Resolving successes and
failures at the same point in event time (rather than successes as soon as the conversion
arrives) keeps the posteriors free of the delayed-feedback bias, where successes would be counted
a horizon before the failures that balance them, and makes the result the same however the
event stream is cut into batches.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._rings import grow, plan_ring_append, ring_write

# Conversions remembered per user: enough for any realistic number of purchases in one horizon.
CONVERSIONS_KEPT = 16
_MAX_CHUNKS = 32
_FIELDS = ("user", "ts", "action", "prev", "ctx")


@dataclass(frozen=True)
class Resolved:
    """Actions whose horizon has closed, with their outcome."""

    user: np.ndarray
    ts: np.ndarray
    action: np.ndarray
    prev: np.ndarray
    ctx: np.ndarray
    deadline: np.ndarray
    success: np.ndarray

    def __len__(self) -> int:
        return len(self.user)


class _DeadlineQueue:
    """Pending actions of one horizon, in chunks each sorted by time."""

    def __init__(self, horizon_s: float):
        self.horizon_s = horizon_s
        self.chunks: list[dict[str, np.ndarray]] = []

    def __len__(self) -> int:
        return sum(len(c["user"]) for c in self.chunks)

    def push(self, chunk: dict[str, np.ndarray]) -> None:
        self.chunks.append(chunk)
        if len(self.chunks) > _MAX_CHUNKS:
            self.compact()

    def compact(self) -> None:
        if len(self.chunks) > 1:
            merged = {k: np.concatenate([c[k] for c in self.chunks]) for k in _FIELDS}
            order = np.argsort(merged["ts"], kind="stable")
            self.chunks = [{k: v[order] for k, v in merged.items()}]

    def pop_due(self, watermark: float) -> dict[str, np.ndarray] | None:
        """Remove and return the actions whose horizon ends before ``watermark``."""
        cutoff = watermark - self.horizon_s
        taken, kept = [], []
        for chunk in self.chunks:
            n = int(np.searchsorted(chunk["ts"], cutoff, side="left"))
            if n:
                taken.append({k: v[:n] for k, v in chunk.items()})
            if n < len(chunk["ts"]):
                kept.append({k: v[n:] for k, v in chunk.items()} if n else chunk)
        self.chunks = kept
        if not taken:
            return None
        return {k: np.concatenate([c[k] for c in taken]) for k in _FIELDS}

    def drop_user(self, user: int) -> None:
        self.chunks = [{k: v[c["user"] != user] for k, v in c.items()} for c in self.chunks]


class Attribution:
    """One deadline queue per distinct horizon, and the recent conversion times of users who convert.

    Most users never convert, so conversion rings are rows of a compact table reached through
    ``conv_row[user]`` (-1: none yet) rather than a ring for every user.
    """

    def __init__(self, horizons_s: tuple[float, ...]):
        self.horizons_s = tuple(sorted(set(float(h) for h in horizons_s)))
        self._queues = [_DeadlineQueue(h) for h in self.horizons_s]
        self.conv_row = np.zeros(0, np.int64)
        self.conv_ts = np.full((0, CONVERSIONS_KEPT), -np.inf)
        self.conv_head = np.zeros(0, np.int32)
        self.converters = 0

    @property
    def pending(self) -> int:
        """Actions still waiting for their longest horizon."""
        return len(self._queues[-1])

    def add(self, user, ts, action, prev, ctx, is_conversion) -> None:
        """Record new actions (each waits for every horizon) and the conversions among them."""
        self.conv_row = grow(self.conv_row, int(user.max()) + 1 if len(user) else 0, -1)
        if is_conversion.any():
            converting = user[is_conversion]
            new = np.unique(converting[self.conv_row[converting] < 0])
            self.conv_row[new] = self.converters + np.arange(len(new))
            self.converters += len(new)
            self.conv_ts = grow(self.conv_ts, self.converters, -np.inf)
            self.conv_head = grow(self.conv_head, self.converters, 0)
            plan = plan_ring_append(self.conv_row[converting])
            ring_write(plan, self.conv_head, CONVERSIONS_KEPT, [(self.conv_ts, ts[is_conversion][plan.order])])
        order = np.argsort(ts, kind="stable")
        chunk = dict(zip(_FIELDS, (user[order], ts[order], action[order], prev[order], ctx[order])))
        for queue in self._queues:
            queue.push(chunk)

    def sweep(self, watermark: float, conversion_code: int) -> dict[float, Resolved]:
        """Resolve, per horizon, every pending action whose horizon ends before ``watermark``."""
        out = {}
        for queue in self._queues:
            due = queue.pop_due(watermark)
            if due is None:
                continue
            success = self.converted_within(due["user"], due["ts"], due["action"], queue.horizon_s, conversion_code)
            out[queue.horizon_s] = Resolved(**due, deadline=due["ts"] + queue.horizon_s, success=success)
        return out

    def converted_within(self, user, ts, action, horizon_s: float, conversion_code: int) -> np.ndarray:
        """Whether each (user, ts, action) was followed by the user's conversion within ``horizon_s``."""
        known = user < len(self.conv_row)
        rows = np.where(known, self.conv_row[np.where(known, user, 0)] if len(self.conv_row) else -1, -1)
        conv = np.where((rows >= 0)[:, None], self.conv_ts[np.maximum(rows, 0)] if self.converters else -np.inf, -np.inf)
        ts = np.asarray(ts)[:, None]
        # A conversion is not its own success; one at the same second as another action counts for it.
        not_self = (conv > ts) | ((conv == ts) & (np.asarray(action) != conversion_code)[:, None])
        return (not_self & (conv <= ts + horizon_s)).any(axis=1)

    def erase(self, user: int) -> None:
        """Drop a user's pending actions and conversion times."""
        for queue in self._queues:
            queue.drop_user(user)
        if user < len(self.conv_row) and self.conv_row[user] >= 0:
            self.conv_ts[self.conv_row[user]] = -np.inf

    def state_dict(self) -> dict[str, np.ndarray]:
        state: dict[str, np.ndarray] = {
            "conv_row": self.conv_row.copy(),
            "conv_ts": self.conv_ts[: self.converters].copy(),
            "conv_head": self.conv_head[: self.converters].copy(),
        }
        for i, queue in enumerate(self._queues):
            queue.compact()
            chunk = queue.chunks[0] if queue.chunks else None
            for k in _FIELDS:
                state[f"pending{i}_{k}"] = chunk[k].copy() if chunk else np.zeros(0, np.float64 if k == "ts" else np.int64)
        return state

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.conv_row = state["conv_row"].copy()
        self.conv_ts, self.conv_head = state["conv_ts"].copy(), state["conv_head"].copy()
        self.converters = len(self.conv_ts)
        for i, queue in enumerate(self._queues):
            chunk = {k: state[f"pending{i}_{k}"].copy() for k in _FIELDS}
            queue.chunks = [chunk] if len(chunk["user"]) else []
