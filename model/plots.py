"""Calibration and lift charts of the conversion predictions (PNG, via matplotlib)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _bins(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean prediction, observed rate and count per quantile bin of the predictions."""
    order = np.argsort(probs, kind="stable")
    groups = [g for g in np.array_split(order, n_bins) if len(g)]
    return (
        np.array([probs[g].mean() for g in groups]),
        np.array([labels[g].mean() for g in groups]),
        np.array([len(g) for g in groups]),
    )


def _finish(fig, ax, xlabel: str, ylabel: str, title: str, path: Path) -> Path:
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_charts(
    predictions: dict[str, np.ndarray], labels: np.ndarray, out_dir: Path, title: str, n_bins: int = 10
) -> list[Path]:
    """calibration.png (observed against predicted rate) and lift.png (cumulative gain by top fraction)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    base_rate = labels.mean()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    top = 0.0
    for name, probs in predictions.items():
        mean_pred, observed, _ = _bins(probs, labels, n_bins)
        ax.plot(mean_pred, observed, marker="o", label=name)
        top = max(top, mean_pred.max(), observed.max())
    ax.plot([0, top], [0, top], linestyle="--", color="grey", label="perfect calibration")
    calibration = _finish(fig, ax, "predicted probability (mean of a decile)", "observed rate",
                          f"Calibration: {title}", out_dir / "calibration.png")

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    fractions = np.linspace(0, 1, 101)
    for name, probs in predictions.items():
        order = np.argsort(-probs, kind="stable")
        gained = np.r_[0, np.cumsum(labels[order])] / max(labels.sum(), 1)
        ax.plot(fractions, np.interp(fractions * len(labels), np.arange(len(labels) + 1), gained), label=name)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="random")
    lift = _finish(fig, ax, "fraction of events, highest predictions first", "fraction of conversions captured",
                   f"Cumulative gain: {title}\n(base rate {base_rate:.4f}, {int(labels.sum())} conversions)",
                   out_dir / "lift.png")
    return [calibration, lift]
