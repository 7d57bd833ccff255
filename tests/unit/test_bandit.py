from pathlib import Path

import numpy as np
import pytest

from model.bandit import ThompsonBandit
from model.bandit_replay import Log, evaluate_campaigns, load_obd, replay_bandit
from model.uplift import rate_difference, wilson

OBD = Path(__file__).resolve().parents[3] / "shared" / "data" / "open-bandit-dataset-sample"


def test_bandit_shifts_toward_the_variant_that_converts_best():
    rates = np.array([0.05, 0.10, 0.20])  # e.g. discounts of 5, 10 and 15 %
    rng = np.random.default_rng(0)
    bandit = ThompsonBandit(3, seed=1)
    picks = []
    for _ in range(3000):
        arm = bandit.choose(1)
        bandit.update(arm, rng.random(1) < rates[arm])
        picks.append(int(arm[0]))
    assert np.mean(np.array(picks[-1000:]) == 2) > 0.8
    posterior = bandit.posterior()
    assert posterior["ci95_low"][2] < 0.2 < posterior["ci95_high"][2]
    assert np.argmax(posterior["mean"]) == 2


def test_bandit_choices_are_reproducible_and_validated():
    a, b = ThompsonBandit(5, seed=7), ThompsonBandit(5, seed=7)
    assert a.choose(50).tolist() == b.choose(50).tolist()
    with pytest.raises(ValueError):
        ThompsonBandit(0)
    with pytest.raises(ValueError, match="rewards"):
        a.update(np.array([0]), np.array([2.0]))


def test_replay_credits_a_bandit_that_finds_the_clicked_arm():
    rng = np.random.default_rng(3)
    arm = rng.integers(0, 4, 6000)
    reward = ((arm == 2) & (rng.random(6000) < 0.5)).astype(float)  # only arm 2 is ever clicked
    matched, clicks = replay_bandit(Log(arm, reward, 4), seed=0)
    random_ctr = reward.mean()
    assert matched > 1000 and clicks / matched > 2.5 * random_ctr


def test_wilson_interval_matches_a_known_value():
    lo, hi = wilson(10, 100)
    assert lo == pytest.approx(0.0552, abs=1e-4) and hi == pytest.approx(0.1744, abs=1e-4)


def test_obd_loader_refuses_non_uniform_logs(tmp_path):
    path = tmp_path / "bts.csv"
    path.write_text(",timestamp,item_id,position,click,propensity_score\n0,t,1,1,0,0.2\n1,t,2,1,1,0.7\n")
    with pytest.raises(ValueError, match="uniformly random"):
        load_obd(path)


@pytest.mark.skipif(not OBD.exists(), reason="../shared/data is not present")
def test_replay_runs_on_the_open_bandit_sample():
    rows = evaluate_campaigns(OBD, runs=1)
    assert [r["campaign"] for r in rows] == ["all", "men", "women", "pooled"]
    assert rows[0]["random_impressions"] == 10_000 and rows[0]["random_clicks"] == 38
    assert all(r["ts_matched_impressions"] > 50 for r in rows)


def test_rate_difference_matches_newcombes_worked_example():
    d, lo, hi = rate_difference(56, 70, 48, 80)  # Newcombe (1998), example (a), method 10
    assert d == pytest.approx(0.2) and lo == pytest.approx(0.0524, abs=1e-4) and hi == pytest.approx(0.3339, abs=1e-4)
