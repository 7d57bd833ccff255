"""The deployment gate: whether a new next-action checkpoint may replace the predictor that serves a tenant.

Two checks, in order. The checkpoint's own validation must have judged enough next-action events: a model
validated on a handful of events says nothing about itself. Then, in shadow, the candidate and the predictor
that serves now both predict the tenant's recent log: its first half (in time) is history only, and its second
half is scored, less any events the candidate was fitted on (those before its own validation span). The
candidate is promoted when it is not worse there than what serves: its relative next-action log-loss gain may
not be significantly below zero nor its point estimate lose more than ``max_logloss_drop``, and, where 5-minute
purchase labels exist, its AUC gain may not be significantly below zero. Intervals come from a bootstrap over
users.

When the Markov chain serves, it is compared as the first-order Markov baseline of ``model.baselines`` fitted on
the first half of the recent log: what the server's own chain has learned from the same tenant by then, with
'session end' as one more outcome so that both predict the same classes. The candidate's own Markov baseline,
fitted on its training data, is not what serves, and is not used.

No HTTP here: the server reads the log and decides what to do with the :class:`GateReport`.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from .baselines import baseline_predictions, fit_baselines
from .config import TenantConfig
from .evaluation import paired_margins
from .events import EventBatch
from .training import features, load_model, predict

__all__ = ["GateReport", "GateRules", "judge", "validation_events"]


@dataclass(frozen=True)
class GateRules:
    """What a checkpoint must show to replace the predictor that serves.

    Parameters
    ----------
    min_validation_events : judged next-action events (holdout events less censored ones) the checkpoint's own
        validation must have had: 500 pin a log-loss down to a few percent (standard error about 1/sqrt(500), 4.5 %,
        of its value when per-event losses vary as much as their mean).
    min_compared_events : judged next-action events the recent log's second half needs for a comparison.
    max_logloss_drop : the largest relative next-action log-loss loss (point estimate) accepted; 0.005 is 0.5 %.
    recent_events : how many of the tenant's latest logged events the comparison reads.
    replicates : bootstrap replicates over users for the 95 % intervals.
    seed : of the bootstrap.
    """

    min_validation_events: int = 500
    min_compared_events: int = 500
    max_logloss_drop: float = 0.005
    recent_events: int = 30_000
    replicates: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("min_validation_events", "min_compared_events", "recent_events", "replicates"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.max_logloss_drop < 1.0:
            raise ValueError(
                f"max_logloss_drop is a share in [0, 1), e.g. 0.005 for 0.5 %, got {self.max_logloss_drop}")


@dataclass(frozen=True)
class GateReport:
    """The gate's decision on one checkpoint, and the figures it was made on.

    Parameters
    ----------
    promote : whether the checkpoint may serve.
    reason : why, in words a user can act on.
    serving : what the candidate was compared with: ``transformer`` or ``markov``.
    forced : the comparison was skipped on request.
    validation_events : judged next-action events of the checkpoint's own validation (None: it carries none).
    compared_events : judged next-action events of the recent log's second half (0 when not compared).
    recent_events : events of the recent log read.
    figures : gains with their 95 % intervals, and each side's next-action log-loss on the compared events.
    """

    promote: bool
    reason: str
    serving: str
    forced: bool = False
    validation_events: int | None = None
    compared_events: int = 0
    recent_events: int = 0
    figures: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain values (intervals as lists, nan as None), ready for JSON and the model history."""
        return {
            "promote": self.promote, "reason": self.reason, "serving": self.serving, "forced": self.forced,
            "validation_events": self.validation_events, "compared_events": self.compared_events,
            "recent_events": self.recent_events, "figures": {k: _plain(v) for k, v in self.figures.items()},
        }


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def validation_events(checkpoint: Mapping[str, Any]) -> int | None:
    """Judged next-action events of the checkpoint's own holdout; None when it carries no Transformer validation."""
    metrics = (checkpoint.get("validation_metrics") or {}).get("transformer")
    if not metrics or "n_events" not in metrics:
        return None
    return int(metrics["n_events"]) - int(metrics.get("next_action_censored", 0))


