"""Per-tenant next-action models: where their checkpoints live, loading, what is served now, what a rollback
returns to, and the history of promotions."""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model import TenantConfig

log = logging.getLogger(__name__)

MODELS_DIR = "models"
# Gate decisions and rollbacks kept per tenant, in memory and in the database's model_history table.
HISTORY_LIMIT = 100
# Predictors kept to roll back to (the Markov chain among them): each holds a model on the device.
ROLLBACK_DEPTH = 3


class ModelUnavailable(Exception):
    """A checkpoint could not be served; ``code`` says why (model_not_found, model_mismatch, invalid_model,
    model_rejected, nothing_to_roll_back)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class ModelRejected(ModelUnavailable):
    """The deployment gate refused a checkpoint; ``gate`` holds its figures (``GateReport.as_dict``)."""

    def __init__(self, message: str, gate: dict[str, Any]):
        super().__init__("model_rejected", message)
        self.gate = gate


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
    return load_candidate(path, config, device)[1]


def load_candidate(path: Path, config: TenantConfig, device: str) -> tuple[dict[str, Any], Any]:
    """The checkpoint at ``path`` and a ``TransformerPredictor`` for it, or :class:`ModelUnavailable`."""
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
        return checkpoint, TransformerPredictor(checkpoint, config, device)
    except ModelMismatch as exc:
        raise ModelUnavailable("model_mismatch", str(exc)) from None
    except (KeyError, TypeError, RuntimeError) as exc:  # weights that do not fit the model they claim
        raise ModelUnavailable("invalid_model", f"{path}: {type(exc).__name__}: {exc}") from None


def _stamp_record(stamp: tuple[int, int] | None) -> dict[str, int] | None:
    """A file stamp as the model history shows it."""
    return None if stamp is None else {"mtime_ns": stamp[0], "size": stamp[1]}


def _stamp(record: dict[str, int] | None) -> tuple[int, int] | None:
    return None if record is None else (int(record["mtime_ns"]), int(record["size"]))


def _fits(checkpoint: dict[str, Any] | None, config: TenantConfig) -> bool:
    """Whether a checkpoint still matches the tenant's config (None, the Markov chain, always does)."""
    if checkpoint is None:
        return True
    from model.predictor import ModelMismatch, check_compatible

    try:
        check_compatible(checkpoint, config)
    except ModelMismatch:
        return False
    return True


@dataclass(frozen=True)
class Served:
    """A predictor that served (None: the Markov chain), its checkpoint and the stamp of its file."""

    predictor: Any = None
    checkpoint: dict[str, Any] | None = None
    stamp: tuple[int, int] | None = None

    @property
    def name(self) -> str:
        return "transformer" if self.predictor is not None else "markov"


