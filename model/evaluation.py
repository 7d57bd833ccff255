"""Scoring an event file with a trained checkpoint and the baselines it carries."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .baselines import baseline_predictions
from .config import TenantConfig
from .events import EventBatch
from .metrics import prediction_metrics
from .plots import write_charts
from .training import features, load_model, predict


def evaluate(
    checkpoint: dict[str, Any], batch: EventBatch, from_ts: float | None = None, plots_dir: Path | None = None
) -> tuple[dict[str, Any], list[Path]]:
    """Metrics per predictor on the events at or after ``from_ts`` (all by default), and the charts written.

    Earlier events of the file are history only: they build each user's window, they are not scored.
    With ``plots_dir``, the calibration and lift charts of the 5-minute purchase predictions go there,
    if any scored event's 5-minute outcome is known.
    """
    config = TenantConfig.from_dict(checkpoint["tenant_config"])
    n_actions = len(config.actions)
    seq = features(batch, config)
    rows = np.ones(len(seq), bool) if from_ts is None else seq.ts >= from_ts
    predictions = {"transformer": predict(load_model(checkpoint), seq), **baseline_predictions(checkpoint["baselines"], seq)}
    charts: list[Path] = []
    seen = rows & (seq.conv[0] >= 0)
    if plots_dir is not None and seen.any():
        charts = write_charts(
            {name: conv[0][seen] for name, (_, conv) in predictions.items() if name != "popularity"},
            seq.conv[0][seen] == 1, plots_dir, "purchase within 5 minutes",
        )
    metrics = {
        name: prediction_metrics(seq, rows, next_probs, conv, n_actions)
        for name, (next_probs, conv) in predictions.items()
    }
    return metrics, charts
