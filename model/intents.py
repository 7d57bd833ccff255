"""Intents: what a user is about to do, read from the predictions, and which one (if any) fires."""
from __future__ import annotations

import numpy as np

from .config import DEFAULT_POLICY, DEFAULT_THRESHOLDS, INTENTS, TenantConfig

# The intents read from a predicted next action.
_NEXT_ACTION = {"information_seeking": "search", "needs_help": "help_view", "form_intent": "form_start"}


def open_cart(actions: np.ndarray, ts: np.ndarray, lengths: np.ndarray, config: TenantConfig,
              now: float | None = None) -> np.ndarray:
    """Per window (left-aligned, oldest first): an add_to_cart in the latest session with no conversion or
    removal after it. With ``now``: and abandoned, which is more: no checkout begun after the add, and nothing
    done for ``cart_idle_s`` (at the moment of the add, a cart is not abandoned)."""
    batch, k = actions.shape
    if "add_to_cart" not in config.actions or not batch:
        return np.zeros(batch, bool)
    pos = np.arange(k)[None, :]
    valid = pos < lengths[:, None]
    last_ts = ts[np.arange(batch), np.maximum(lengths - 1, 0)]
    # The latest session: events after the last gap longer than the session gap.
    breaks = np.zeros((batch, k), bool)
    breaks[:, 1:] = (ts[:, 1:] - ts[:, :-1] > config.session_gap_s) & valid[:, 1:]
    session_start = np.where(breaks, pos, 0).max(axis=1)
    in_session = valid & (pos >= session_start[:, None]) & (last_ts[:, None] - ts <= config.session_gap_s)
    table_size = max(len(config.actions), int(actions.max(initial=0)) + 1)  # past slots may hold any code

    def last_of(names) -> np.ndarray:
        member = np.zeros(table_size, bool)  # a table read per slot: np.isin sorts, and costs more
        member[[config.actions.index(n) for n in names if n in config.actions]] = True
        hit = in_session & member[actions]
        return np.where(hit, pos, -1).max(axis=1)

    closing = last_of([config.conversion_action, "remove_from_cart"])
    if now is not None:
        # A checkout begun after the add means the user is buying: no discount during checkout.
        closing = np.maximum(closing, last_of(["begin_checkout"]))
    is_open = last_of(["add_to_cart"]) > closing
    if now is None:
        return is_open
    return is_open & (lengths > 0) & (now - last_ts >= config.cart_idle_s)


def intent_scores(
    next_probs: np.ndarray, purchase_5m: np.ndarray, purchase_60m: np.ndarray, cart: np.ndarray, config: TenantConfig
) -> np.ndarray:
    """[B, len(INTENTS)] scores in [0, 1]: P(conversion in 5 min); abandoned cart x P(no conversion in 60 min)
    for undecided users only (P(conversion in 60 min) inside ``discount_band``); P(next action is search /
    help_view / form_start)."""
    low, high = config.discount_band
    undecided = (purchase_60m >= low) & (purchase_60m <= high)
    cols = {
        "purchase_likely": purchase_5m,
        "cart_abandon_risk": cart * undecided * (1.0 - purchase_60m),
    }
    for intent, action in _NEXT_ACTION.items():
        cols[intent] = next_probs[:, config.actions.index(action)] if action in config.actions else np.zeros(len(cart))
    return np.stack([np.asarray(cols[i], np.float64) for i in INTENTS], axis=1)


def intent_gates(config: TenantConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per intent (INTENTS order): its threshold, and whether the policy maps it to a signal."""
    thresholds = np.array([config.thresholds.get(i, DEFAULT_THRESHOLDS[i]) for i in INTENTS])
    enabled = np.array([config.policy.get(i, DEFAULT_POLICY[i]) != "none" for i in INTENTS])
    return thresholds, enabled


def fired_intents(scores: np.ndarray, engagement: np.ndarray, config: TenantConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per user: the index into INTENTS of the intent that fires (-1: none), and its score.

    An intent fires when its score reaches its threshold, the policy maps it to a signal and the
    user's engagement score reaches ``min_score``; of several, the one furthest past its threshold wins.
    """
    thresholds, enabled = intent_gates(config)
    fires = (scores >= thresholds) & enabled & (np.asarray(engagement)[:, None] >= config.min_score)
    margin = np.where(fires, scores / np.maximum(thresholds, 1e-6), -np.inf)
    best = margin.argmax(axis=1)
    chosen = np.where(fires.any(axis=1), best, -1)
    return chosen, scores[np.arange(len(scores)), np.maximum(best, 0)]
