import importlib.util
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

import importlib

import kernels
from kernels import BackendUnavailable

BACKENDS = kernels.available_backends()
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
# float32 kernels against the float64 reference; the GPU kernels multiply in float32 throughout.
TOLERANCE = {"numpy": 2e-6, "triton": 1e-5, "cupy": 1e-5}
# The Triton interpreter runs the kernels in NumPy, one block at a time: fewer samples there.
SAMPLES = {"numpy": 20_000, "triton": 2_000 if INTERPRETED else 20_000, "cupy": 20_000}
ROOT = Path(__file__).resolve().parents[2]


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
    np.testing.assert_allclose(got[rows], want, atol=TOLERANCE[backend], rtol=1e-5)
    reference = kernels.sequence_scores_numpy(*case, half_life_s=1800.0)
    np.testing.assert_allclose(got, reference, atol=TOLERANCE[backend])


@pytest.mark.parametrize("backend", BACKENDS)
def test_sequence_scores_many_is_each_pair_alone(backend):
    actions, ages, lengths, theta, lift = _random_case(np.random.default_rng(12), 300, 32, 9)
    other_theta = np.random.default_rng(13).beta(2.0, 5.0, theta.shape).astype(np.float32)
    pairs = [(theta, lift), (other_theta, np.ones_like(lift)), (theta, lift.T.copy())]
    got = kernels.sequence_scores_many(actions, ages, lengths, pairs, half_life_s=900.0, backend=backend)
    assert len(got) == 3
    for (t, l), scores in zip(pairs, got):
        np.testing.assert_allclose(scores, kernels.sequence_scores_numpy(actions, ages, lengths, t, l, half_life_s=900.0),
                                   atol=TOLERANCE[backend])
        np.testing.assert_allclose(scores, _direct_scores(actions, ages, lengths, t, l, 900.0), atol=TOLERANCE[backend])
    with pytest.raises(ValueError, match="lift"):
        kernels.sequence_scores_many(actions, ages, lengths, [(theta, lift), (theta, lift[:3])], half_life_s=1.0,
                                     backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sequence_scores_empty_row_scores_zero_and_first_event_has_no_lift(backend):
    actions = np.array([[2, 0], [2, 1]], np.int32)
    ages = np.zeros((2, 2), np.float32)
    lengths = np.array([0, 1], np.int32)
    theta = np.full((2, 3), 0.3, np.float32)
    lift = np.full((3, 3), 4.0, np.float32)
    got = kernels.sequence_scores(actions, ages, lengths, theta, lift, half_life_s=60.0, backend=backend)
    np.testing.assert_allclose(got, [0.0, 0.3], rtol=1e-6)


def test_sequence_scores_decay_halves_contribution_per_half_life():
    theta = np.full((1, 1), 0.4, np.float32)
    one = np.ones((1, 1), np.float32)
    fresh = kernels.sequence_scores(np.zeros((1, 1), np.int32), np.zeros((1, 1), np.float32), np.ones(1, np.int32), theta, one, half_life_s=100.0)
    old = kernels.sequence_scores(np.zeros((1, 1), np.int32), np.full((1, 1), 100.0, np.float32), np.ones(1, np.int32), theta, one, half_life_s=100.0)
    assert fresh[0] == pytest.approx(0.4) and old[0] == pytest.approx(0.2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sequence_scores_rejects_bad_shapes_codes_and_lengths(backend):
    case = _random_case(np.random.default_rng(0), 4, 3, 5)
    with pytest.raises(ValueError, match="lift"):
        kernels.sequence_scores(*case[:4], np.ones((4, 4), np.float32), half_life_s=1.0, backend=backend)
    bad = case[0].copy()
    bad[2, 1] = 7
    lengths = np.full(4, 3, np.int32)
    with pytest.raises(ValueError, match="action codes"):
        kernels.sequence_scores(bad, case[1], lengths, case[3], case[4], half_life_s=1.0, backend=backend)
    bad[2, 1] = -1
    with pytest.raises(ValueError, match="action codes"):
        kernels.sequence_scores(bad, case[1], lengths, case[3], case[4], half_life_s=1.0, backend=backend)
    # A bad code past a row's length is never read, so it is no error.
    lengths[2] = 1
    kernels.sequence_scores(bad, case[1], lengths, case[3], case[4], half_life_s=1.0, backend=backend)
    for length in (4, -1):
        lengths[2] = length
        with pytest.raises(ValueError, match="lengths"):
            kernels.sequence_scores(case[0], case[1], lengths, case[3], case[4], half_life_s=1.0, backend=backend)
    with pytest.raises(ValueError, match="half_life_s"):
        kernels.sequence_scores(*case, half_life_s=0.0, backend=backend)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "numpy"])
