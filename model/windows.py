"""Each user's last K events, kept as rings in flat arrays indexed by a user number."""
from __future__ import annotations

import numpy as np

from ._rings import grow, plan_ring_append, ring_write
from .interner import Interner, dense_ids
from .sequences import gap_buckets

# Per-event columns kept beside action and time, for the next-action Transformer's inputs.
FEATURE_RINGS = {"ctx": np.int32, "gap": np.int16, "category": np.int32, "item": np.int32}


class UserWindows:
    """User ids to dense indexes, and per user the last ``size`` events in arrival order.

    Per event: action, time, context code, time-gap bucket, hashed category and hashed item.
    """

    def __init__(self, size: int):
        self.size = size
        self.users = Interner()  # shared with the item catalog, which keeps its per-user columns by these rows
        self.actions = np.zeros((0, size), np.int32)
        self.ts = np.zeros((0, size), np.float64)
        self.head = np.zeros(0, np.int32)
        self.length = np.zeros(0, np.int32)
        self.last_ctx = np.zeros(0, np.int32)
        self.features = {name: np.zeros((0, size), dtype) for name, dtype in FEATURE_RINGS.items()}

    def __len__(self) -> int:
        return len(self.index)

    @property
    def index(self) -> dict[str, int]:
        """User id -> row."""
        return self.users.ids

    @property
    def ids(self) -> list[str | None]:
        """Row -> user id (None once erased)."""
        return self.users.names

    def lookup(self, user_ids, *, create: bool) -> np.ndarray:
        """Dense index per user id; -1 for unknown ids unless ``create``."""
        # First-appearance order, so the numbering does not depend on how events were batched.
        names = user_ids.tolist() if isinstance(user_ids, np.ndarray) else list(user_ids)
        rows = dense_ids(names, self.users.ids, self.users.names if create else None)
        if create:
            self._ensure(len(self.ids))
        return rows

    def _ensure(self, rows: int) -> None:
        self.actions = grow(self.actions, rows, 0)
        self.ts = grow(self.ts, rows, 0.0)
        self.head = grow(self.head, rows, 0)
        self.length = grow(self.length, rows, 0)
        self.last_ctx = grow(self.last_ctx, rows, 0)
        self.features = {name: grow(ring, rows, 0) for name, ring in self.features.items()}

    def push(self, users: np.ndarray, actions: np.ndarray, ts: np.ndarray, ctx: np.ndarray, category=None, item=None):
        """Append events in arrival order; return each event's previous (action, time), action -1 if none."""
        plan = plan_ring_append(users)
        a_sorted, t_sorted = actions[plan.order], ts[plan.order]
        owners = plan.owners
        stored_last = (self.head[owners] - 1) % self.size
        has_stored = self.length[owners] > 0
        prev_a = np.empty(len(owners), np.int32)
        prev_t = np.empty(len(owners), np.float64)
        prev_a[1:], prev_t[1:] = a_sorted[:-1], t_sorted[:-1]
        f = plan.first
        prev_a[f] = np.where(has_stored[f], self.actions[owners[f], stored_last[f]], -1)
        prev_t[f] = np.where(has_stored[f], self.ts[owners[f], stored_last[f]], np.nan)

        ctx_sorted = ctx[plan.order]
        gap_sorted = gap_buckets(t_sorted - np.nan_to_num(prev_t, nan=0.0), prev_a < 0)
        cat_sorted = np.zeros(len(owners), np.int32) if category is None else category[plan.order]
        item_sorted = np.zeros(len(owners), np.int32) if item is None else item[plan.order]
        ring_write(plan, self.head, self.size, [
            (self.actions, a_sorted), (self.ts, t_sorted), (self.features["ctx"], ctx_sorted),
            (self.features["gap"], gap_sorted), (self.features["category"], cat_sorted),
            (self.features["item"], item_sorted),
        ])
        self.length[plan.unique_owners] = np.minimum(self.size, self.length[plan.unique_owners] + plan.counts)
        self.last_ctx[plan.unique_owners] = ctx_sorted[plan.last]

        out_a, out_t = np.empty_like(prev_a), np.empty_like(prev_t)
        out_a[plan.order], out_t[plan.order] = prev_a, prev_t
        return out_a, out_t

    def _flat_slots(self, users: np.ndarray):
        """(indexes [B, K] into the raveled rings, oldest first, or None while there are no rows; lengths [B]) of
        ``users`` (-1 = unknown, length 0).

        A ``take`` at flat indexes, with the ring's wrap read from a small table, gathers about 2.5 times as fast as
        2-D fancy indexing with a modulo over [B, K].
        """
        known = users >= 0
        rows = np.where(known, users, 0)
        lengths = np.where(known, self.length[rows] if len(self.length) else 0, 0).astype(np.int32)
        if not len(self.length):
            return None, lengths
        oldest = (self.head[rows] - lengths) % self.size
        flat = (rows * self.size)[:, None] + self._wrap.take(oldest[:, None] + np.arange(self.size)[None, :])
        return flat, lengths

    @property
    def _wrap(self) -> np.ndarray:
        """Slot of each offset from 0 to 2K - 1."""
        return np.arange(2 * self.size) % self.size

    def gather(self, users: np.ndarray, *rings: str):
        """Windows of ``users`` (-1 = unknown), oldest first: actions [B, K], times [B, K], lengths [B], then the
        named feature ``rings`` [B, K] each."""
        flat, lengths = self._flat_slots(users)
        if flat is None:
            shape = (len(users), self.size)
            return (np.zeros(shape, np.int32), np.zeros(shape, np.float64), lengths,
                    *(np.zeros(shape, FEATURE_RINGS[name]) for name in rings))
        return (self.actions.ravel().take(flat), self.ts.ravel().take(flat), lengths,
                *(self.features[name].ravel().take(flat) for name in rings))

    def gather_features(self, users: np.ndarray) -> dict[str, np.ndarray]:
        """The per-event feature rings of ``users``, oldest first, [B, K] each (left-aligned like :meth:`gather`)."""
        return dict(zip(FEATURE_RINGS, self.gather(users, *FEATURE_RINGS)[3:]))

    def last_two(self, users: np.ndarray):
        """Each user's last and previous action (-1 if none) with their times, and window length."""
        known = users >= 0
        rows = np.where(known, users, 0)
        if not len(self.length):
            none = np.full(len(users), -1, np.int32)
            return none, none, np.zeros(len(users)), np.zeros(len(users)), np.zeros(len(users), np.int32)
        lengths = np.where(known, self.length[rows], 0)
        last = (self.head[rows] - 1) % self.size
        before = (self.head[rows] - 2) % self.size
        cur = np.where(lengths > 0, self.actions[rows, last], -1)
        prev = np.where(lengths > 1, self.actions[rows, before], -1)
        return cur, prev, self.ts[rows, last], self.ts[rows, before], lengths

    def last_context(self, users: np.ndarray, default: int) -> np.ndarray:
        """Context code of each user's latest event; ``default`` for unknown users."""
        if not len(self.last_ctx):
            return np.full(len(users), default, np.int32)
        return np.where(users >= 0, self.last_ctx[np.maximum(users, 0)], default)

    def erase(self, user_id: str) -> int | None:
        """Forget a user; their index is never reused. Returns the index, or None if unknown."""
        idx = self.users.forget(user_id)
        if idx is not None:
            self.length[idx] = 0
            self.actions[idx] = 0
            self.ts[idx] = 0.0
            for ring in self.features.values():
                ring[idx] = 0
        return idx

    def state_dict(self) -> dict[str, np.ndarray]:
        n = len(self.ids)
        blob = "\n".join(uid or "" for uid in self.ids).encode()
        return {
            "user_ids": np.frombuffer(blob, dtype=np.uint8).copy(),
            "n_users": np.array(n),
            "actions": self.actions[:n].copy(),
            "ts": self.ts[:n].copy(),
            "head": self.head[:n].copy(),
            "length": self.length[:n].copy(),
            "last_ctx": self.last_ctx[:n].copy(),
            **{f"feature.{name}": ring[:n].copy() for name, ring in self.features.items()},
        }

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        n = int(state["n_users"])
        self.users.load([uid or None for uid in bytes(state["user_ids"]).decode().split("\n")] if n else [])
        self.actions, self.ts = state["actions"].copy(), state["ts"].copy()
        self.head, self.length = state["head"].copy(), state["length"].copy()
        self.last_ctx = state["last_ctx"].copy()
        self.features = {name: state[f"feature.{name}"].copy() for name in FEATURE_RINGS}
