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


def _side_by_side(backend, cfg=None, events=None):
    """(config, events, a NumPy engine, an engine on ``backend``), both having applied the same history."""
    cfg = cfg or TenantConfig(horizon_s=600.0, allowed_lateness_s=60.0)
    events = _history(cfg) if events is None else events
    reference, engine = Engine(cfg, backend="numpy"), Engine(cfg, backend=backend)
    reference.apply(events)
    engine.apply(events)
    return cfg, events, reference, engine


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_engine_scores_match_numpy_exactly_without_draws_and_in_distribution_with_them(backend):
    _, events, reference, other = _side_by_side(backend)
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


def _count_copies(monkeypatch) -> dict[str, int]:
    """Counts of host-to-device copies, device-to-host copies and single values read back from here on."""
    import torch

    from model.device_state import DeviceState

    calls = {"in": 0, "out": 0, "item": 0}
    to_device, cpu, item = DeviceState.to_device, torch.Tensor.cpu, torch.Tensor.item

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(DeviceState, "to_device", counted("in", to_device))
    monkeypatch.setattr(torch.Tensor, "cpu", counted("out", cpu))
    monkeypatch.setattr(torch.Tensor, "item", counted("item", item))
    return calls


@pytest.mark.parametrize("backend", [b for b in GPU_BACKENDS if b == "triton"])
def test_a_scoring_batch_is_one_device_pass(backend, monkeypatch):
    """The users' indexes go in once and every result comes out once; nothing waits for the device. The
    scores, their features and the next-action probabilities are NumPy's."""
    cfg = TenantConfig(horizon_s=600.0, allowed_lateness_s=60.0)
    events = _history(cfg)
    reference, engine = Engine(cfg, backend="numpy"), Engine(cfg, backend=backend)
    for start in range(0, len(events), 700):
        reference.apply(events.take(np.arange(start, min(start + 700, len(events)))))
        engine.apply(events.take(np.arange(start, min(start + 700, len(events)))))
    reference.erase_user("u5")
    engine.erase_user("u5")
    users = [f"u{i}" for i in range(300)] + ["stranger"]
    assert len(users) >= kernels.DEVICE_MIN_ROWS
    now = float(events.ts.max()) + 60
    engine.score(users, now)  # the tables go to the device on the first score after a tick
    calls = _count_copies(monkeypatch)
    scored, expected = engine.score(users, now, draw=False), reference.score(users, now, draw=False)
    assert calls == {"in": 1, "out": 1, "item": 0}
    np.testing.assert_allclose(scored.features.cpu().numpy(), expected.features, rtol=1e-4, atol=1e-5)
    for name in ("score", "purchase_5m", "purchase_60m", "next_probs"):
        np.testing.assert_allclose(getattr(scored, name), getattr(expected, name), atol=1e-5)
    np.testing.assert_array_equal(scored.known, expected.known)
    # A small batch costs less on the host, where every window also is: the device is not touched.
    few = users[:kernels.DEVICE_MIN_ROWS - 1]
    before = dict(calls)
    scored = engine.score(few, now)
    assert calls == before
    np.testing.assert_allclose(scored.score, reference.score(few, now).score, atol=1e-6)


@pytest.mark.parametrize("backend", [b for b in GPU_BACKENDS if b == "triton"])
def test_the_score_draw_on_the_device_is_the_host_draw_in_distribution(backend):
    _, events, reference, engine = _side_by_side(backend)
    users = [f"u{i}" for i in range(300)]
    now = float(events.ts.max()) + 60
    ours = np.stack([engine.score(users, now).score_draw for _ in range(10)])
    theirs = np.stack([reference.score(users, now).score_draw for _ in range(10)])
    assert engine.draws == reference.draws == 10
    assert not np.allclose(ours[0], ours[1])  # a fresh draw per batch
    assert stats.ks_2samp(ours.ravel(), theirs.ravel()).pvalue > 1e-3
    np.testing.assert_allclose(ours.mean(axis=0).mean(), theirs.mean(axis=0).mean(), atol=0.01)


