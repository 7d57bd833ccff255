import numpy as np
import pytest
import torch

from model import Engine, EventBatch, TenantConfig
from model.engine import TICK_S
from model.predictor import ModelMismatch, TransformerPredictor, read_checkpoint
from model.training import TrainSettings, features, load_model, predict, train
from model.transformer import TransformerConfig

CFG = TenantConfig(allow_backfill=True, allowed_lateness_s=0.0, session_gap_s=600.0)
A = {name: i for i, name in enumerate(CFG.actions)}
T0 = 1_700_000_000.0
SMALL = TransformerConfig(n_actions=9, window=8, d_model=32, layers=1, heads=2, dropout=0.0)


def mixed_stream(n_users=40, seed=1, span_s=3000.0):
    """Users with devices, time zones and categories, all inside one attribution horizon."""
    rng = np.random.default_rng(seed)
    n = n_users * 6
    ts = np.sort(T0 + rng.uniform(0, span_s, n)).round()
    return EventBatch.build(
        user_ids=[f"u{i}" for i in rng.integers(0, n_users, n)],
        actions=rng.choice([A["view"], A["search"], A["add_to_cart"], A["purchase"]], n, p=[0.6, 0.2, 0.15, 0.05]),
        ts=ts,
        device=rng.integers(0, 4, n),
        tz_offset_min=rng.choice([-300, 0, 120, 540], n),
        categories=[f"c{c}" if c < 5 else None for c in rng.integers(0, 6, n)],
    )


def trained(batch, config=CFG):
    settings = TrainSettings(epochs=2, patience=2, batch_size=8, seed=0)
    return train(batch, config, settings, SMALL, log=lambda line: None, show_progress=False)


def _last_tick_users(batch, seq):
    """Users whose last event is in the final tick: for them the engine's tables now are those the training
    features of that event were made with, so serving must reproduce them exactly."""
    last_tick = np.floor(batch.ts.max() / TICK_S) * TICK_S
    ordered = np.asarray(batch.user_ids[seq.order])
    out = []
    for uid in sorted(set(batch.user_ids)):
        rows = np.flatnonzero(ordered == uid)
        if seq.ts[rows[-1]] >= last_tick:
            out.append((uid, rows))
    assert len(out) >= 3
    return out


def test_window_features_and_state_match_the_training_features():
    batch = mixed_stream()
    seq = features(batch, CFG)
    engine = Engine(CFG)
    engine.apply(batch)
    names = sorted(set(batch.user_ids))
    tokens, lengths = engine.window_features(engine.windows.lookup(names, create=False))
    for i, uid in enumerate(names):
        rows = np.flatnonzero(np.asarray(batch.user_ids[seq.order]) == uid)
        k = len(rows)
        assert lengths[i] == min(k, CFG.window_size)
        for name in ("action", "gap", "device", "daypart", "category"):
            np.testing.assert_array_equal(tokens[name][i, :k], getattr(seq, name)[rows], err_msg=name)
    for uid, rows in _last_tick_users(batch, seq):
        users = engine.windows.lookup([uid], create=False)
        state = engine.current_features(users, float(seq.ts[rows[-1]]))
        np.testing.assert_allclose(state[0], seq.state[rows[-1]], atol=1e-5, err_msg=uid)


def test_predictor_serves_what_offline_prediction_computes():
    batch = mixed_stream()
    checkpoint = trained(batch)
    seq = features(batch, CFG)
    offline_next, offline_conv = predict(load_model(checkpoint), seq)
    engine = Engine(CFG)
    engine.apply(batch)
    predictor = TransformerPredictor(checkpoint, CFG)
    for uid, rows in _last_tick_users(batch, seq):
        if len(rows) > SMALL.window:
            continue  # offline cuts users into fixed pieces; serving slides the window
        users = engine.windows.lookup([uid], create=False)
        tokens, lengths = engine.window_features(users)
        state = engine.current_features(users, float(seq.ts[rows[-1]]))
        next_probs, conv = predictor.predict(tokens, lengths, state)
        np.testing.assert_allclose(next_probs[0], offline_next[rows[-1]], atol=1e-5)
        np.testing.assert_allclose(conv[0], offline_conv[:, rows[-1]], atol=1e-5)
        assert np.isclose(next_probs.sum(), 1.0, atol=1e-5)


