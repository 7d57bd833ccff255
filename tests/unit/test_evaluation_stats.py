import numpy as np
import pytest
from scipy.special import expit
from scipy.stats import rankdata

from model.evaluation_stats import WeightedAuc, binary_metrics, user_bootstrap, weighted_auc


def _mann_whitney(scores, y):
    ranks = rankdata(scores)
    pos, neg = int(y.sum()), int((~y).sum())
    return (ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg)


def _clustered(users, events_per_user, seed):
    """Each user has one label for all their events; scores carry a user-level signal plus event noise."""
    rng = np.random.default_rng(seed)
    user_y = np.arange(users) % 2 == 0
    user_score = user_y * 0.5 + rng.normal(0, 1, users)
    ids = np.repeat(np.arange(users), events_per_user)
    return ids, user_y[ids], user_score[ids] + rng.normal(0, 0.3, len(ids))


def test_binary_metrics_match_hand_computed_values():
    p = np.array([0.1, 0.4, 0.35, 0.8])
    y = np.array([False, False, True, True])
    m = binary_metrics(p, y)
    assert m["n"] == 4 and m["positives"] == 2
    assert m["auc"] == pytest.approx(0.75)
    assert m["logloss"] == pytest.approx(-np.mean(np.log([0.9, 0.6, 0.35, 0.8])))
    assert m["brier"] == pytest.approx(np.mean([0.01, 0.16, 0.4225, 0.04]))
    assert m["mean_predicted"] == pytest.approx(0.4125)
    assert m["observed_rate"] == pytest.approx(0.5)


def test_binary_metrics_auc_counts_ties_half_and_matches_rank_formula():
    rng = np.random.default_rng(1)
    p = np.round(rng.random(500), 1)  # heavy ties
    y = rng.random(500) < p
    assert binary_metrics(np.array([0.5, 0.5]), np.array([0, 1]))["auc"] == 0.5
    assert binary_metrics(p, y)["auc"] == pytest.approx(_mann_whitney(p, y), abs=1e-12)


def test_binary_metrics_logloss_clips_certain_mistakes():
    m = binary_metrics(np.array([0.0, 1.0]), np.array([True, False]))
    assert m["logloss"] == pytest.approx(-np.log(1e-6))


def test_binary_metrics_ece_on_twenty_events_in_ten_pairs():
    # Sorted, bin k holds events 2k and 2k+1, with mean p = k / 10 + 0.05.
    p = np.repeat(np.arange(10) / 10, 2) + np.tile([0.02, 0.08], 10)
    y = np.zeros(20, bool)
    y[[1, 3, 17, 18, 19]] = True
    # Bin mean y: .5 .5 0 0 0 0 0 0 .5 1, so the gaps are .45 .35 .25 .35 .45 .55 .65 .75 .35 .05.
    expected = 0.1 * 4.2
    rng = np.random.default_rng(2)
    shuffle = rng.permutation(20)
    assert binary_metrics(p[shuffle], y[shuffle])["ece"] == pytest.approx(expected)


def test_binary_metrics_calibration_slope_is_one_for_honest_and_two_for_underconfident_predictions():
    rng = np.random.default_rng(3)
    logits = rng.normal(-1, 1.5, 20_000)
    y = rng.random(len(logits)) < expit(logits)
    honest = binary_metrics(expit(logits), y)
    assert honest["calibration_slope"] == pytest.approx(1.0, abs=0.06)
    assert honest["calibration_intercept"] == pytest.approx(0.0, abs=0.06)
    assert binary_metrics(expit(logits / 2), y)["calibration_slope"] == pytest.approx(2.0, abs=0.12)
    assert binary_metrics(expit(logits * 2), y)["calibration_slope"] == pytest.approx(0.5, abs=0.03)
    assert honest["ece"] < 0.02


def test_binary_metrics_are_nan_where_undefined():
    empty = binary_metrics(np.array([]), np.array([], bool))
    assert empty["n"] == 0 and empty["positives"] == 0
    assert all(np.isnan(v) for k, v in empty.items() if k not in ("n", "positives"))
    constant = binary_metrics(np.full(6, 0.3), np.array([0, 1, 0, 1, 0, 0]))
    assert np.isnan(constant["calibration_slope"]) and np.isnan(constant["calibration_intercept"])
    assert constant["auc"] == 0.5
    one_class = binary_metrics(np.array([0.2, 0.7]), np.array([False, False]))
    assert np.isnan(one_class["auc"]) and np.isnan(one_class["calibration_slope"])
    assert one_class["brier"] == pytest.approx((0.04 + 0.49) / 2)
    separated = binary_metrics(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1]))
    assert np.isnan(separated["calibration_slope"]) and separated["auc"] == 1.0