@pytest.mark.parametrize("backend", [b for b in GPU_BACKENDS if b == "triton"])
def test_the_transformer_on_the_device_answers_a_scoring_batch_in_the_same_pass(backend, monkeypatch):
    """decisions.predict with the Transformer on the engine's device: one copy in, one copy out, and the host
    path's answers."""
    from model.decisions import predict
    from model.predictor import TransformerPredictor
    from model.training import TrainSettings, train
    from model.transformer import TransformerConfig

    cfg = TenantConfig(horizon_s=600.0, allowed_lateness_s=60.0, window_size=12)
    events = _history(cfg)
    small = TransformerConfig(n_actions=len(cfg.actions), window=8, d_model=16, layers=1, heads=2, dropout=0.0)
    checkpoint = train(events.take(np.arange(1500)), cfg, TrainSettings(epochs=1, patience=1, batch_size=64, seed=0),
                       small, log=lambda line: None, show_progress=False)
    _, _, reference, engine = _side_by_side(backend, cfg, events)
    on_host = TransformerPredictor(checkpoint, cfg, "cpu")
    on_device = TransformerPredictor(checkpoint, cfg, kernels.compute_device(), precision="float32")
    users = [f"u{i}" for i in range(300)] + ["stranger"]
    now = float(events.ts.max()) + 60
    predict(engine, on_device, users, now)  # the tables go to the device on the first score after a tick
    calls = _count_copies(monkeypatch)
    ours = predict(engine, on_device, users, now)
    assert calls == {"in": 1, "out": 1, "item": 0}
    theirs = predict(reference, on_host, users, now)
    np.testing.assert_array_equal(ours.by_model, theirs.by_model)
    assert ours.by_model.sum() > 250 and not ours.by_model[-1]
    for name in ("score", "next_probs", "purchase_5m", "purchase_60m"):
        np.testing.assert_allclose(getattr(ours, name), getattr(theirs, name), atol=1e-5)


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
    import torch

    cfg = TenantConfig(horizon_s=600.0, allowed_lateness_s=60.0)
    engine = Engine(cfg, backend=backend)
    events = _history(cfg, n_users=50)
    for start in range(0, len(events), 333):
        engine.apply(events.take(np.arange(start, min(start + 333, len(events)))))
    engine.erase_user("u3")

    def assert_mirrored(e):
        users = np.arange(len(e.windows.ids))
        rows = e.device_state.gather(torch.from_numpy(users).to(e.device_state.device))
        actions, ts, lengths = e.windows.gather(users)
        np.testing.assert_array_equal(rows.length.cpu().numpy(), lengths)
        valid = np.arange(cfg.window_size)[None, :] < lengths[:, None]
        np.testing.assert_array_equal(np.where(valid, rows.action.cpu().numpy(), 0), np.where(valid, actions, 0))
        np.testing.assert_array_equal(np.where(valid, rows.ts.cpu().numpy(), 0), np.where(valid, ts, 0))
        np.testing.assert_array_equal(rows.counts.cpu().numpy(), e.user_state.counts[users].reshape(len(users), -1))
        np.testing.assert_array_equal(rows.last_item.cpu().numpy(), e.user_state.last_item[users])
        # The device holds the tables features read: those of the last tick.
        t = e._device_tables()
        np.testing.assert_allclose(t.alpha.cpu().numpy(), e.tables.alpha, rtol=1e-6)
        np.testing.assert_allclose(t.lift.cpu().numpy(), e.tables.lift, rtol=1e-6)
        np.testing.assert_allclose(t.weights[0].cpu().numpy(), e.combiners["score"].mean)

    assert_mirrored(engine)
    u4 = engine.windows.lookup(["u4"], create=False)
    assert int(engine.device_state.gather(torch.from_numpy(u4)).length[0]) > 0
    u3 = int(engine.windows.users.names.index(None))
    assert int(engine.device_state.gather(torch.tensor([u3])).length[0]) == 0
    restored = Engine(cfg, backend=backend)
    restored.load_state(engine.state_dict())
    assert_mirrored(restored)


