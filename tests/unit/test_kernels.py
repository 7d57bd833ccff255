import math

import numpy as np
import pytest
import torch
from scipy import stats

import kernels
from kernels import BackendUnavailable

BACKENDS = kernels.available_backends()
TOLERANCE = {np.float32: 2e-6}


def _direct_scores(actions, ages, lengths, theta, lift, half_life_s):
    """The formula of DESIGN section 2, one row and one event at a time, in float64."""
    out = []
    for b in range(actions.shape[0]):
        keep = 1.0
        for k in range(lengths[b]):
            a = actions[b, k]
            step = 1.0 if k == 0 else float(lift[actions[b, k - 1], a])
            p = min(1.0, float(theta[b, a]) * step * 2.0 ** (-float(ages[b, k]) / half_life_s))
            keep *= 1.0 - p
        out.append(1.0 - keep)
    return np.array(out)


def _random_case(rng, batch, window, n_actions):
    actions = rng.integers(0, n_actions, (batch, window)).astype(np.int32)
    ages = rng.exponential(600.0, (batch, window)).astype(np.float32)
    lengths = rng.integers(0, window + 1, batch).astype(np.int32)
    theta = rng.beta(0.5, 3.0, (batch, n_actions)).astype(np.float32)
    lift = rng.uniform(0.25, 4.0, (n_actions, n_actions)).astype(np.float32)
    return actions, ages, lengths, theta, lift


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch", [1, 7, 1023, 4097])
@pytest.mark.parametrize("window", [1, 32])
def test_sequence_scores_match_the_formula(backend, batch, window):
    rng = np.random.default_rng(batch * 100 + window)
    n_actions = 64 if batch < 1000 else 9
    case = _random_case(rng, batch, window, n_actions)
    got = kernels.sequence_scores(*case, half_life_s=1800.0, backend=backend)
    rows = slice(None) if batch < 1000 else slice(0, 200)
    want = _direct_scores(*(c[rows] if c.ndim and c.shape[0] == batch else c for c in case), 1800.0)
    assert got.dtype == np.float32 and got.shape == (batch,)
    np.testing.assert_allclose(got[rows], want, atol=TOLERANCE[np.float32], rtol=1e-5)
    reference = kernels.sequence_scores_numpy(*case, half_life_s=1800.0)
    np.testing.assert_allclose(got, reference, atol=TOLERANCE[np.float32])


def test_sequence_scores_empty_row_scores_zero_and_first_event_has_no_lift():
    actions = np.array([[2, 0], [2, 1]], np.int32)
    ages = np.zeros((2, 2), np.float32)
    lengths = np.array([0, 1], np.int32)
    theta = np.full((2, 3), 0.3, np.float32)
    lift = np.full((3, 3), 4.0, np.float32)
    got = kernels.sequence_scores(actions, ages, lengths, theta, lift, half_life_s=60.0)
    np.testing.assert_allclose(got, [0.0, 0.3], rtol=1e-6)


def test_sequence_scores_decay_halves_contribution_per_half_life():
    theta = np.full((1, 1), 0.4, np.float32)
    one = np.ones((1, 1), np.float32)
    fresh = kernels.sequence_scores(np.zeros((1, 1), np.int32), np.zeros((1, 1), np.float32), np.ones(1, np.int32), theta, one, half_life_s=100.0)
    old = kernels.sequence_scores(np.zeros((1, 1), np.int32), np.full((1, 1), 100.0, np.float32), np.ones(1, np.int32), theta, one, half_life_s=100.0)
    assert fresh[0] == pytest.approx(0.4) and old[0] == pytest.approx(0.2)


def test_sequence_scores_rejects_bad_shapes_and_codes():
    case = _random_case(np.random.default_rng(0), 4, 3, 5)
    with pytest.raises(ValueError, match="lift"):
        kernels.sequence_scores(*case[:4], np.ones((4, 4), np.float32), half_life_s=1.0)
    bad = case[0].copy()
    bad[:, 0] = 7
    lengths = np.full(4, 3, np.int32)
    with pytest.raises(ValueError, match="action codes"):
        kernels.sequence_scores(bad, case[1], lengths, case[3], case[4], half_life_s=1.0)
    with pytest.raises(ValueError, match="half_life_s"):
        kernels.sequence_scores(*case, half_life_s=0.0)