def test_binary_metrics_reject_bad_input():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        binary_metrics(np.array([0.2, 1.5]), np.array([0, 1]))
    with pytest.raises(ValueError, match="0/1"):
        binary_metrics(np.array([0.2, 0.5]), np.array([0, 2]))
    with pytest.raises(ValueError, match="one entry per event"):
        binary_metrics(np.array([0.2, 0.5]), np.array([0, 1, 1]))


def test_weighted_auc_equals_auc_of_events_repeated_by_integer_weights():
    rng = np.random.default_rng(4)
    scores = np.round(rng.normal(0, 1, 300), 1)
    y = rng.random(300) < expit(scores)
    w = rng.integers(0, 4, 300)
    expected = _mann_whitney(np.repeat(scores, w), np.repeat(y, w))
    assert weighted_auc(scores, y, w) == pytest.approx(expected, abs=1e-12)
    ranked = WeightedAuc(scores, y)
    assert ranked(np.ones(300)) == pytest.approx(_mann_whitney(scores, y), abs=1e-12)
    assert ranked(w) == pytest.approx(expected, abs=1e-12)


def test_weighted_auc_is_nan_when_a_class_has_no_weight():
    scores, y = np.array([0.1, 0.5, 0.9]), np.array([False, True, True])
    assert np.isnan(weighted_auc(scores, y, np.array([0.0, 1.0, 2.0])))
    with pytest.raises(ValueError, match="non-negative"):
        weighted_auc(scores, y, np.array([1.0, -1.0, 1.0]))


def test_user_bootstrap_interval_is_wider_for_clustered_events_than_an_event_bootstrap():
    users, y, scores = _clustered(50, 200, seed=5)
    by_user = user_bootstrap(users, y, {"model": scores}, replicates=100)["model"]
    by_event = user_bootstrap(np.arange(len(y)), y, {"model": scores}, replicates=100)["model"]
    assert by_user["auc"] == by_event["auc"]
    width_user = by_user["auc_ci"][1] - by_user["auc_ci"][0]
    width_event = by_event["auc_ci"][1] - by_event["auc_ci"][0]
    # 50 independent users carry far less information than 10 000 independent events would.
    assert width_user > 4 * width_event
    assert by_user["auc_ci"][0] < by_user["auc"] < by_user["auc_ci"][1]


def test_user_bootstrap_difference_of_a_predictor_with_itself_is_exactly_zero():
    users, y, scores = _clustered(40, 10, seed=6)
    out = user_bootstrap(users, y, {"a": scores, "b": scores.copy()}, reference="a", replicates=50)
    assert out["b"]["diff"] == 0.0
    assert out["b"]["diff_ci"] == (0.0, 0.0)
    assert "diff" not in out["a"]


def test_user_bootstrap_puts_a_clearly_better_predictor_above_the_reference():
    rng = np.random.default_rng(7)
    users = rng.integers(0, 300, 3000)
    logits = rng.normal(0, 1, 300)[users] + rng.normal(0, 1, 3000)
    y = rng.random(3000) < expit(logits)
    preds = {"noisy": logits + rng.normal(0, 2, 3000), "sharp": logits + rng.normal(0, 0.2, 3000)}
    out = user_bootstrap(users, y, preds, reference="noisy", replicates=100, seed=1)
    assert out["sharp"]["diff"] > 0 and out["sharp"]["diff_ci"][0] > 0
    assert out["sharp"]["replicates"] == 100


def test_user_bootstrap_is_deterministic_for_a_seed_and_accepts_any_ids():
    users, y, scores = _clustered(30, 5, seed=8)
    preds = {"model": scores, "other": -scores}
    first = user_bootstrap(users, y, preds, reference="other", replicates=40, seed=3)
    assert user_bootstrap(users, y, preds, reference="other", replicates=40, seed=3) == first
    assert user_bootstrap(users, y, preds, reference="other", replicates=40, seed=4) != first
    # String ids that sort like the integers map to the same dense users, hence the same draws.
    names = np.array([f"user-{u:03d}" for u in users])
    assert user_bootstrap(names, y, preds, reference="other", replicates=40, seed=3) == first


def test_user_bootstrap_skips_draws_without_both_classes():
    users = np.array([0, 0, 1, 1])
    y = np.array([True, True, False, False])
    out = user_bootstrap(users, y, {"model": np.array([0.9, 0.8, 0.1, 0.2])}, replicates=200)["model"]
    # A draw of two users misses one class half the time.
    assert 60 < out["replicates"] < 140
    assert out["auc"] == 1.0 and out["auc_ci"] == (1.0, 1.0)


def test_user_bootstrap_rejects_bad_arguments():
    users, y, scores = _clustered(10, 2, seed=9)
    with pytest.raises(ValueError, match="reference"):
        user_bootstrap(users, y, {"model": scores}, reference="missing")
    with pytest.raises(ValueError, match="level"):
        user_bootstrap(users, y, {"model": scores}, level=95)
    with pytest.raises(ValueError, match="finite"):
        user_bootstrap(users, y, {"model": np.where(y, np.nan, scores)})
