"""Scoring an event file with a trained checkpoint and the baselines it carries."""
from __future__ import annotations

from typing import Any

import numpy as np

from .baselines import baseline_predictions
from .config import TenantConfig
from .events import EventBatch
from .metrics import prediction_metrics
from .training import features, load_model, predict


def evaluate(checkpoint: dict[str, Any], batch: EventBatch, from_ts: float | None = None) -> dict[str, Any]:
    """Metrics per predictor on the events at or after ``from_ts`` (all by default).

    Earlier events of the file are history only: they build each user's window, they are not scored.
    """
    config = TenantConfig.from_dict(checkpoint["tenant_config"])
    n_actions = len(config.actions)
    seq = features(batch, config)
    rows = np.ones(len(seq), bool) if from_ts is None else seq.ts >= from_ts
    predictions = {"transformer": predict(load_model(checkpoint), seq), **baseline_predictions(checkpoint["baselines"], seq)}
    return {
        name: prediction_metrics(seq, rows, next_probs, conv, n_actions)
        for name, (next_probs, conv) in predictions.items()
    }