@pytest.mark.gpu
def test_the_transformer_on_the_gpu_predicts_what_it_predicts_on_the_cpu():
    batch = mixed_stream()
    checkpoint = trained(batch)
    engine = Engine(CFG, backend="numpy")
    engine.apply(batch)
    names = sorted(set(batch.user_ids))
    users = engine.windows.lookup(names, create=False)
    tokens, lengths = engine.window_features(users)
    state = engine.current_features(users, float(batch.ts.max()))
    on_cpu = TransformerPredictor(checkpoint, CFG, "cpu").predict(tokens, lengths, state)
    on_gpu = TransformerPredictor(checkpoint, CFG, "cuda", precision="float32").predict(tokens, lengths, state)
    for cpu, gpu in zip(on_cpu, on_gpu):
        np.testing.assert_allclose(gpu, cpu, atol=1e-4)
    # Served in bf16 by default on a GPU: close to fp32, and the same most likely next action.
    bf16 = TransformerPredictor(checkpoint, CFG, "cuda").predict(tokens, lengths, state)
    assert TransformerPredictor(checkpoint, CFG, "cuda").precision == "bfloat16"
    for cpu, gpu in zip(on_cpu, bf16):
        np.testing.assert_allclose(gpu, cpu, atol=2e-2)
    assert (bf16[0].argmax(axis=1) == on_cpu[0].argmax(axis=1)).mean() >= 0.95


def test_bf16_predictions_agree_with_fp32():
    """The precision a GPU serves in by default, checked on the CPU: every probability within 0.02 of fp32's."""
    batch = mixed_stream(n_users=60)
    checkpoint = trained(batch)
    engine = Engine(CFG, backend="numpy")
    engine.apply(batch)
    users = engine.windows.lookup(sorted(set(batch.user_ids)), create=False)
    tokens, lengths = engine.window_features(users)
    state = engine.current_features(users, float(batch.ts.max()))
    exact = TransformerPredictor(checkpoint, CFG, "cpu").predict(tokens, lengths, state)
    assert TransformerPredictor(checkpoint, CFG, "cpu").precision == "float32"
    bf16 = TransformerPredictor(checkpoint, CFG, "cpu", precision="bfloat16").predict(tokens, lengths, state)
    for ours, theirs in zip(bf16, exact):
        assert np.abs(ours - theirs).max() < 2e-2
        assert not np.array_equal(ours, theirs)  # it did run in bf16
    assert (bf16[0].argmax(axis=1) == exact[0].argmax(axis=1)).mean() >= 0.95
    with pytest.raises(ValueError, match="precision"):
        TransformerPredictor(checkpoint, CFG, "cpu", precision="float16")


def test_predicting_on_the_device_answers_what_predicting_from_host_arrays_does():
    """predict_on_device keeps every row's last min(K, window) positions (a fixed shape) where predict trims the
    batch to its longest row: the answers agree, for windows longer and shorter than the model's."""
    checkpoint = trained(mixed_stream())
    predictor = TransformerPredictor(checkpoint, CFG)
    rng = np.random.default_rng(5)
    n, k = 7, 12
    tokens = {
        "action": rng.integers(0, 9, (n, k)), "gap": rng.integers(0, 18, (n, k)),
        "device": rng.integers(0, 4, (n, k)), "daypart": rng.integers(0, 4, (n, k)),
        "category": rng.integers(0, 1024, (n, k)),
    }
    lengths = np.array([12, 5, 1, 9, 8, 3, 0])
    state = rng.random((n, checkpoint["model_config"]["state_dim"])).astype(np.float32)
    has = lengths > 0
    next_probs, conv = predictor.predict({key: v[has] for key, v in tokens.items()}, lengths[has], state[has])
    on_device = predictor.predict_on_device({key: torch.from_numpy(v).int() for key, v in tokens.items()},
                                            torch.from_numpy(lengths).int(), torch.from_numpy(state)).numpy()
    assert on_device.shape == (n, 9 + 1 + 2)
    np.testing.assert_allclose(on_device[has, :-2], next_probs, atol=1e-5)
    np.testing.assert_allclose(on_device[has, -2:], conv, atol=1e-5)
    # A tenant's window shorter than the model's: every position it keeps is served.
    short = {key: v[:, :5] for key, v in tokens.items()}
    lengths = np.minimum(lengths, 5)
    has = lengths > 0
    next_probs, conv = predictor.predict({key: v[has] for key, v in short.items()}, lengths[has], state[has])
    on_device = predictor.predict_on_device({key: torch.from_numpy(v).int() for key, v in short.items()},
                                            torch.from_numpy(lengths).int(), torch.from_numpy(state)).numpy()
    np.testing.assert_allclose(on_device[has, :-2], next_probs, atol=1e-5)
    np.testing.assert_allclose(on_device[has, -2:], conv, atol=1e-5)


