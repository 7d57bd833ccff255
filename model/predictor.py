"""Serving a trained next-action Transformer: checkpoint checks and batched predictions from user windows."""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from .calibration import ModelCalibration
from .config import TenantConfig
from .score_features import ScoreFeatures
from .training import CHECKPOINT_FORMAT, load_model
from .transformer import TOKENS

PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class ModelMismatch(ValueError):
    """A checkpoint cannot serve this tenant (another vocabulary, conversion action or format)."""


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint file as written by ``nudge train``; only tensors and plain values are unpickled."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"{path} is not a readable nudge model checkpoint: {exc}") from None
    if not isinstance(checkpoint, dict) or "model_state" not in checkpoint or "vocabulary" not in checkpoint:
        raise ValueError(f"{path} is not a nudge model checkpoint (no model_state or vocabulary)")
    return checkpoint


def write_checkpoint(checkpoint: dict[str, Any], path: str | os.PathLike) -> None:
    """Write atomically (temporary file, then rename), so a server watching ``path`` never reads half a file."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def check_compatible(checkpoint: dict[str, Any], config: TenantConfig) -> None:
    """Raise :class:`ModelMismatch` unless the checkpoint was trained on this tenant's vocabulary."""
    if checkpoint.get("format_version") != CHECKPOINT_FORMAT:
        raise ModelMismatch(
            f"checkpoint format {checkpoint.get('format_version')!r} is not {CHECKPOINT_FORMAT}; retrain with this nudge"
        )
    vocabulary = list(checkpoint["vocabulary"])
    if vocabulary != list(config.actions):
        raise ModelMismatch(
            f"the checkpoint's vocabulary {vocabulary} differs from the tenant's {list(config.actions)}; "
            "retrain on this tenant's events (nudge train --data-dir DIR --tenant NAME)"
        )
    conversion = checkpoint.get("tenant_config", {}).get("conversion_action")
    if conversion != config.conversion_action:
        raise ModelMismatch(
            f"the checkpoint predicts conversions to {conversion!r}, the tenant converts on {config.conversion_action!r}"
        )
    state_dim = checkpoint.get("model_config", {}).get("state_dim")
    if state_dim != ScoreFeatures(config.actions).width:
        raise ModelMismatch(f"the checkpoint reads {state_dim} user-state features, this nudge has "
                            f"{ScoreFeatures(config.actions).width}; retrain with this nudge")


class TransformerPredictor:
    """A loaded checkpoint that predicts, for users' windows, the next action and P(conversion in 5 / 60 min).

    Its conversion probabilities are calibrated to the tenant online (``calibration``): a freshly loaded
    model starts uncalibrated, and each of its predictions teaches the calibration once its horizon passed.

    Parameters
    ----------
    checkpoint : as returned by :func:`read_checkpoint` (or ``model.training.train``).
    config : the tenant's config; a mismatched checkpoint raises :class:`ModelMismatch`.
    device : torch device the model runs on.
    precision : "float32", or "bfloat16" (autocast: matrix products and attention in bf16, softmax and norms in
        fp32); by default bf16 on a GPU, where it is faster and agrees with fp32 to about 1e-2 in a probability
        (``tests/unit/test_predictor.py``), and fp32 on the CPU.
    """

    def __init__(self, checkpoint: dict[str, Any], config: TenantConfig, device: str = "cpu",
                 precision: str | None = None):
        check_compatible(checkpoint, config)
        self.device = torch.device(device)
        precision = precision or ("bfloat16" if self.device.type == "cuda" else "float32")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        self.precision = precision
        self.model = load_model(checkpoint).to(self.device)
        self.events = self.model.event_table()  # the served model's weights never change
        self.window = self.model.config.window
        self.n_actions = len(config.actions)
        self.calibration = ModelCalibration(config.forget_half_life_s)
        data = checkpoint.get("data", {})
        self.info = {
            "vocabulary": list(checkpoint["vocabulary"]),
            "model_config": dict(checkpoint.get("model_config", {})),
            "data": dict(data),
            "validation_metrics": checkpoint.get("validation_metrics", {}),
            "training_seconds": checkpoint.get("seconds"),
        }

    @torch.no_grad()
    def predict(self, tokens: dict[str, np.ndarray], lengths: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Next-action probabilities [B, A + 1] (the last is 'session end') and [B, 2] conversion probabilities
        as the model gives them (calibrate them with ``calibration.apply``).

        ``tokens`` are left-aligned windows, oldest first (``Engine.window_features``), and ``state`` [B, d]
        each user's state now (``Engine.current_features``); each row is predicted after its last event.
        Rows must have at least one event.
        """
        lengths = np.asarray(lengths, dtype=np.int64)
        if (lengths < 1).any():
            raise ValueError("every row needs at least one event")
        # Keep each row's last ``window`` events, still left-aligned.
        used = np.minimum(lengths, self.window)
        start = lengths - used
        longest = int(used.max())
        cols = start[:, None] + np.arange(longest)[None, :]
        pad = np.arange(longest)[None, :] >= used[:, None]
        cols = np.where(pad, 0, cols)
        rows = np.arange(len(lengths))[:, None]
        # All token columns and each row's last position travel as one array: one copy to the device.
        packed = np.empty((len(TOKENS), len(lengths), longest + 1), np.int32)
        for i, name in enumerate(TOKENS):
            packed[i, :, :longest] = np.where(pad, self.n_actions if name == "action" else 0, tokens[name][rows, cols])
        packed[:, :, longest] = used - 1
        on_device = torch.from_numpy(packed).to(self.device).long()
        batch = {name: on_device[i, :, :longest] for i, name in enumerate(TOKENS)}
        state_t = torch.as_tensor(state).to(self.device, torch.float32)
        out = self._forward(batch, on_device[0, :, longest], state_t).cpu().numpy()
        return out[:, :-2], out[:, -2:]

    @torch.no_grad()
    def predict_on_device(self, tokens: dict[str, torch.Tensor], lengths: torch.Tensor,
                          state: torch.Tensor) -> torch.Tensor:
        """:meth:`predict` of tokens already on the model's device, left there: [B, A + 1 + 2] (the next-action
        probabilities, then the two conversion probabilities).

        Shapes do not depend on the values (every row keeps its last min(K, window) positions), so nothing
        waits for the device. Rows without events get values nobody should read.
        """
        span = min(tokens["action"].shape[1], self.window)
        lengths = lengths.long()
        used = lengths.clamp(max=self.window)
        positions = torch.arange(span, device=lengths.device)[None, :]
        pad = positions >= used[:, None]
        cols = torch.where(pad, 0, (lengths - used)[:, None] + positions)
        batch = {name: torch.where(pad, self.n_actions if name == "action" else 0, tokens[name].long().gather(1, cols))
                 for name in TOKENS}
        return self._forward(batch, (used - 1).clamp(min=0), state.float())

    def _forward(self, batch: dict[str, torch.Tensor], last: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """Probabilities [B, A + 1 + 2] after each row's position ``last``."""
        with torch.autocast(self.device.type, dtype=PRECISIONS[self.precision], enabled=self.precision != "float32"):
            next_logits, conv_logits = self.model.heads(self.model.encode_last(batch, last, self.events), state)
        return torch.cat([torch.softmax(next_logits.float(), -1), torch.sigmoid(conv_logits.float())], dim=1)
