"""The inputs of the learned score, one row per (user, moment): the same columns at training and serving.

Every column is on a scale of about one: log-odds of the seed's components (the windowed sequence
score with learned and with heuristic weights, the per-context weight of the latest action, the
Markov chain's conversion rates), the latest action, the user's state on several time scales
(``user_state.py``), the conversion share of the latest item and category (``item_rates.py``), and what
the latest session did with items (revisits of the latest item, items seen, items bought).
"""
from __future__ import annotations

import numpy as np

from .user_state import NAMES as SCALE_NAMES
from .user_state import SUMMARY

_EPS = 1e-4
# The Markov chain's conversion rates are features for each of these horizons (the predicted ones).
MARKOV_HORIZONS = ("5m", "60m", "horizon")
# Where each of them is in the engine's horizons (the tenant's, then the predicted ones).
MARKOV_TABLES = {"horizon": 0, "5m": 1, "60m": 2}
HEURISTIC = "seq_prior"
SESSION_ITEMS = ("same_item", "session_items", "session_items_converted", "session_items_open")


def log_odds(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), _EPS, 1.0 - _EPS)
    return np.log(p / (1.0 - p)).astype(np.float32)


class ScoreFeatures:
    """Column names and assembly of the score's feature rows for one vocabulary."""

    def __init__(self, actions: tuple[str, ...]):
        self.actions = actions
        self.names = (
            ["bias", "seq_learned", HEURISTIC, "context_weight"]
            + [f"markov_{h}" for h in MARKOV_HORIZONS]
            + [f"action_{a}" for a in actions]
            + [f"count_{scale}_{a}" for scale in SCALE_NAMES for a in actions]
            + list(SUMMARY)
            + ["item_rate", "item_seen", "category_rate", "category_seen"]
            + list(SESSION_ITEMS)
        )
        self.index = {name: i for i, name in enumerate(self.names)}

    @property
    def width(self) -> int:
        return len(self.names)

    def assemble(
        self,
        *,
        seq_learned: np.ndarray,
        seq_prior: np.ndarray,
        context_weight: np.ndarray,
        markov: dict[str, np.ndarray],
        last_action: np.ndarray,
        state: np.ndarray,
        item: tuple[np.ndarray, np.ndarray],
        category: tuple[np.ndarray, np.ndarray],
        session_items: np.ndarray,
    ) -> np.ndarray:
        """[n, width] rows; ``last_action`` is -1 where a user has no event (no action column set)."""
        n = len(last_action)
        one_hot = np.zeros((n, len(self.actions)), np.float32)
        has = last_action >= 0
        one_hot[np.flatnonzero(has), last_action[has]] = 1.0
        columns = [
            np.ones((n, 1), np.float32),
            log_odds(seq_learned)[:, None],
            log_odds(seq_prior)[:, None],
            np.where(has, log_odds(context_weight), 0.0)[:, None],
            *(log_odds(markov[h])[:, None] for h in MARKOV_HORIZONS),
            one_hot,
            state,
            log_odds(item[0])[:, None], np.log1p(item[1])[:, None],
            log_odds(category[0])[:, None], np.log1p(category[1])[:, None],
            session_items,
        ]
        return np.concatenate([np.asarray(c, np.float32) for c in columns], axis=1)

    def prior_mean(self, anchor: str) -> np.ndarray:
        """Weights that reproduce one feature's prediction: 1 on ``anchor`` (a log-odds column), 0 elsewhere."""
        mean = np.zeros(self.width)
        mean[self.index[anchor]] = 1.0
        return mean

    def prior_sd(self) -> np.ndarray:
        # Tight: a tenant's outcomes are few and noisy at first, and a weight must earn its way.
        sd = np.full(self.width, 0.3)
        sd[self.index["bias"]] = 3.0
        return sd


def session_item_features(actions: np.ndarray, ts: np.ndarray, items: np.ndarray, lengths: np.ndarray,
                          session_gap_s: float, conversion: int) -> np.ndarray:
    """[B, len(SESSION_ITEMS)] from left-aligned windows (oldest first) whose latest event is at ``lengths - 1``.

    In the latest session (events after the last gap longer than ``session_gap_s``): how often the latest
    event's item was seen before, how many distinct items were seen, how many of them were converted on
    (bought), and how many were not; each as log1p. Item 0 means no item.
    """
    batch, k = actions.shape
    out = np.zeros((batch, len(SESSION_ITEMS)), np.float32)
    if not batch or not k:
        return out
    pos = np.arange(k)[None, :]
    valid = pos < lengths[:, None]
    breaks = np.zeros((batch, k), bool)
    breaks[:, 1:] = (ts[:, 1:] - ts[:, :-1] > session_gap_s) & valid[:, 1:]
    start = np.where(breaks, pos, 0).max(axis=1)
    in_session = valid & (pos >= start[:, None]) & (items > 0)
    last = np.maximum(lengths - 1, 0)
    latest_item = items[np.arange(batch), last]
    earlier = in_session & (pos < last[:, None])
    same = (earlier & (items == latest_item[:, None]) & (latest_item[:, None] > 0)).sum(axis=1)
    seen = _distinct(np.where(in_session, items, 0))
    bought = in_session & (actions == conversion)
    converted = np.zeros(batch, np.int64)
    rows = np.flatnonzero(bought.any(axis=1))  # few windows hold a conversion: only theirs are sorted
    converted[rows] = _distinct(np.where(bought[rows], items[rows], 0))
    out[:, 0] = np.log1p(same)
    out[:, 1] = np.log1p(seen)
    out[:, 2] = np.log1p(converted)
    out[:, 3] = np.log1p(seen - converted)
    return out


def _distinct(keys: np.ndarray) -> np.ndarray:
    """Distinct non-zero values per row."""
    ordered = np.sort(keys, axis=1)
    new = np.ones_like(ordered, dtype=bool)
    new[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    return (new & (ordered > 0)).sum(axis=1)