def test_predictor_keeps_the_last_events_of_a_long_window():
    checkpoint = trained(mixed_stream())
    predictor = TransformerPredictor(checkpoint, CFG)
    rng = np.random.default_rng(0)
    tokens = {
        "action": rng.integers(0, 9, (2, 12)), "gap": rng.integers(0, 18, (2, 12)),
        "device": rng.integers(0, 4, (2, 12)), "daypart": rng.integers(0, 4, (2, 12)),
        "category": rng.integers(0, 1024, (2, 12)),
    }
    state = rng.random((2, checkpoint["model_config"]["state_dim"])).astype(np.float32)
    full, _ = predictor.predict(tokens, np.array([12, 5]), state)
    tail = {k: np.concatenate([v[:1, 4:12], v[1:, :8]]) for k, v in tokens.items()}
    cut, _ = predictor.predict(tail, np.array([8, 5]), state)
    np.testing.assert_allclose(full, cut, atol=1e-6)


def test_a_row_predicts_the_same_alone_and_beside_longer_rows():
    """Serving leaves out the padding mask (the causal mask keeps real events from pads): a short row padded in
    a batch must predict what it predicts alone."""
    checkpoint = trained(mixed_stream())
    predictor = TransformerPredictor(checkpoint, CFG)
    rng = np.random.default_rng(3)
    n = 6
    tokens = {
        "action": rng.integers(0, 9, (n, 8)), "gap": rng.integers(0, 18, (n, 8)),
        "device": rng.integers(0, 4, (n, 8)), "daypart": rng.integers(0, 4, (n, 8)),
        "category": rng.integers(0, 1024, (n, 8)),
    }
    lengths = np.array([1, 8, 3, 5, 2, 7])
    state = rng.random((n, checkpoint["model_config"]["state_dim"])).astype(np.float32)
    together_next, together_conv = predictor.predict(tokens, lengths, state)
    for i in range(n):
        alone_next, alone_conv = predictor.predict({k: v[i:i + 1, :lengths[i]] for k, v in tokens.items()},
                                                   lengths[i:i + 1], state[i:i + 1])
        np.testing.assert_allclose(together_next[i], alone_next[0], atol=1e-5)
        np.testing.assert_allclose(together_conv[i], alone_conv[0], atol=1e-5)


def test_predictor_calibrates_its_conversion_probabilities_to_the_tenant_online():
    checkpoint = trained(mixed_stream())
    predictor = TransformerPredictor(checkpoint, CFG)
    calibration = predictor.calibration
    raw = np.full((4000, 2), 0.02)  # the model says 2 %; on this tenant 20 % convert
    users = np.arange(4000)
    calibration.record(users, T0, raw)
    assert calibration.resolve(T0 + 100.0, lambda u, ts, h: u % 5 == 0) == 0  # no horizon has passed yet
    assert calibration.resolve(T0 + 4000.0, lambda u, ts, h: u % 5 == 0) == 8000
    np.testing.assert_allclose(calibration.apply(raw), 0.2, atol=0.01)
    assert calibration.describe()["purchase_5m"]["outcomes"] == 4000


def test_checkpoint_with_another_vocabulary_is_refused(tmp_path):
    checkpoint = trained(mixed_stream())
    path = tmp_path / "model.pt"
    torch.save(checkpoint, path)
    loaded = read_checkpoint(path)
    TransformerPredictor(loaded, CFG)
    other = TenantConfig(actions=("view", "search", "add_to_cart", "purchase"), prior_means={"view": 0.2})
    with pytest.raises(ModelMismatch, match="vocabulary"):
        TransformerPredictor(loaded, other)
    converted = TenantConfig(conversion_action="add_to_cart")
    with pytest.raises(ModelMismatch, match="conversions"):
        TransformerPredictor(loaded, converted)


def test_read_checkpoint_rejects_other_files(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable"):
        read_checkpoint(path)
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="no model_state"):
        read_checkpoint(path)