def test_unchecked_device_kernels_never_read_out_of_bounds(backend):
    """The engine calls without checks (no device sync): bad rows must not touch memory or other rows."""
    actions, ages, lengths, theta, lift = _random_case(np.random.default_rng(5), 64, 6, 5)
    want = kernels.sequence_scores_numpy(actions, ages, lengths, theta, lift, half_life_s=600.0)
    actions[3, :] = 10**9
    actions[4, :] = -(10**9)
    lengths[5], lengths[6] = 10**6, -(10**6)
    got = kernels.sequence_scores(actions, ages, lengths, theta, lift, half_life_s=600.0, backend=backend,
                                  check=False)
    fine = np.setdiff1d(np.arange(64), [3, 4, 5, 6])
    np.testing.assert_allclose(got[fine], want[fine], atol=TOLERANCE[backend])
    clamped = lengths.copy()
    clamped[5], clamped[6] = 6, 0
    actions[3:5] = 0
    np.testing.assert_allclose(got[[5, 6]], kernels.sequence_scores_numpy(actions, ages, clamped, theta, lift,
                                                                           half_life_s=600.0)[[5, 6]], atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kernels_return_the_callers_array_kind(backend):
    case = _random_case(np.random.default_rng(1), 5, 4, 6)
    got = kernels.sequence_scores(*(torch.from_numpy(c) for c in case), half_life_s=300.0, backend=backend)
    assert isinstance(got, torch.Tensor) and got.device.type == "cpu"
    np.testing.assert_allclose(got.numpy(), kernels.sequence_scores_numpy(*case, half_life_s=300.0), atol=TOLERANCE[backend])
    draws = kernels.beta_sample(torch.full((3, 4), 2.0), torch.full((3, 4), 2.0), seed=1, backend=backend)
    assert isinstance(draws, torch.Tensor) and draws.shape == (3, 4) and draws.dtype == torch.float32


GRID = [0.1, 0.5, 1.0, 2.0, 5.0, 50.0, 1e4]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("a", GRID)
@pytest.mark.parametrize("b", [0.1, 1.0, 5.0, 1e4])
def test_beta_sample_matches_the_beta_distribution(backend, a, b):
    n = SAMPLES[backend]
    x = kernels.beta_sample(np.full(n, a), np.full(n, b), seed=7, offset=int(a * 10 + b), backend=backend)
    assert x.dtype == np.float32 and x.shape == (n,)
    mean, var, _, excess_kurtosis = (float(m) for m in stats.beta.stats(a, b, moments="mvsk"))
    assert abs(x.mean() - mean) < 5 * math.sqrt(var / n) + 1e-6
    # The sample variance's standard error is var * sqrt((kurtosis - 1) / n): wide for skewed shapes.
    assert abs(x.astype(np.float64).var() - var) < 5 * var * math.sqrt((excess_kurtosis + 2) / n) + 1e-7
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


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("a", [0.001, 0.01, 0.05])
def test_beta_sample_tiny_parameters_stay_in_range(backend, a):
    n = 2 * SAMPLES[backend]
    x = kernels.beta_sample(np.full(n, a), np.full(n, a), seed=3, backend=backend)
    assert not np.isnan(x).any() and x.min() >= 0.0 and x.max() <= 1.0
    # Beta(a, a) for tiny a puts half its mass near 0 and half near 1.
    assert abs((x > 0.5).mean() - 0.5) < 4 * math.sqrt(0.25 / n)
    lopsided = kernels.beta_sample(np.full(n, a), np.full(n, 1e4), seed=4, backend=backend)
    assert not np.isnan(lopsided).any() and lopsided.min() >= 0.0 and lopsided.max() <= 1.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_beta_sample_is_deterministic_per_seed_and_offset(backend):
    a, b = np.full((3, 50), 2.0), np.full((3, 50), 3.0)
    first = kernels.beta_sample(a, b, seed=11, offset=4, backend=backend)
    np.testing.assert_array_equal(first, kernels.beta_sample(a, b, seed=11, offset=4, backend=backend))
    other_offset = kernels.beta_sample(a, b, seed=11, offset=5, backend=backend)
    other_seed = kernels.beta_sample(a, b, seed=12, offset=4, backend=backend)
    assert first.shape == (3, 50)
    for other in (other_offset, other_seed):
        assert not np.array_equal(first, other)
        assert abs(np.corrcoef(first.ravel(), other.ravel())[0, 1]) < 0.3


@pytest.mark.parametrize("backend", BACKENDS)
def test_beta_sample_independent_across_offsets_in_bulk(backend):
    n = SAMPLES[backend]
    a, b = np.full(n, 1.0), np.full(n, 1.0)
    x = kernels.beta_sample(a, b, seed=1, offset=0, backend=backend)
    y = kernels.beta_sample(a, b, seed=1, offset=1, backend=backend)
    assert abs(np.corrcoef(x, y)[0, 1]) < 4 / math.sqrt(n)


@pytest.mark.parametrize("backend", BACKENDS)
def test_beta_sample_unchecked_draws_are_the_checked_ones(backend):
    rng = np.random.default_rng(8)
    a, b = rng.uniform(0.05, 20, 3000), rng.uniform(0.05, 20, 3000)
    checked = kernels.beta_sample(a, b, seed=5, offset=2, backend=backend)
    np.testing.assert_array_equal(checked, kernels.beta_sample(a, b, seed=5, offset=2, backend=backend, check=False))


@pytest.mark.parametrize("backend", BACKENDS)
def test_beta_sample_rejects_non_positive_parameters(backend):
    with pytest.raises(ValueError, match="> 0"):
        kernels.beta_sample(np.array([1.0, 0.0]), np.array([1.0, 1.0]), seed=0, backend=backend)
    with pytest.raises(ValueError, match="> 0"):
        kernels.beta_sample(np.array([1.0, np.nan]), np.array([1.0, 1.0]), seed=0, backend=backend)
    # One bad parameter in the last of many blocks is found too.
    b = np.ones(5000)
    b[-1] = -2.0
    with pytest.raises(ValueError, match="> 0"):
        kernels.beta_sample(np.ones(5000), b, seed=0, backend=backend)
    with pytest.raises(ValueError, match="same shape"):
        kernels.beta_sample(np.ones(2), np.ones(3), seed=0, backend=backend)


def test_resolve_backend_auto_picks_what_runs_and_explicit_choices_must_work():
    assert kernels.resolve_backend("auto") in kernels.available_backends()
    assert kernels.resolve_backend("numpy") == "numpy"
    with pytest.raises(BackendUnavailable, match="unknown backend"):
        kernels.resolve_backend("fortran")
    if not torch.cuda.is_available():
        # Automatic choice never runs the interpreter; the GPU backends need a device.
        assert kernels.resolve_backend("auto") == "numpy"
        code = "import kernels; kernels.resolve_backend('triton')"
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
        assert out.returncode != 0 and "needs a CUDA device" in out.stderr
        with pytest.raises(BackendUnavailable, match="cupy"):
            kernels.resolve_backend("cupy")


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_every_triton_kernel_compiles_for_hopper_without_a_gpu():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-m", "kernels.compile_check", "--arch", "90"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(": ", 1) for line in out.stdout.strip().splitlines())
    assert set(lines) == {"beta_sample", "sequence_scores"} and all("cubin" in v for v in lines.values())


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
@pytest.mark.parametrize("module", ["beta_cupy", "sequence_cupy"])
def test_cupy_kernel_sources_compile_with_nvcc(module, tmp_path):
    source = importlib.import_module(f"kernels.{module}").SOURCE
    path = tmp_path / f"{module}.cu"
    path.write_text(source)
    out = subprocess.run(["nvcc", "--ptx", "-arch=sm_90", "-o", str(tmp_path / "k.ptx"), str(path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr


@pytest.mark.gpu
def test_cupy_backend_runs_on_the_device():
    cupy = pytest.importorskip("cupy")
    case = _random_case(np.random.default_rng(9), 513, 32, 9)
    got = kernels.sequence_scores(*(cupy.asarray(c) for c in case), half_life_s=900.0, backend="cupy")
    assert isinstance(got, cupy.ndarray)
    np.testing.assert_allclose(cupy.asnumpy(got), kernels.sequence_scores_numpy(*case, half_life_s=900.0), atol=1e-5)
    draws = kernels.beta_sample(cupy.full(20_000, 2.0), cupy.full(20_000, 5.0), seed=2, backend="cupy")
    assert abs(float(draws.mean()) - 2 / 7) < 0.005


@pytest.mark.gpu
def test_after_warm_up_no_call_compiles_a_kernel():
    """Batch sizes and Philox keys change with every request: none of them may make Triton compile again."""
    from kernels.beta_triton import _beta_sample_kernel
    from kernels.sequence_triton import _sequence_scores_kernel

    if not hasattr(_beta_sample_kernel, "device_caches"):
        pytest.skip("this Triton keeps its compiled kernels elsewhere")

    def compiled():
        return sum(len(cache[0]) for fn in (_beta_sample_kernel, _sequence_scores_kernel)
                   for cache in fn.device_caches.values())

    kernels.warm_up("triton", 32, 9)
    before = compiled()
    for n in (1, 7, 16, 300, 4096):
        for offset in range(20):
            kernels.beta_sample(torch.ones(n, 9, device="cuda"), torch.ones(n, 9, device="cuda"), seed=3,
                                offset=offset, backend="triton", check=False)
        case = _random_case(np.random.default_rng(n), n, 32, 9)
        kernels.sequence_scores(*case, half_life_s=60.0, backend="triton", check=False)
    assert compiled() == before

