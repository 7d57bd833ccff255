"""The baselines the Transformer must beat, fitted on the same training events."""
from __future__ import annotations

import numpy as np

from .sequences import Sequences

SHRINK = 10.0  # pseudo-count pulling sparse rows toward the overall rates


def fit_baselines(seq: Sequences, mask: np.ndarray, n_actions: int) -> dict[str, list]:
    """Popularity (overall rates) and a first-order Markov chain (rates given the current action).

    Next-action targets include 'session end' (index ``n_actions``); conversion rates are per horizon.
    """
    classes = n_actions + 1
    known = mask & (seq.next_action >= 0)
    counts = np.zeros((n_actions, classes))
    np.add.at(counts, (seq.action[known], seq.next_action[known]), 1.0)
    popularity = (counts.sum(axis=0) + 1.0) / (counts.sum() + classes)
    markov = (counts + SHRINK * popularity) / (counts.sum(axis=1, keepdims=True) + SHRINK)
    conv_pop, conv_markov = [], []
    for h in range(seq.conv.shape[0]):
        seen = mask & (seq.conv[h] >= 0)
        hits = np.bincount(seq.action[seen], weights=seq.conv[h][seen], minlength=n_actions)
        total = np.bincount(seq.action[seen], minlength=n_actions)
        overall = (hits.sum() + 1.0) / (total.sum() + 2.0)
        conv_pop.append(float(overall))
        conv_markov.append(((hits + SHRINK * overall) / (total + SHRINK)).tolist())
    return {
        "popularity_next": popularity.tolist(),
        "markov_next": markov.tolist(),
        "popularity_conv": conv_pop,
        "markov_conv": conv_markov,
    }


def baseline_predictions(baselines: dict[str, list], seq: Sequences) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (next-action probabilities [n, A + 1], conversion probabilities [2, n])."""
    n = len(seq)
    markov_next = np.asarray(baselines["markov_next"])[seq.action]
    markov_conv = np.stack([np.asarray(r)[seq.action] for r in baselines["markov_conv"]])
    pop_next = np.broadcast_to(np.asarray(baselines["popularity_next"]), (n, markov_next.shape[1]))
    pop_conv = np.asarray(baselines["popularity_conv"])[:, None] * np.ones((1, n))
    return {"markov": (markov_next, markov_conv), "popularity": (pop_next, pop_conv)}
