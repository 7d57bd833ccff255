"""Each user's state on several time scales, updated in O(1) per event.

The window (``windows.py``) remembers a user's last K events; this remembers what K events cannot:
decayed action counts over minutes, hours, days and the whole history, conversions so far, the
session so far and the time since the last conversion. Counts decay lazily: each user's counts
are exact as of their last update and are decayed to the time they are read.
"""
from __future__ import annotations

import numpy as np

from ._rings import grow, plan_ring_append

# Half-lives of the decayed counts: minutes, an hour, a day, and none (lifetime counts).
SCALES_S = (300.0, 3600.0, 86400.0, np.inf)
NAMES = ("5m", "1h", "1d", "life")


def _decay(elapsed_s: np.ndarray) -> np.ndarray:
    """[n, scales] factors 2^(-elapsed / half-life); 1 for the lifetime scale and for negative elapsed."""
    elapsed = np.maximum(np.asarray(elapsed_s, np.float64), 0.0)[:, None]
    return np.exp2(-elapsed / np.asarray(SCALES_S)[None, :]).astype(np.float32)


class UserState:
    """Per user (dense index shared with ``UserWindows``): decayed counts and session and conversion state.

    Parameters
    ----------
    n_actions : size of the tenant's vocabulary.
    conversion : the conversion action's code.
    session_gap_s : a longer gap between two of a user's events starts a new session.
    """

    def __init__(self, n_actions: int, conversion: int, session_gap_s: float):
        self.n_actions, self.conversion, self.session_gap_s = n_actions, conversion, session_gap_s
        self.counts = np.zeros((0, len(SCALES_S), n_actions), np.float32)
        self.touched = np.zeros(0)  # when counts were last exact
        self.first_ts = np.zeros(0)
        self.last_ts = np.full(0, -np.inf)
        self.last_gap = np.full(0, -1.0, np.float32)  # seconds before the latest event; -1: it was the first
        self.session_start = np.zeros(0)
        self.session_events = np.zeros(0, np.float32)
        self.last_conversion = np.full(0, -np.inf)
        self.last_item = np.zeros(0, np.int32)
        self.last_category = np.zeros(0, np.int32)

    def reserve(self, rows: int) -> None:
        """Make room for users 0..rows-1 (those without events read as unknown)."""
        self.counts = grow(self.counts, rows, 0.0)
        self.touched = grow(self.touched, rows, 0.0)
        self.first_ts = grow(self.first_ts, rows, 0.0)
        self.last_ts = grow(self.last_ts, rows, -np.inf)
        self.last_gap = grow(self.last_gap, rows, -1.0)
        self.session_start = grow(self.session_start, rows, 0.0)
        self.session_events = grow(self.session_events, rows, 0.0)
        self.last_conversion = grow(self.last_conversion, rows, -np.inf)
        self.last_item = grow(self.last_item, rows, 0)
        self.last_category = grow(self.last_category, rows, 0)

    def push(self, users: np.ndarray, actions: np.ndarray, ts: np.ndarray, items: np.ndarray,
             categories: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Apply events in arrival order; returns, just after each event, [n, width] of the user's state and
        the user's latest item and category (the event's own, or the last one seen where it has none).

        Events of different users are independent, so a batch is applied in rounds: the first event of
        every user in it, then the second, and so on. The result does not depend on how events are batched.
        """
        self.reserve(int(users.max()) + 1 if len(users) else 0)
        out = np.zeros((len(users), self.width()), np.float32)
        last_item = np.zeros(len(users), np.int32)
        last_category = np.zeros(len(users), np.int32)
        plan = plan_ring_append(users)
        for r in range(int(plan.rank.max()) + 1 if len(users) else 0):
            rows = plan.order[plan.rank == r]
            u = users[rows]
            self._push_round(u, actions[rows], ts[rows], items[rows], categories[rows])
            out[rows] = self.features(u, ts[rows])
            last_item[rows], last_category[rows] = self.last_item[u], self.last_category[u]
        return out, last_item, last_category

    def _push_round(self, u, actions, ts, items, categories) -> None:
        """One event per user (``u`` unique)."""
        known = np.isfinite(self.last_ts[u])
        self.counts[u] *= _decay(ts - self.touched[u])[:, :, None]
        self.counts[u, :, actions] += 1.0
        self.touched[u] = np.maximum(self.touched[u], ts)
        self.first_ts[u] = np.where(known, np.minimum(self.first_ts[u], ts), ts)
        gap = np.where(known, ts - self.last_ts[u], -1.0)
        new_session = ~known | (gap > self.session_gap_s)
        self.session_start[u] = np.where(new_session, ts, self.session_start[u])
        self.session_events[u] = np.where(new_session, 1.0, self.session_events[u] + 1.0)
        self.last_gap[u] = np.where(known, np.maximum(gap, 0.0), -1.0)
        self.last_ts[u] = np.maximum(self.last_ts[u], ts)
        converted = actions == self.conversion
        self.last_conversion[u] = np.where(converted, np.maximum(self.last_conversion[u], ts), self.last_conversion[u])
        self.last_item[u] = np.where(items > 0, items, self.last_item[u])
        self.last_category[u] = np.where(categories > 0, categories, self.last_category[u])

    def width(self) -> int:
        return len(SCALES_S) * self.n_actions + len(SUMMARY)

    def feature_names(self, actions: tuple[str, ...]) -> list[str]:
        counts = [f"count_{scale}_{a}" for scale in NAMES for a in actions]
        return counts + list(SUMMARY)

    def features(self, users: np.ndarray, now_s: np.ndarray | float) -> np.ndarray:
        """[B, width] of each user's state read at ``now_s`` (zeros for unknown users, index -1)."""
        b = len(users)
        out = np.zeros((b, self.width()), np.float32)
        known = users >= 0
        if not known.any() or not len(self.touched):
            return out
        u = users[known]
        now = np.broadcast_to(np.asarray(now_s, np.float64), (b,))[known]
        counts = self.counts[u] * _decay(now - self.touched[u])[:, :, None]
        last = self.last_ts[u]
        converted = np.isfinite(self.last_conversion[u])
        summary = np.stack([
            np.log1p(self.session_events[u]),
            np.log1p(np.maximum(last - self.session_start[u], 0.0)),
            np.log1p(np.maximum(self.last_gap[u], 0.0)),
            (self.last_gap[u] < 0).astype(np.float32),
            np.where(converted, np.log1p(np.maximum(last - self.last_conversion[u], 0.0)), 0.0),
            (~converted).astype(np.float32),
            np.log1p(np.maximum(last - self.first_ts[u], 0.0)),
        ], axis=1)
        out[known] = np.concatenate([np.log1p(counts.reshape(len(u), -1)), summary], axis=1)
        return out

    def lifetime_conversions(self, users: np.ndarray) -> np.ndarray:
        """How many conversions each user has made so far (0 for unknown users)."""
        known = users >= 0
        out = np.zeros(len(users), np.float32)
        if len(self.counts):
            out[known] = self.counts[users[known], -1, self.conversion]
        return out

    def erase(self, user: int) -> None:
        if user < len(self.touched):
            self.counts[user] = 0.0
            self.last_ts[user] = -np.inf
            self.last_gap[user] = -1.0
            self.session_events[user] = 0.0
            self.last_conversion[user] = -np.inf
            self.first_ts[user] = self.touched[user] = self.session_start[user] = 0.0
            self.last_item[user] = self.last_category[user] = 0

    _ARRAYS = ("counts", "touched", "first_ts", "last_ts", "last_gap", "session_start", "session_events",
               "last_conversion", "last_item", "last_category")

    def state_dict(self, n_users: int) -> dict[str, np.ndarray]:
        self.reserve(n_users)
        return {name: getattr(self, name)[:n_users].copy() for name in self._ARRAYS}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        for name in self._ARRAYS:
            setattr(self, name, state[name].copy())


# Summary features after the decayed counts, in order (all log1p of seconds or counts, or 0/1 flags).
SUMMARY = ("session_events", "session_seconds", "last_gap", "first_event", "since_conversion", "never_converted",
           "tenure")
