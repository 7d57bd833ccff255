"""Learning for nudge: the Action Weighting Engine, offline replay, and (model.training, model.evaluation,
which need torch) the next-action Transformer and (model.deployment, likewise) its deployment gate. No HTTP here."""
from .config import DEFAULT_ACTIONS, ConfigError, TenantConfig
from .contexts import DAYPARTS, DEVICES
from .engine import PREDICT_HORIZONS_S, Engine, Scores
from .events import EventBatch

__all__ = [
    "DAYPARTS",
    "DEFAULT_ACTIONS",
    "DEVICES",
    "PREDICT_HORIZONS_S",
    "ConfigError",
    "Engine",
    "EventBatch",
    "Scores",
    "TenantConfig",
]
