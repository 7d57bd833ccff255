"""Batched math for nudge: Beta-posterior sampling and sequence weights.

Every function takes its arrays and an optional ``backend``; the backend is chosen
once by :func:`resolve_backend`. Nothing here knows about HTTP or the model.
"""
from ._arrays import torch_device as compute_device
from .backend import DEVICE_MIN_ROWS, BackendUnavailable, available_backends, for_rows, resolve_backend, warm_up
from .beta import beta_sample, beta_sample_numpy
from .sequence import sequence_scores, sequence_scores_many, sequence_scores_numpy

__all__ = [
    "BackendUnavailable",
    "DEVICE_MIN_ROWS",
    "available_backends",
    "beta_sample",
    "beta_sample_numpy",
    "compute_device",
    "for_rows",
    "resolve_backend",
    "sequence_scores",
    "sequence_scores_many",
    "sequence_scores_numpy",
    "warm_up",
]