@pytest.mark.parametrize("backend", [b for b in GPU_BACKENDS if b == "triton"])
def test_a_pass_reads_the_time_and_default_context_from_the_device_as_a_captured_graph_does(backend):
    """A captured pass gets the batch's time and default context as 0-d tensors on the device: the same answers."""
    import torch

    from model.contexts import OTHER_DEVICE, context_codes
    from model.device_scoring import device_pass

    cfg = TenantConfig(horizon_s=600.0, allowed_lateness_s=60.0)
    events = _history(cfg)
    engine = Engine(cfg, backend=backend)
    engine.apply(events)
    engine._device_tables()
    users = engine.windows.lookup([f"u{i}" for i in range(300)] + ["stranger"], create=False)
    now = float(events.ts.max()) + 60
    default_ctx = int(context_codes(OTHER_DEVICE, np.float64(now), 0, 0))
    u = torch.from_numpy(users).to(engine.device_state.device)
    plain, x = device_pass(engine, None, u, now, default_ctx, draw=False)
    as_tensors, y = device_pass(engine, None, u, torch.tensor(now, dtype=torch.float64, device=u.device),
                                torch.tensor(default_ctx, device=u.device), draw=False)
    np.testing.assert_array_equal(as_tensors.cpu().numpy(), plain.cpu().numpy())
    np.testing.assert_array_equal(y.cpu().numpy(), x.cpu().numpy())


@pytest.mark.gpu
def test_a_captured_pass_answers_what_the_eager_pass_does_as_the_state_changes(monkeypatch):
    """A scoring pass replayed as a CUDA graph reads the rows and tables as they are at each replay: after new
    events, new users (the rows grow) and a new tick, it still answers what the eager pass does."""
    from model import device_graphs
    from model.decisions import predict
    from model.predictor import TransformerPredictor
    from model.training import TrainSettings, train
    from model.transformer import TransformerConfig

    cfg = TenantConfig(horizon_s=600.0, allowed_lateness_s=60.0)
    events = _history(cfg, n_users=1500)
    small = TransformerConfig(n_actions=len(cfg.actions), window=16, d_model=32, layers=2, heads=2, dropout=0.0)
    checkpoint = train(events.take(np.arange(1500)), cfg, TrainSettings(epochs=1, patience=1, batch_size=64, seed=0),
                       small, log=lambda line: None, show_progress=False)
    engine = Engine(cfg, backend="triton")
    predictor = TransformerPredictor(checkpoint, cfg, "cuda")

    def both(users, now, model):
        monkeypatch.setattr(device_graphs, "ENABLED", False)
        eager = predict(engine, model, users, now)
        monkeypatch.setattr(device_graphs, "ENABLED", True)
        return eager, predict(engine, model, users, now)

    for part in (slice(0, 1000), slice(1000, 2500), slice(2500, 4000)):
        engine.apply(events.take(np.arange(len(events))[part]))
        now = float(events.ts[part].max()) + 60
        for n in (100, 300, 700):  # 100: under DEVICE_MIN_ROWS, on the device only because it replays
            users = [f"u{i}" for i in range(n)] + ["stranger"]
            for model in (None, predictor):
                eager, graphed = both(users, now, model)
                np.testing.assert_array_equal(graphed.by_model, eager.by_model)
                for name in ("score", "next_probs", "purchase_5m", "purchase_60m"):
                    np.testing.assert_allclose(getattr(graphed, name), getattr(eager, name), atol=1e-5)
    assert not engine.device_state.graphs_failed
    assert {size for size, _ in engine.device_state.graphs} == {256, 512, 1024}
    assert engine.scores_on_device(100, draw=False) and not engine.scores_on_device(100, draw=True)
    assert not engine.scores_on_device(device_graphs.GRAPH_MIN_USERS - 1, draw=False)
