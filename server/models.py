"""Per-tenant next-action models: where their checkpoints live, loading, and what is served now."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model import TenantConfig

log = logging.getLogger(__name__)

MODELS_DIR = "models"


class ModelUnavailable(Exception):
    """A checkpoint could not be served; ``code`` says why (model_not_found, model_mismatch, invalid_model)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def model_path(data_dir: Path, tenant_name: str) -> Path:
    """Where ``nudge train --data-dir DIR --tenant NAME`` writes, and the server looks for, a tenant's model."""
    return data_dir / MODELS_DIR / f"{tenant_name}.pt"


def file_stamp(path: Path) -> tuple[int, int] | None:
    """(mtime in ns, size) of a file, None when it does not exist: a change means a new checkpoint."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size


def load_predictor(path: Path, config: TenantConfig, device: str):
    """A ``TransformerPredictor`` for the checkpoint at ``path``, or :class:`ModelUnavailable`."""
    try:
        from model.predictor import ModelMismatch, TransformerPredictor, read_checkpoint
    except ImportError:
        raise ModelUnavailable("invalid_model", "torch is not installed; install nudge[dev] to serve models") from None
    try:
        checkpoint = read_checkpoint(path)
    except FileNotFoundError:
        raise ModelUnavailable("model_not_found", f"no checkpoint at {path}; train one with nudge train") from None
    except ValueError as exc:
        raise ModelUnavailable("invalid_model", str(exc)) from None
    try:
        return TransformerPredictor(checkpoint, config, device)
    except ModelMismatch as exc:
        raise ModelUnavailable("model_mismatch", str(exc)) from None
    except (KeyError, TypeError, RuntimeError) as exc:  # weights that do not fit the model they claim
        raise ModelUnavailable("invalid_model", f"{path}: {type(exc).__name__}: {exc}") from None


@dataclass
class ModelSlot:
    """The model one tenant serves, and what happened at the last attempt to (re)load it."""

    path: Path
    predictor: Any = None
    stamp: tuple[int, int] | None = None  # of the file last tried, loaded or not
    loaded_at: float | None = None
    last_error: dict[str, Any] | None = field(default=None)

    @property
    def predictor_name(self) -> str:
        return "transformer" if self.predictor is not None else "markov"

    def describe(self) -> dict[str, Any]:
        model = None
        if self.predictor is not None:
            model = {"file": self.path.name, "loaded_at": self.loaded_at, **self.predictor.info,
                     "calibration": self.predictor.calibration.describe()}
        return {"predictor": self.predictor_name, "model": model, "last_error": self.last_error}

    def fail(self, exc: ModelUnavailable) -> None:
        self.last_error = {"code": exc.code, "message": str(exc), "at": time.time()}
        log.warning("model %s not loaded (%s): %s; still serving %s", self.path, exc.code, exc, self.predictor_name)

    def install(self, predictor, stamp: tuple[int, int] | None) -> None:
        self.predictor, self.stamp, self.loaded_at, self.last_error = predictor, stamp, time.time(), None
        log.info("serving model %s", self.path)