@dataclass
class ModelSlot:
    """The model one tenant serves, what it can roll back to, and what happened at the last attempts to change it.

    Parameters
    ----------
    path : the tenant's checkpoint file.
    predictor : the ``TransformerPredictor`` serving; None while the Markov chain serves.
    stamp : of the file last tried, promoted or not: the watcher acts only when the file's stamp differs.
    loaded_at, checkpoint, served_stamp : when the serving predictor was installed, its checkpoint (what a
        candidate is compared with) and the stamp of the file it came from; meaningful while ``predictor`` is set.
    last_error : the last failed load or refusal; ``gate`` the figures of the last gate decision.
    previous : what a rollback reinstalls, newest last.
    history : promotions, refusals, rollbacks and failed loads, newest first.
    lock : one gate or rollback at a time.
    """

    path: Path
    predictor: Any = None
    stamp: tuple[int, int] | None = None
    loaded_at: float | None = None
    last_error: dict[str, Any] | None = field(default=None)
    checkpoint: dict[str, Any] | None = None
    served_stamp: tuple[int, int] | None = None
    gate: dict[str, Any] | None = None
    previous: list[Served] = field(default_factory=list)
    history: deque = field(default_factory=lambda: deque(maxlen=HISTORY_LIMIT))
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def predictor_name(self) -> str:
        return "transformer" if self.predictor is not None else "markov"

    @property
    def serving(self) -> Served:
        """What serves now (a predictor dropped from outside, on a vocabulary change, leaves the Markov chain)."""
        if self.predictor is None:
            return Served()
        return Served(self.predictor, self.checkpoint, self.served_stamp)

    def describe(self) -> dict[str, Any]:
        model = None
        if self.predictor is not None:
            model = {"file": self.path.name, "loaded_at": self.loaded_at, "stamp": _stamp_record(self.served_stamp),
                     **self.predictor.info, "calibration": self.predictor.calibration.describe()}
        return {"predictor": self.predictor_name, "model": model, "last_error": self.last_error, "gate": self.gate,
                "rollback_to": self.previous[-1].name if self.previous else None}

    def fail(self, exc: ModelUnavailable) -> None:
        self.last_error = {"code": exc.code, "message": str(exc), "at": time.time()}
        if isinstance(exc, ModelRejected):
            self.gate = exc.gate
        log.warning("model %s not loaded (%s): %s; still serving %s", self.path, exc.code, exc, self.predictor_name)

    def install(self, predictor, stamp: tuple[int, int] | None, checkpoint: dict[str, Any] | None = None) -> None:
        self.predictor, self.stamp, self.loaded_at, self.last_error = predictor, stamp, time.time(), None
        self.checkpoint, self.served_stamp = checkpoint, stamp
        log.info("serving model %s", self.path)

    def promote(self, predictor, checkpoint: dict[str, Any], stamp: tuple[int, int] | None,
                gate: dict[str, Any]) -> None:
        """Serve ``predictor``; what served until now is what a rollback returns to."""
        self.previous = [*self.previous, self.serving][-ROLLBACK_DEPTH:]
        self.install(predictor, stamp, checkpoint)
        self.gate = gate

    def roll_back(self, config: TenantConfig) -> Served:
        """Reinstall the predictor that served before the current one; returns the one replaced.

        Predictors trained on a vocabulary the tenant no longer has are passed over; none left is
        :class:`ModelUnavailable` ``nothing_to_roll_back``. The file's stamp is kept, so the watcher does not
        promote the rolled-back checkpoint again until its file changes.
        """
        replaced = self.serving
        while self.previous:
            back = self.previous.pop()
            if _fits(back.checkpoint, config):
                self.predictor, self.checkpoint, self.served_stamp = back.predictor, back.checkpoint, back.stamp
                self.loaded_at, self.last_error = time.time(), None
                log.info("model %s rolled back from %s to %s", self.path, replaced.name, back.name)
                return replaced
        raise ModelUnavailable("nothing_to_roll_back", "no earlier predictor to roll back to")

    def record(self, event: str, stamp: tuple[int, int] | None, gate: dict[str, Any] | None = None,
               message: str | None = None) -> dict[str, Any]:
        """Add an event (promoted, rejected, rolled_back, load_failed) to the history; returns its entry."""
        entry = {"event": event, "at": time.time(), "file": self.path.name, "stamp": _stamp_record(stamp),
                 "predictor": self.predictor_name, "serving_stamp": _stamp_record(self.serving.stamp),
                 "gate": gate, "message": message}
        self.history.appendleft(entry)
        return entry

    def restore_history(self, entries: list[dict[str, Any]]) -> None:
        """The history read back at start, newest first."""
        self.history.extend(entries[: HISTORY_LIMIT])

    def promoted_stamp(self) -> tuple[int, int] | None:
        """The stamp of the checkpoint that served when the history was last written; None: the Markov chain."""
        return _stamp(self.history[0]["serving_stamp"]) if self.history else None

    def tried(self, stamp: tuple[int, int]) -> bool:
        """Whether the history holds a decision on the file with this stamp."""
        return any(_stamp(entry["stamp"]) == stamp for entry in self.history)
