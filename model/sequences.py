"""Per-user event sequences with the targets the predictors learn: next action, conversion in 5 / 60 min.

Training and evaluation build their inputs here, from the same columns serving keeps per user,
so the two cannot drift apart.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .contexts import daypart_codes
from .events import EventBatch

GAP_BUCKETS = 18  # 0: first event of the user; then log2-spaced gaps from < 1 s to > 18 h
CATEGORY_BUCKETS = 1024
HORIZONS_S = (300.0, 3600.0)


def gap_buckets(gap_s: np.ndarray, first: np.ndarray) -> np.ndarray:
    """0 for a user's first event, else 1 + floor(log2(1 + gap)), capped."""
    b = 1 + np.floor(np.log2(1.0 + np.maximum(gap_s, 0.0))).astype(np.int64)
    return np.where(first, 0, np.minimum(b, GAP_BUCKETS - 1))


def category_buckets(categories: np.ndarray) -> np.ndarray:
    """Stable hash of each category into [1, CATEGORY_BUCKETS); 0 where there is none."""
    return stable_buckets(categories, CATEGORY_BUCKETS)


_HASHES: dict = {}  # value -> _stable_hash(value), for the values seen lately (emptied past _MAX_HASHES)
_MAX_HASHES = 1 << 18


def stable_buckets(values: np.ndarray, buckets: int) -> np.ndarray:
    """Stable hash of each value into [1, buckets); 0 where there is none (None)."""
    names = values.tolist() if isinstance(values, np.ndarray) else list(values)
    get = _HASHES.get
    hashes = [get(v) for v in names]  # a dictionary read per value, in C, once the values are known
    if None in hashes:
        if len(_HASHES) > _MAX_HASHES:
            _HASHES.clear()
        for i in [i for i, h in enumerate(hashes) if h is None]:
            hashes[i] = _HASHES[names[i]] = _stable_hash(names[i])
    out = np.array(hashes, dtype=np.int64)
    return np.where(out < 0, 0, 1 + out % (buckets - 1)).astype(np.int32)


def _stable_hash(value) -> int:
    # FNV-1a: stable across processes and Python versions, unlike hash().
    if value is None:
        return -1
    h = 2166136261
    for byte in str(value).encode():
        h = ((h ^ byte) * 16777619) & 0xFFFFFFFF
    return h


def next_conversion_delay(batch: EventBatch, conversion: int) -> np.ndarray:
    """Per event (batch order): seconds until the same user's next conversion after it; inf if none."""
    n = len(batch)
    _, user = np.unique(batch.user_ids.astype(str), return_inverse=True)
    order = np.lexsort((np.arange(n), batch.ts, user))
    u, ts = user[order], batch.ts[order]
    conv_pos = np.flatnonzero(batch.actions[order] == conversion)
    delay_sorted = np.full(n, np.inf)
    if len(conv_pos):
        nxt = np.searchsorted(conv_pos, np.arange(n), side="right")
        target = conv_pos[np.minimum(nxt, len(conv_pos) - 1)]
        same = (nxt < len(conv_pos)) & (u[target] == u)
        delay_sorted = np.where(same, ts[target] - ts, np.inf)
    delay = np.empty(n)
    delay[order] = delay_sorted
    return delay


@dataclass(frozen=True)
class Sequences:
    """Events grouped by user, in time order; one row per event (flat), with targets.

    ``next_action`` is the user's next action within the session gap, ``n_actions`` for "session
    end", -1 when the session gap runs past the end of the data. ``conv[h]`` is 1/0 for a
    conversion within HORIZONS_S[h] after the event, -1 when that horizon runs past the end.
    """

    user: np.ndarray  # dense user index per event
    position: np.ndarray  # index of the event within its user's sequence
    starts: np.ndarray  # first flat row of each user
    lengths: np.ndarray  # events per user
    action: np.ndarray
    gap: np.ndarray
    device: np.ndarray
    daypart: np.ndarray
    category: np.ndarray
    state: np.ndarray  # [n, d] the learned score's features just after each event (``ScoreFeatures``)
    ts: np.ndarray
    next_action: np.ndarray
    conv: np.ndarray  # [2, n]
    order: np.ndarray  # flat row -> row of the original batch

    def __len__(self) -> int:
        return len(self.action)


def build_sequences(
    batch: EventBatch, n_actions: int, conversion: int, session_gap_s: float, state: np.ndarray | None = None
) -> Sequences:
    """Group a time-sorted batch by user and attach the targets (with censoring at the data's end)."""
    n = len(batch)
    _, user = np.unique(batch.user_ids.astype(str), return_inverse=True)
    order = np.lexsort((np.arange(n), batch.ts, user))
    u, ts, act = user[order], batch.ts[order], batch.actions[order].astype(np.int64)
    first = np.ones(n, bool)
    first[1:] = u[1:] != u[:-1]
    starts = np.flatnonzero(first)
    lengths = np.diff(np.append(starts, n))
    position = np.arange(n) - np.repeat(starts, lengths)
    gap = np.zeros(n)
    gap[1:] = ts[1:] - ts[:-1]
    last = np.ones(n, bool)
    last[:-1] = u[1:] != u[:-1]
    end = float(batch.ts.max()) if n else 0.0

    next_ts = np.where(last, np.inf, np.r_[ts[1:], np.inf])
    next_act = np.r_[act[1:], -1]
    within = next_ts - ts <= session_gap_s
    # Censor by time alone: labelling the events that have a next one near the end, but not the
    # others, would bias every metric toward "the session goes on".
    observed = ts + session_gap_s < end
    next_action = np.where(observed, np.where(within, next_act, n_actions), -1)

    delay = next_conversion_delay(batch, conversion)[order]
    conv = np.stack([np.where(ts + h <= end, (delay <= h).astype(np.int64), -1) for h in HORIZONS_S])

    return Sequences(
        user=u, position=position, starts=starts, lengths=lengths, action=act,
        gap=gap_buckets(gap, first), device=batch.device[order].astype(np.int64),
        daypart=daypart_codes(ts, batch.tz_offset_min[order]).astype(np.int64),
        category=category_buckets(batch.categories[order]).astype(np.int64),
        state=np.zeros((n, 0), np.float32) if state is None else state[order].astype(np.float32),
        ts=ts, next_action=next_action, conv=conv, order=order,
    )