def test_sequence_scores_returns_the_callers_array_kind():
    case = _random_case(np.random.default_rng(1), 5, 4, 6)
    got = kernels.sequence_scores(*(torch.from_numpy(c) for c in case), half_life_s=300.0)
    assert isinstance(got, torch.Tensor)
    np.testing.assert_allclose(got.numpy(), kernels.sequence_scores_numpy(*case, half_life_s=300.0))


GRID = [0.1, 0.5, 1.0, 2.0, 5.0, 50.0, 1e4]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("a", GRID)
@pytest.mark.parametrize("b", [0.1, 1.0, 5.0, 1e4])
def test_beta_sample_matches_the_beta_distribution(backend, a, b):
    n = 20_000
    x = kernels.beta_sample(np.full(n, a), np.full(n, b), seed=7, offset=int(a * 10 + b), backend=backend)
    assert x.dtype == np.float32 and x.shape == (n,)
    mean, var = a / (a + b), a * b / ((a + b) ** 2 * (a + b + 1))
    assert abs(x.mean() - mean) < 5 * math.sqrt(var / n) + 1e-6
    assert x.var() == pytest.approx(var, rel=0.1, abs=1e-7)
    assert _ks_distance_where_float32_resolves(x, stats.beta(a, b)) < 1.95 / math.sqrt(n)


def _ks_distance_where_float32_resolves(x, dist):
    """Kolmogorov-Smirnov distance measured at quantiles float32 can tell apart from 0 and 1.

    Beta(0.1, 0.1) puts ~10 % of its mass within float32's rounding distance of 1, so a plain KS
    test would flag the (correct) rounding; 1.95 / sqrt(n) is the KS critical value at p = 0.001.
    """
    probs = np.linspace(0.005, 0.995, 199)
    points = dist.ppf(probs)
    usable = (points > 1e-30) & (points < 1.0 - 1e-6)
    empirical = np.searchsorted(np.sort(x.astype(np.float64)), points[usable], side="right") / len(x)
    return float(np.abs(empirical - probs[usable]).max())


@pytest.mark.parametrize("a", [0.001, 0.01, 0.05])
def test_beta_sample_tiny_parameters_stay_in_range(a):
    x = kernels.beta_sample(np.full(50_000, a), np.full(50_000, a), seed=3)
    assert not np.isnan(x).any() and x.min() >= 0.0 and x.max() <= 1.0
    # Beta(a, a) for tiny a puts half its mass near 0 and half near 1.
    assert 0.45 < (x > 0.5).mean() < 0.55


def test_beta_sample_is_deterministic_per_seed_and_offset():
    a, b = np.full((3, 50), 2.0), np.full((3, 50), 3.0)
    first = kernels.beta_sample(a, b, seed=11, offset=4)
    np.testing.assert_array_equal(first, kernels.beta_sample(a, b, seed=11, offset=4))
    other_offset = kernels.beta_sample(a, b, seed=11, offset=5)
    other_seed = kernels.beta_sample(a, b, seed=12, offset=4)
    assert first.shape == (3, 50)
    for other in (other_offset, other_seed):
        assert not np.array_equal(first, other)
        assert abs(np.corrcoef(first.ravel(), other.ravel())[0, 1]) < 0.3


def test_beta_sample_independent_across_offsets_in_bulk():
    a, b = np.full(20_000, 1.0), np.full(20_000, 1.0)
    x, y = kernels.beta_sample(a, b, seed=1, offset=0), kernels.beta_sample(a, b, seed=1, offset=1)
    assert abs(np.corrcoef(x, y)[0, 1]) < 0.03


def test_beta_sample_rejects_non_positive_parameters():
    with pytest.raises(ValueError, match="> 0"):
        kernels.beta_sample(np.array([1.0, 0.0]), np.array([1.0, 1.0]), seed=0)
    with pytest.raises(ValueError, match="same shape"):
        kernels.beta_sample(np.ones(2), np.ones(3), seed=0)


def test_resolve_backend_auto_picks_what_runs_and_explicit_choices_must_work():
    assert kernels.resolve_backend("auto") in kernels.available_backends()
    assert kernels.resolve_backend("numpy") == "numpy"
    with pytest.raises(BackendUnavailable, match="unknown backend"):
        kernels.resolve_backend("fortran")
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable, match="CUDA"):
            kernels.resolve_backend("triton")
