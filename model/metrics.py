"""Prediction metrics: next-action log-loss and top-1, conversion AUC and calibration, censored events left out."""
from __future__ import annotations

import numpy as np

from .evaluation_stats import binary_metrics
from .replay import auc
from .sequences import HORIZONS_S, Sequences


def prediction_metrics(
    seq: Sequences, rows: np.ndarray, next_probs: np.ndarray, conv: np.ndarray, n_actions: int
) -> dict[str, float | int]:
    """Metrics over the events selected by ``rows``; each metric uses only the events it can judge."""
    known = rows & (seq.next_action >= 0)
    p = np.clip(next_probs[known, seq.next_action[known]], 1e-12, 1.0)
    out: dict[str, float | int] = {
        "n_events": int(rows.sum()),
        "next_action_logloss": float(-np.log(p).mean()) if known.any() else float("nan"),
        "next_action_top1": float((next_probs[known].argmax(axis=1) == seq.next_action[known]).mean())
        if known.any() else float("nan"),
        "next_action_censored": int((rows & (seq.next_action < 0)).sum()),
    }
    for h, horizon in enumerate(HORIZONS_S):
        name = f"purchase_{int(horizon // 60)}m"
        seen = rows & (seq.conv[h] >= 0)
        out[f"{name}_auc"] = auc(conv[h][seen], seq.conv[h][seen] == 1)
        out[f"{name}_positives"] = int((seq.conv[h][seen] == 1).sum())
        out[f"{name}_censored"] = int((rows & (seq.conv[h] < 0)).sum())
        calibration = binary_metrics(np.clip(conv[h][seen], 0.0, 1.0), seq.conv[h][seen] == 1)
        for metric in ("logloss", "brier", "ece", "calibration_slope", "mean_predicted", "observed_rate"):
            out[f"{name}_{metric}"] = calibration[metric]
    return out
