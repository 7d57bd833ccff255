import numpy as np
import pytest
import torch

from model import EventBatch, TenantConfig
from model.metrics import prediction_metrics
from model.sequences import build_sequences
from model.training import TrainSettings, features, load_model, predict, train
from model.transformer import NextActionTransformer, TransformerConfig, batch_tokens, chunks

CFG = TenantConfig(allow_backfill=True, allowed_lateness_s=0.0, session_gap_s=600.0)
A = {name: i for i, name in enumerate(CFG.actions)}
T0 = 1_700_000_000.0


def events(rows):
    users, names, ts = zip(*rows)
    return EventBatch.build(list(users), [A[n] for n in names], list(ts))


def tokens(batch_size=3, length=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda high: torch.randint(0, high, (batch_size, length), generator=g)  # noqa: E731
    return {"action": r(9), "gap": r(18), "device": r(4), "daypart": r(4), "category": r(1024)}


def model():
    torch.manual_seed(0)
    return NextActionTransformer(TransformerConfig(n_actions=9, window=8, dropout=0.0)).eval()


def test_transformer_outputs_do_not_depend_on_later_events():
    m, tok = model(), tokens()
    padding = torch.zeros(3, 6, dtype=torch.bool)
    before, _ = m(tok, padding)
    changed = {k: v.clone() for k, v in tok.items()}
    changed["action"][:, 4:] = (changed["action"][:, 4:] + 1) % 9
    after, _ = m(changed, padding)
    torch.testing.assert_close(after[:, :4], before[:, :4])
    assert not torch.allclose(after[:, 4:], before[:, 4:])


def test_transformer_outputs_do_not_depend_on_padding():
    m, tok = model(), tokens(batch_size=1, length=3)
    short, _ = m(tok, torch.zeros(1, 3, dtype=torch.bool))
    padded = {k: torch.cat([v, v[:, :2] * 0 + 1], dim=1) for k, v in tok.items()}
    padding = torch.tensor([[False, False, False, True, True]])
    long, _ = m(padded, padding)
    torch.testing.assert_close(long[:, :3], short, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_serving_reads_at_the_last_position_what_the_full_encoder_gives_there(layers):
    """encode_last runs the top layer at each row's last position only: the same hidden state as encode there."""
    torch.manual_seed(layers)
    model = NextActionTransformer(TransformerConfig(n_actions=9, window=12, d_model=32, layers=layers, heads=4,
                                                    state_dim=5)).eval()
    g = torch.Generator().manual_seed(0)
    b, k = 50, 12
    tokens = {"action": torch.randint(0, 10, (b, k), generator=g), "gap": torch.randint(0, 18, (b, k), generator=g),
              "device": torch.randint(0, 4, (b, k), generator=g), "daypart": torch.randint(0, 4, (b, k), generator=g),
              "category": torch.randint(0, 1024, (b, k), generator=g)}
    last = torch.randint(0, k, (b,), generator=g)
    with torch.no_grad():
        full = model.encode(tokens, None)[torch.arange(b), last]
        served = model.encode_last(tokens, last)
    torch.testing.assert_close(served, full, atol=1e-5, rtol=1e-5)


def test_sequences_targets_and_censoring_by_hand():
    b = events([
        ("a", "view", T0), ("a", "add_to_cart", T0 + 60), ("a", "purchase", T0 + 120),
        ("b", "view", T0 + 30), ("b", "view", T0 + 5000),
        ("c", "view", T0 + 9000), ("z", "view", T0 + 9400),
    ])
    s = build_sequences(b, 9, A["purchase"], CFG.session_gap_s)
    by_event = {(u, int(t)): i for i, (u, t) in enumerate(zip(b.user_ids[s.order], s.ts - T0))}
    row = lambda u, t: by_event[(u, t)]  # noqa: E731
    end = 9
    assert s.next_action[row("a", 0)] == A["add_to_cart"] and s.next_action[row("a", 120)] == end
    assert s.next_action[row("b", 30)] == end  # the next view comes 83 minutes later
    assert s.next_action[row("c", 9000)] == -1  # the data ends 400 s later: cannot know
    assert s.conv[0][row("a", 0)] == 1 and s.conv[0][row("a", 120)] == 0 and s.conv[0][row("b", 30)] == 0
    # The data ends at 9400: c's 5-minute horizon fits, its 60-minute one does not.
    assert s.conv[0][row("c", 9000)] == 0 and s.conv[1][row("c", 9000)] == -1 and s.conv[1][row("b", 5000)] == 0
    assert s.gap[row("a", 0)] == 0 and s.gap[row("a", 60)] == 1 + int(np.log2(61))


def test_prediction_metrics_by_hand():
    b = events([("a", "view", T0), ("a", "view", T0 + 10), ("b", "view", T0 + 20), ("b", "purchase", T0 + 30),
                ("zz", "view", T0 + 5000)])
    s = build_sequences(b, 9, A["purchase"], CFG.session_gap_s)
    probs = np.full((len(s), 10), 0.05)
    probs[:, A["view"]] = 0.55
    conv = np.tile(np.linspace(0.1, 0.5, len(s)), (2, 1))
    m = prediction_metrics(s, np.ones(len(s), bool), probs, conv, 9)
    known = s.next_action >= 0
    expected = -np.mean(np.log(probs[known, s.next_action[known]]))
    assert m["next_action_logloss"] == pytest.approx(expected)
    assert m["next_action_top1"] == pytest.approx(np.mean(s.next_action[known] == A["view"]))
    assert m["next_action_censored"] == int((~known).sum()) == 1
    assert m["n_events"] == 5 and m["purchase_60m_censored"] == 1  # only zz's hour runs past the end


def deterministic_stream(n_users=300):
    rows = []
    for u in range(n_users):
        t = T0 + 40 * u
        rows += [(f"u{u}", "view", t), (f"u{u}", "add_to_cart", t + 20)]
        if u % 2:
            rows.append((f"u{u}", "purchase", t + 40))
    rows.append(("late", "view", T0 + 40 * n_users + 700))  # so the last sessions end inside the data
    return events(sorted(rows, key=lambda r: r[2]))


def test_training_learns_a_deterministic_next_action_and_is_reproducible():
    b = deterministic_stream()
    settings = TrainSettings(epochs=15, patience=15, batch_size=16, learning_rate=5e-3, seed=3)
    small = TransformerConfig(n_actions=9, window=8, d_model=32, layers=1, heads=2, dropout=0.0)
    first = train(b, CFG, settings, small, log=lambda line: None, show_progress=False)
    second = train(b, CFG, settings, small, log=lambda line: None, show_progress=False)
    assert [h["train_loss"] for h in first["history"]] == [h["train_loss"] for h in second["history"]]
    assert first["vocabulary"] == list(CFG.actions) and first["model_config"]["window"] == 8
    assert set(first["validation_metrics"]) == {"transformer", "markov", "popularity"}
    s = features(b, CFG)
    probs, _ = predict(load_model(first), s)
    after_view = (s.action == A["view"]) & (s.next_action >= 0)
    assert probs[after_view, A["add_to_cart"]].mean() > 0.8


def test_a_trained_model_answers_at_positions_and_gaps_it_never_saw_as_at_those_it_did():
    b = deterministic_stream()  # every user has 2 or 3 events: training sees positions 0 to 2 only
    settings = TrainSettings(epochs=15, patience=15, batch_size=16, learning_rate=5e-3, seed=3)
    small = TransformerConfig(n_actions=9, window=32, d_model=32, layers=1, heads=2, dropout=0.0)
    m = load_model(train(b, CFG, settings, small, log=lambda line: None, show_progress=False))
    length = 30
    for gap in (0, 17):  # a user's first event; and the bucket of gaps longer than any in training
        # The same event 30 times over: with no position embedding there is nothing to extrapolate, so the
        # 30th answers exactly as the 1st, which training saw.
        tok = {"action": torch.full((1, length), A["view"]), "gap": torch.full((1, length), gap),
               "device": torch.zeros(1, length, dtype=torch.long), "daypart": torch.zeros(1, length, dtype=torch.long),
               "category": torch.zeros(1, length, dtype=torch.long)}
        state = m.state_mean.expand(1, length, -1)
        with torch.no_grad():
            next_logits, conv_logits = m(tok, torch.zeros(1, length, dtype=torch.bool), state)
        torch.testing.assert_close(next_logits[0, -1], next_logits[0, 0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(conv_logits[0, -1], conv_logits[0, 0], atol=1e-4, rtol=1e-4)
    assert torch.softmax(next_logits[0, -1], -1).argmax().item() == A["add_to_cart"]


def test_training_refuses_a_log_with_no_validation_data():
    young = events([(f"u{i}", "view", T0 + i) for i in range(30)])  # 30 seconds: nothing can be validated
    with pytest.raises(ValueError, match="(no validation events|less than one session gap)"):
        train(young, CFG, TrainSettings(epochs=1), log=lambda line: None, show_progress=False)
    gap_only = events([(f"u{i}", "view", T0 + i) for i in range(30)] + [("late", "view", T0 + 700)])
    with pytest.raises(ValueError, match="no validation events"):
        train(gap_only, CFG, TrainSettings(epochs=1), log=lambda line: None, show_progress=False)


def test_chunks_cut_long_sequences_into_windows():
    b = events([("a", "view", T0 + i) for i in range(11)] + [("b", "view", T0)])
    s = build_sequences(b, 9, A["purchase"], CFG.session_gap_s)
    pieces = chunks(s, 4)
    assert sorted(pieces[:, 1].tolist()) == [1, 3, 4, 4]
    tok, padding, state, rows = batch_tokens(s, pieces, 9)
    assert tok["action"].shape == (4, 4) and int(padding.sum()) == 4 and int((rows >= 0).sum()) == 12
