"""How often events on an item (or in a category) are conversions: forgetting counts over hashed keys.

Keys are hashed into a fixed number of buckets, so a tenant's memory does not grow with its
catalogue; on a catalogue much larger than the table, rare items share buckets. New events are
buffered and folded into the table at the engine's ticks, so what a read sees depends only on the
event stream, not on how it was batched. Counts forget with the tenant's half-life: they are stored
in units that grow with event time (``2^((t - ref) / half_life)``), so forgetting costs nothing per
event and the table is rescaled only once in many half-lives.
"""
from __future__ import annotations

import numpy as np

from .sequences import stable_buckets

ITEM_BUCKETS = 1 << 18
CATEGORY_BUCKETS = 1 << 14
PRIOR_STRENGTH = 5.0  # pseudo-events at the overall conversion share
BASE_SHARE = 0.05  # the overall share before any event
_REBASE_HALF_LIVES = 50.0


class HashedRates:
    """Conversion share of the events on each key, shrunk toward the overall share.

    Parameters
    ----------
    buckets : size of the hash table.
    forget_half_life_s : counts halve after this much event time.
    """

    def __init__(self, buckets: int, forget_half_life_s: float):
        self.buckets, self.half_life_s = buckets, forget_half_life_s
        self.conversions = np.zeros(buckets)
        self.events = np.zeros(buckets)
        self.total_conversions = self.total_events = 0.0
        self.ref_s = 0.0
        self.as_of_s = -np.inf  # event time of the last fold: reads see the counts as of then
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def keys(self, values: np.ndarray) -> np.ndarray:
        """Bucket of each key (object array, None for none); 0 means 'no key'."""
        return stable_buckets(values, self.buckets)

    def add(self, keys: np.ndarray, converted: np.ndarray, ts: np.ndarray) -> None:
        """Buffer events (and which were conversions) until the next :meth:`fold`."""
        has = keys > 0
        if has.any():
            self._pending.append((keys[has], converted[has], ts[has]))

    def fold(self, now_s: float) -> None:
        """Count the buffered events; reads from now on see the counts as of ``now_s``."""
        if not np.isfinite(self.as_of_s):
            self.ref_s = now_s
        if (now_s - self.ref_s) / self.half_life_s > _REBASE_HALF_LIVES:
            factor = np.exp2(-(now_s - self.ref_s) / self.half_life_s)
            self.conversions *= factor
            self.events *= factor
            self.total_conversions *= factor
            self.total_events *= factor
            self.ref_s = now_s
        for keys, converted, ts in self._pending:
            weight = np.exp2((ts - self.ref_s) / self.half_life_s)
            np.add.at(self.events, keys, weight)
            np.add.at(self.conversions, keys[converted], weight[converted])
            self.total_events += float(weight.sum())
            self.total_conversions += float(weight[converted].sum())
        self._pending = []
        self.as_of_s = max(self.as_of_s, now_s)

    def rates(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shrunk conversion share, events seen, forgetting applied) per bucket, as of the last fold."""
        scale = np.exp2(-(self.as_of_s - self.ref_s) / self.half_life_s) if np.isfinite(self.as_of_s) else 0.0
        overall = (self.total_conversions * scale + BASE_SHARE * PRIOR_STRENGTH) / (
            self.total_events * scale + PRIOR_STRENGTH)
        n = self.events[keys] * scale
        rate = (self.conversions[keys] * scale + overall * PRIOR_STRENGTH) / (n + PRIOR_STRENGTH)
        none = keys == 0
        return np.where(none, overall, rate).astype(np.float32), np.where(none, 0.0, n).astype(np.float32)

    def state_dict(self) -> dict[str, np.ndarray]:
        pending = self._pending or [(np.zeros(0, np.int32), np.zeros(0, bool), np.zeros(0))]
        return {"conversions": self.conversions.copy(), "events": self.events.copy(),
                "scalars": np.array([self.total_conversions, self.total_events, self.ref_s, self.as_of_s]),
                "pending_keys": np.concatenate([p[0] for p in pending]),
                "pending_converted": np.concatenate([p[1] for p in pending]),
                "pending_ts": np.concatenate([p[2] for p in pending])}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.conversions, self.events = state["conversions"].copy(), state["events"].copy()
        self.total_conversions, self.total_events, self.ref_s, self.as_of_s = (float(v) for v in state["scalars"])
        keys = state["pending_keys"].copy()
        self._pending = [(keys, state["pending_converted"].copy(), state["pending_ts"].copy())] if len(keys) else []
