"""Scoring an event file with a trained checkpoint, the baselines it carries, and its calibration to a tenant.

The Transformer is evaluated as served: its conversion probabilities raw, and calibrated online to the
evaluated data (``transformer_calibrated``): each prediction is calibrated with what the outcomes known
before it taught, exactly as a server that loaded the model would do. Differences against the Markov chain
come with intervals from a bootstrap over users.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .baselines import baseline_predictions
from .calibration import HORIZONS_S, ModelCalibration
from .config import TenantConfig
from .evaluation_stats import binary_metrics, user_bootstrap
from .events import EventBatch
from .metrics import prediction_metrics
from .plots import write_charts
from .training import features, load_model, predict

# Calibration under transfer is judged once the tenant has taught the calibration this many outcomes.
SETTLED_OUTCOMES = 1000
_CALIBRATION_STEP_S = 60.0


def calibrate_prequentially(conv: np.ndarray, seq, rows: np.ndarray, forget_half_life_s: float):
    """[2, n] probabilities calibrated online over the selected rows in time order, and for each row how many
    outcomes the 5-minute calibration had learned from when it predicted."""
    calibration = ModelCalibration(forget_half_life_s, max_pending=10**9)
    out = conv.copy()
    learned_before = np.zeros(len(seq.ts), np.int64)
    index = np.flatnonzero(rows)
    index = index[np.argsort(seq.ts[index], kind="stable")]

    def converted(keys: np.ndarray, ts: np.ndarray, horizon_s: float) -> np.ndarray:
        return seq.conv[HORIZONS_S.index(horizon_s)][keys] == 1

    steps = np.floor(seq.ts[index] / _CALIBRATION_STEP_S)
    bounds = np.flatnonzero(np.diff(steps)) + 1
    for part in np.split(index, bounds):
        now = float(seq.ts[part[0]])
        calibration.resolve(now, converted)
        out[:, part] = calibration.apply(conv[:, part].T).T
        learned_before[part] = calibration.outcomes
        # Only outcomes the data can tell are recorded: censored ones would never resolve.
        calibration.record(part, seq.ts[part], conv[:, part].T, (seq.conv[:, part] >= 0).T)
    return out, learned_before


def evaluate(
    checkpoint: dict[str, Any], batch: EventBatch, from_ts: float | None = None, plots_dir: Path | None = None,
    replicates: int = 200, progress=None,
) -> tuple[dict[str, Any], list[Path]]:
    """Metrics per predictor on the events at or after ``from_ts`` (all by default), the Transformer's margin
    over the Markov chain with intervals, and the charts written.

    Earlier events of the file are history only: they build each user's state, they are not scored.
    With ``plots_dir``, the calibration and lift charts of the 5-minute purchase predictions go there,
    if any scored event's 5-minute outcome is known.
    """
    config = TenantConfig.from_dict(checkpoint["tenant_config"])
    n_actions = len(config.actions)
    seq = features(batch, config, progress)
    rows = np.ones(len(seq), bool) if from_ts is None else seq.ts >= from_ts
    model_next, model_conv = predict(load_model(checkpoint), seq)
    calibrated, learned_before = calibrate_prequentially(model_conv, seq, rows, config.forget_half_life_s)
    predictions = {"transformer": (model_next, model_conv), "transformer_calibrated": (model_next, calibrated),
                   **baseline_predictions(checkpoint["baselines"], seq)}
    charts: list[Path] = []
    seen = rows & (seq.conv[0] >= 0)
    if plots_dir is not None and seen.any():
        charts = write_charts(
            {name: conv[0][seen] for name, (_, conv) in predictions.items() if name != "popularity"},
            seq.conv[0][seen] == 1, plots_dir, "purchase within 5 minutes",
        )
    metrics: dict[str, Any] = {
        name: prediction_metrics(seq, rows, next_probs, conv, n_actions)
        for name, (next_probs, conv) in predictions.items()
    }
    settled = rows & (learned_before >= SETTLED_OUTCOMES)
    metrics["transformer_calibrated_settled"] = {
        "n_events": int(settled.sum()),
        **_settled_calibration(calibrated, seq, settled),
    }
    metrics["transformer_vs_markov"] = paired_margins(seq, rows, predictions["transformer"],
                                                predictions["markov"], replicates)
    return metrics, charts


def _settled_calibration(conv: np.ndarray, seq, rows: np.ndarray) -> dict[str, float]:
    """Calibration of each head on the rows predicted after the calibration had settled."""
    out = {}
    for h, horizon_s in enumerate(HORIZONS_S):
        name = f"purchase_{int(horizon_s // 60)}m"
        seen = rows & (seq.conv[h] >= 0)
        m = binary_metrics(np.clip(conv[h][seen], 0.0, 1.0), seq.conv[h][seen] == 1)
        ratio = m["mean_predicted"] / m["observed_rate"] if m["observed_rate"] else float("nan")
        out.update({f"{name}_mean_predicted": m["mean_predicted"], f"{name}_observed_rate": m["observed_rate"],
                    f"{name}_predicted_over_observed": ratio, f"{name}_calibration_slope": m["calibration_slope"],
                    f"{name}_events": m["n"]})
    return out


def paired_margins(seq, rows: np.ndarray, model, markov, replicates: int, seed: int = 0) -> dict[str, Any]:
    """The Transformer's relative next-action log-loss gain and 5-minute AUC gain over the Markov chain, with
    95 % intervals from a bootstrap over users."""
    known = rows & (seq.next_action >= 0)
    users = seq.user[known]
    loss = {name: -np.log(np.clip(p[known, seq.next_action[known]], 1e-12, 1.0)) for name, p in
            (("transformer", model[0]), ("markov", markov[0]))}
    per_user = {name: np.bincount(users, weights=v, minlength=int(seq.user.max()) + 1) for name, v in loss.items()}
    counts = np.bincount(users, minlength=int(seq.user.max()) + 1)
    rng = np.random.default_rng(seed)
    present = np.flatnonzero(counts)
    gains = []
    for _ in range(replicates):
        weights = np.bincount(rng.choice(present, len(present)), minlength=len(counts))
        m, t = weights @ per_user["markov"], weights @ per_user["transformer"]
        gains.append((m - t) / m)
    out: dict[str, Any] = {}
    if known.any():
        total_m, total_t = loss["markov"].sum(), loss["transformer"].sum()
        out["next_action_logloss_relative_gain"] = float((total_m - total_t) / total_m)
        out["next_action_logloss_relative_gain_ci"] = tuple(float(v) for v in np.percentile(gains, [2.5, 97.5]))
    seen = rows & (seq.conv[0] >= 0)
    y = seq.conv[0][seen] == 1
    if 0 < y.sum() < len(y):
        boot = user_bootstrap(seq.user[seen], y, {"transformer": model[1][0][seen], "markov": markov[1][0][seen]},
                              reference="markov", replicates=replicates, seed=seed)
        out["purchase_5m_auc_gain"] = boot["transformer"]["diff"]
        out["purchase_5m_auc_gain_ci"] = tuple(boot["transformer"]["diff_ci"])
    return out
