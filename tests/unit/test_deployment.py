"""The deployment gate on its own: validation rule, shadow comparison with what serves, force, the figures."""
import math

import numpy as np
import pytest
import torch

from model import EventBatch, TenantConfig
from model.deployment import GateReport, GateRules, judge, validation_events
from model.score_features import ScoreFeatures
from model.training import TrainSettings, train
from model.transformer import NextActionTransformer, TransformerConfig

CONFIG = TenantConfig()
_CODE = {a: i for i, a in enumerate(CONFIG.actions)}
# After a view, what comes next depends on the step of the funnel: the Markov chain cannot tell, a Transformer can.
FUNNEL = [_CODE[a] for a in ("view", "search", "view", "add_to_cart", "view", "begin_checkout", "purchase")]
SMALL = TransformerConfig(n_actions=len(CONFIG.actions), window=8, d_model=16, layers=1, heads=2, dropout=0.0)
T0 = 1_700_000_000.0


def _log(seed: int, n_sessions: int, t0: float = T0, span_s: float = 2 * 86400) -> EventBatch:
    """Sessions that follow the funnel, one action in seven random, time-sorted."""
    rng = np.random.default_rng(seed)
    users, actions, ts = [], [], []
    for _ in range(n_sessions):
        user, t = f"u{rng.integers(0, n_sessions // 3)}", t0 + rng.uniform(0, span_s)
        for step in range(rng.integers(3, len(FUNNEL) + 1)):
            users.append(user)
            actions.append(FUNNEL[step] if rng.random() > 0.15 else int(rng.integers(0, len(CONFIG.actions))))
            ts.append(t)
            t += rng.uniform(5, 40)
    order = np.argsort(ts, kind="stable")
    return EventBatch.build(np.array(users)[order].tolist(), np.array(actions)[order], np.array(ts)[order])


def _validated(checkpoint: dict, judged: int) -> dict:
    return {**checkpoint, "validation_metrics": {"transformer": {"n_events": judged + 10, "next_action_censored": 10}}}


@pytest.fixture(scope="module")
def trained():
    return train(_log(0, 1000, T0 - 4 * 86400, 3 * 86400), CONFIG, TrainSettings(epochs=4, patience=2, batch_size=32),
                 SMALL, log=lambda line: None, show_progress=False)


@pytest.fixture(scope="module")
def untrained(trained):
    torch.manual_seed(1)
    width = ScoreFeatures(CONFIG.actions).width
    model = NextActionTransformer(TransformerConfig(**{**SMALL.to_dict(), "state_dim": width}))
    return _validated({**trained, "model_state": model.state_dict()}, 1000)


@pytest.fixture(scope="module")
def recent():
    return _log(5, 450)


def test_validation_events_counts_the_judged_holdout_events():
    assert validation_events(_validated({}, 612)) == 612
    assert validation_events({}) is None
    assert validation_events({"validation_metrics": {"markov": {"n_events": 900}}}) is None


def test_judge_refuses_a_checkpoint_without_validation_whatever_the_log(recent):
    report = judge({"validation_metrics": {}}, recent, CONFIG, force=True)
    assert not report.promote and "no validation" in report.reason and report.validation_events is None


def test_judge_refuses_too_little_validation_even_when_forced(trained, recent):
    for force in (False, True):
        report = judge(_validated(trained, 499), recent, CONFIG, force=force)
        assert not report.promote and "validated on 499" in report.reason and "fewer than 500" in report.reason


def test_judge_promotes_a_model_better_than_the_markov_chain(trained, recent):
    report = judge(trained, recent, CONFIG)
    assert report.promote and report.serving == "markov" and report.compared_events >= 500, report.reason
    low, high = report.figures["next_action_logloss_relative_gain_ci"]
    assert 0 < low <= report.figures["next_action_logloss_relative_gain"] <= high
    assert report.figures["candidate_next_action_logloss"] < report.figures["serving_next_action_logloss"]
    assert "purchase_5m_auc_gain_ci" in report.figures and report.figures["purchase_5m_positives"] > 0


def test_judge_refuses_a_model_worse_than_the_markov_chain(untrained, recent):
    report = judge(untrained, recent, CONFIG)
    assert not report.promote and "worse than the serving markov" in report.reason
    assert report.figures["next_action_logloss_relative_gain_ci"][1] < 0


def test_judge_finds_a_model_exactly_as_good_as_the_one_serving(trained, recent):
    report = judge(trained, recent, CONFIG, serving=trained)
    assert report.promote and report.serving == "transformer"
    assert report.figures["next_action_logloss_relative_gain"] == 0.0
    assert report.figures["next_action_logloss_relative_gain_ci"] == (0.0, 0.0)


def test_judge_refuses_a_model_that_ranks_purchases_worse_than_the_one_serving(trained, recent):
    # The same next-action head, the conversion head turned around: only the AUC rule can see it.
    state = {k: (-v if k.startswith("conversion.") else v) for k, v in trained["model_state"].items()}
    report = judge({**trained, "model_state": state}, recent, CONFIG, serving=trained)
    assert not report.promote and "5-minute purchases significantly worse" in report.reason
    assert report.figures["next_action_logloss_relative_gain"] == 0.0
    assert report.figures["purchase_5m_auc_gain_ci"][1] < 0


def test_judge_needs_enough_recent_events_unless_forced(trained):
    few = _log(7, 40)
    report = judge(trained, few, CONFIG)
    assert not report.promote and report.compared_events < 500 and '"force": true' in report.reason
    assert not judge(trained, EventBatch.build([], [], []), CONFIG).promote
    forced = judge(trained, few, CONFIG, force=True)
    assert forced.promote and forced.forced and forced.figures == {} and forced.compared_events == 0


def test_judge_reads_the_recent_log_in_any_order(trained, recent):
    shuffled = recent.take(np.random.default_rng(3).permutation(len(recent)))
    assert judge(trained, shuffled, CONFIG) == judge(trained, recent, CONFIG)


def test_gate_rules_refuse_values_that_cannot_gate():
    with pytest.raises(ValueError, match="min_compared_events"):
        GateRules(min_compared_events=0)
    with pytest.raises(ValueError, match="0.005 for 0.5 %"):
        GateRules(max_logloss_drop=5.0)


def test_gate_report_as_dict_is_plain_json():
    report = GateReport(False, "why", "markov", figures={"gain": math.nan, "gain_ci": (-0.1, 0.2)})
    assert report.as_dict()["figures"] == {"gain": None, "gain_ci": [-0.1, 0.2]}


def test_judge_scores_only_events_the_candidate_was_not_fitted_on(trained, recent):
    everything = judge(trained, recent, CONFIG)
    # The same weights, as if fitted on the log up to three quarters of the way through the recent events.
    late = float(np.quantile(recent.ts, 0.75))
    fitted_later = {**trained, "data": {**trained["data"], "validation_from_ts": late}}
    later = judge(fitted_later, recent, CONFIG, rules=GateRules(min_compared_events=50))
    assert 0 < later.compared_events < 0.7 * everything.compared_events, (later.compared_events, everything.compared_events)
    fitted_on_all = {**trained, "data": {**trained["data"], "validation_from_ts": float(recent.ts.max()) + 1}}
    refused = judge(fitted_on_all, recent, CONFIG)
    assert not refused.promote and refused.compared_events == 0 and "fitted on" in refused.reason