def judge(
    candidate: Mapping[str, Any], recent: EventBatch, config: TenantConfig,
    serving: Mapping[str, Any] | None = None, rules: GateRules = GateRules(), force: bool = False,
) -> GateReport:
    """Whether ``candidate`` may replace ``serving`` (a checkpoint, or None for the Markov chain), judged on the
    tenant's ``recent`` events (any order); ``force`` skips the comparison, never the validation rule."""
    serving_name = "markov" if serving is None else "transformer"
    judged = validation_events(candidate)
    report = functools.partial(GateReport, serving=serving_name, forced=force, validation_events=judged,
                               recent_events=len(recent))
    if judged is None:
        return report(False, "the checkpoint carries no validation of its Transformer; train it with nudge train, "
                             "which validates on the last part of the log")
    if judged < rules.min_validation_events:
        return report(False, f"the checkpoint was validated on {judged} judged next-action events, fewer than "
                             f"{rules.min_validation_events}; train it on a longer log so that its holdout holds more")
    if force:
        return report(True, "forced: promoted on the checkpoint's own validation, without comparing it with the "
                            f"serving {serving_name}")
    seq, rows = _recent_sequences(recent, config, _fitted_until(candidate))
    compared = int((rows & (seq.next_action >= 0)).sum()) if seq is not None else 0
    if compared < rules.min_compared_events:
        return report(False, f"the tenant's recent log has {compared} judged next-action events to compare on (in its "
                             "second half, and after the events the checkpoint was fitted on), fewer than "
                             f"{rules.min_compared_events}; send more events, or reload with "
                             '{"force": true} to promote on the checkpoint\'s own validation', compared_events=compared)
    figures = _compare(seq, rows, candidate, serving, len(config.actions), rules)
    return report(*_verdict(figures, serving_name, rules), compared_events=compared, figures=figures)


def _fitted_until(checkpoint: Mapping[str, Any]) -> float:
    """The time before which the checkpoint's weights were fitted (its validation span starts there)."""
    value = (checkpoint.get("data") or {}).get("validation_from_ts")
    return float(value) if value is not None else -math.inf


def _recent_sequences(recent: EventBatch, config: TenantConfig, fitted_until: float = -math.inf):
    """Features of a time-sorted copy of the recent log, and which rows are scored: its second half in time, and
    nothing the candidate was fitted on (a model judged on its own training events would look better than it is)."""
    if not len(recent):
        return None, None
    batch = recent.take(np.argsort(recent.ts, kind="stable"))
    seq = features(batch, config)
    cut = max(float(np.sort(seq.ts)[len(seq) // 2]), fitted_until)
    return seq, seq.ts >= cut


def _compare(seq, rows: np.ndarray, candidate, serving, n_actions: int, rules: GateRules) -> dict[str, Any]:
    """The candidate's gains over what serves, with intervals, and both next-action log-losses."""
    ours = predict(load_model(candidate), seq)
    if serving is None:
        theirs = baseline_predictions(fit_baselines(seq, ~rows, n_actions), seq)["markov"]
    else:
        theirs = predict(load_model(serving), seq)
    figures = paired_margins(seq, rows, ours, theirs, rules.replicates, rules.seed)
    known = rows & (seq.next_action >= 0)
    for side, (next_probs, _) in (("candidate", ours), ("serving", theirs)):
        p = np.clip(next_probs[known, seq.next_action[known]], 1e-12, 1.0)
        figures[f"{side}_next_action_logloss"] = float(-np.log(p).mean())
    seen = rows & (seq.conv[0] >= 0)
    figures["purchase_5m_events"] = int(seen.sum())
    figures["purchase_5m_positives"] = int((seq.conv[0][seen] == 1).sum())
    figures["compared_users"] = int(len(np.unique(seq.user[known])))
    return figures


def _verdict(figures: Mapping[str, Any], serving: str, rules: GateRules) -> tuple[bool, str]:
    gain = figures["next_action_logloss_relative_gain"]
    lo, hi = figures["next_action_logloss_relative_gain_ci"]
    summary = (f"next-action log-loss gain over the serving {serving} {gain:+.2%} "
            f"(95 % interval {lo:+.2%} to {hi:+.2%})")
    if not (hi >= 0.0 and gain >= -rules.max_logloss_drop):
        return False, (f"on the tenant's recent log the checkpoint predicts next actions worse than the serving "
                       f"{serving}: {summary}; it may lose at most {rules.max_logloss_drop:.1%} and not significantly")
    if "purchase_5m_auc_gain" in figures:
        auc, (auc_lo, auc_hi) = figures["purchase_5m_auc_gain"], figures["purchase_5m_auc_gain_ci"]
        auc_text = f"5-minute purchase AUC gain {auc:+.4f} (95 % interval {auc_lo:+.4f} to {auc_hi:+.4f})"
        if not auc_hi >= 0.0:
            return False, (f"on the tenant's recent log the checkpoint ranks 5-minute purchases significantly worse "
                           f"than the serving {serving}: {auc_text}")
        summary = f"{summary}; {auc_text}"
    else:
        summary = f"{summary}; no 5-minute purchase labels to compare"
    return True, f"not worse than the serving {serving}: {summary}"
