"""The server on the Triton backend (interpreted without a GPU) agrees with the NumPy backend."""
import time

import numpy as np
import pytest
from scipy import stats

import kernels
from model import Engine, EventBatch, TenantConfig

GPU_BACKENDS = [b for b in kernels.available_backends() if b != "numpy"]
pytestmark = pytest.mark.skipif(not GPU_BACKENDS, reason="no Triton or CuPy backend can run here")


def _history(cfg, n_users=300, seed=0):
    rng = np.random.default_rng(seed)
    n = 4000
    ts = 1_700_000_000.0 + np.sort(rng.uniform(0, 30_000, n))
    names = rng.choice(["view", "view", "search", "add_to_cart", "favorite", "purchase"], n)
    return EventBatch.build([f"u{i}" for i in rng.integers(0, n_users, n)], [cfg.actions.index(x) for x in names], ts)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_engine_scores_match_numpy_exactly_without_draws_and_in_distribution_with_them(backend):
    cfg = TenantConfig(horizon_s=600.0, allowed_lateness_s=60.0)
    events = _history(cfg)
    reference, other = Engine(cfg, backend="numpy"), Engine(cfg, backend=backend)
    reference.apply(events)
    other.apply(events)
    users = [f"u{i}" for i in range(300)] + ["stranger"]  # enough to be scored on the device
    now = float(events.ts.max()) + 60
    np.testing.assert_allclose(
        other.sequence_score(users, now, mode="mean"), reference.sequence_score(users, now, mode="mean"), atol=1e-5
    )
    # Thompson draws differ per backend (each has its own generator), but not in distribution.
    draws = 12
    ours = np.stack([other.sequence_score(users, now) for _ in range(draws)])
    theirs = np.stack([reference.sequence_score(users, now) for _ in range(draws)])
    difference = ours.mean(axis=0) - theirs.mean(axis=0)
    standard_error = np.sqrt(((ours.var(axis=0, ddof=1) + theirs.var(axis=0, ddof=1)) / draws).sum()) / len(users)
    assert abs(difference.mean()) < 4 * standard_error + 1e-6
    assert stats.ks_2samp(ours.ravel(), theirs.ravel()).pvalue > 1e-3


@pytest.mark.parametrize("backend", [b for b in GPU_BACKENDS if b == "triton"])
def test_a_scoring_batch_is_one_device_pass(backend, monkeypatch):
    """The users' indexes go in once and the sequence scores of every mode come out once; no input check
    waits for the device. The scores are NumPy's."""
    import torch

    from model.device_state import DeviceState

    cfg = TenantConfig(horizon_s=600.0, allowed_lateness_s=60.0)
    events = _history(cfg)
    reference, engine = Engine(cfg, backend="numpy"), Engine(cfg, backend=backend)
    reference.apply(events)
    engine.apply(events)
    users = [f"u{i}" for i in range(300)] + ["stranger"]
    assert len(users) >= kernels.DEVICE_MIN_ROWS
    now = float(events.ts.max()) + 60
    engine.score(users, now)  # the posterior tables go to the device on the first score
    calls = {"in": 0, "out": 0, "item": 0}
    to_device, cpu, item = DeviceState._to_device, torch.Tensor.cpu, torch.Tensor.item

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(DeviceState, "_to_device", counted("in", to_device))
    monkeypatch.setattr(torch.Tensor, "cpu", counted("out", cpu))
    monkeypatch.setattr(torch.Tensor, "item", counted("item", item))
    scored = engine.score(users, now)
    assert calls == {"in": 1, "out": 1, "item": 0}
    np.testing.assert_allclose(scored.score, reference.score(users, now).score, atol=1e-5)
    # A small batch costs less on the host, where every window also is: the device is not touched.
    few = users[:kernels.DEVICE_MIN_ROWS - 1]
    scored = engine.score(few, now)
    assert calls == {"in": 1, "out": 1, "item": 0}
    np.testing.assert_allclose(scored.score, reference.score(few, now).score, atol=1e-6)


async def test_server_on_the_triton_backend_reports_it_and_scores_like_numpy(start, tmp_path):
    if "triton" not in GPU_BACKENDS:
        pytest.skip("triton is not available")
    events = [{"user_id": f"t{i % 7}", "action": ["view", "add_to_cart", "purchase"][i % 3], "ts": time.time() - 600 + i}
              for i in range(60)]
    views = {}
    for backend in ("triton", "numpy"):
        s = await start(tmp_path / backend, backend=backend)
        assert (await s.acme.call("GET", "/readyz")).body["backend"] == backend
        metrics = (await s.acme.call("GET", "/metrics")).body
        assert f'nudge_backend_info{{backend="{backend}"}} 1.0' in metrics
        assert (await s.acme.events(events)).status == 200
        scored = (await s.acme.score(*[f"t{i}" for i in range(7)])).body["results"]
        assert all(0.0 < r["score"] <= 1.0 for r in scored)
        views[backend] = [(await s.acme.call("GET", f"/v1/users/t{i}")).body["score"] for i in range(7)]
        await s.client.close()
    np.testing.assert_allclose(views["triton"], views["numpy"], atol=1e-5)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_device_state_mirrors_the_host_after_ingest_erase_and_restore(backend):
    cfg = TenantConfig(horizon_s=600.0, allowed_lateness_s=60.0)
    engine = Engine(cfg, backend=backend)
    events = _history(cfg, n_users=50)
    for start in range(0, len(events), 333):
        engine.apply(events.take(np.arange(start, min(start + 333, len(events)))))
    engine.erase_user("u3")

    def assert_mirrored(e):
        ds, w = e.device_state, e.windows
        n = len(w.ids)
        np.testing.assert_array_equal(ds.length[:n].cpu().numpy(), w.length[:n])
        np.testing.assert_array_equal(ds.head[:n].cpu().numpy(), w.head[:n])
        np.testing.assert_array_equal(ds.actions[:n].cpu().numpy(), w.actions[:n])
        np.testing.assert_array_equal(ds.ts[:n].cpu().numpy(), w.ts[:n])
        # The device holds the tables features read: those of the last tick.
        np.testing.assert_allclose(ds.alpha.cpu().numpy(), e.tables.alpha, rtol=1e-6)
        np.testing.assert_allclose(ds.lift.cpu().numpy(), e.tables.lift, rtol=1e-6)

    assert_mirrored(engine)
    assert int(engine.device_state.length[engine.windows.lookup(["u4"], create=False)[0]]) > 0
    restored = Engine(cfg, backend=backend)
    restored.load_state(engine.state_dict())
    assert_mirrored(restored)
