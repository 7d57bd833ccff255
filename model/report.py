"""A readable summary of an engine's learned weights (what GET /v1/weights shows)."""
from __future__ import annotations

from typing import Any

import numpy as np

from .contexts import describe_context
from .engine import Engine
from .posteriors import beta_interval, beta_mean


def _rows(actions: tuple[str, ...], alpha: np.ndarray, beta: np.ndarray, prior: np.ndarray) -> list[dict[str, Any]]:
    lo, hi = beta_interval(alpha, beta)
    mean = beta_mean(alpha, beta)
    return [
        {
            "action": a,
            "mean": float(mean[i]),
            "ci95": [float(lo[i]), float(hi[i])],
            "alpha": float(alpha[i]),
            "beta": float(beta[i]),
            "prior_mean": float(prior[i]),
        }
        for i, a in enumerate(actions)
    ]


def weights_report(engine: Engine) -> dict[str, Any]:
    """Posterior per action (pooled and per context with evidence), transitions and lifts."""
    actions = engine.config.actions
    prior = beta_mean(engine.prior_alpha, engine.prior_beta)
    alpha, beta = engine.posterior()
    evidence = engine.context_evidence.success + engine.context_evidence.failure
    contexts = [
        {"context": describe_context(c, engine.config.segments), "actions": _rows(actions, alpha[c], beta[c], prior)}
        for c in np.flatnonzero(evidence.sum(axis=1) > 0)
    ]
    probs = engine.markov.probabilities()
    return {
        "horizon_s": engine.config.horizon_s,
        "clock_s": engine.clock_s if np.isfinite(engine.clock_s) else None,
        "events_applied": engine.events_applied,
        "pending_attribution": engine.attribution.pending,
        "late_events": engine.late_events,
        "actions": _rows(actions, *engine.pooled_posterior(), prior),
        "contexts": contexts,
        "transitions": {
            "actions": list(actions),
            "from_session_start": probs[engine.markov.start].tolist(),
            "probabilities": probs[: engine.n_actions].tolist(),
            "lift": engine.lift().tolist(),
        },
    }
