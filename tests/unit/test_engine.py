import numpy as np
import pytest

from model import Engine, EventBatch, TenantConfig
from model.contexts import context_codes, describe_context

T0 = 1_700_000_000.0
CFG = TenantConfig(allowed_lateness_s=600.0)
A = {name: i for i, name in enumerate(CFG.actions)}


def batch(rows):
    """rows of (user, action name, ts)."""
    users, actions, ts = zip(*rows)
    return EventBatch.build(list(users), [A[a] for a in actions], list(ts))


def apply_in_chunks(engine, b, size):
    for start in range(0, len(b), size):
        engine.apply(b.take(np.arange(start, min(start + size, len(b)))))


def views_convert_searches_do_not(n_users=400):
    rows, t = [], T0
    for i in range(n_users):
        if i % 2:
            rows += [(f"v{i}", "view", t), (f"v{i}", "purchase", t + 120)]
        else:
            rows += [(f"s{i}", "search", t)]
        t += 60
    rows.append(("clock", "view", t + 2 * CFG.horizon_s))  # moves the watermark past every horizon
    return batch(rows)


def pooled_mean(engine, action):
    alpha, beta = engine.pooled_posterior()
    return alpha[A[action]] / (alpha[A[action]] + beta[A[action]])


def test_engine_learns_that_views_convert_and_searches_do_not():
    engine = Engine(CFG)
    apply_in_chunks(engine, views_convert_searches_do_not(), 37)
    assert pooled_mean(engine, "view") > 0.9 > CFG.prior_mean("view")
    assert pooled_mean(engine, "search") < 0.02 < CFG.prior_mean("search")


def test_engine_resolves_nothing_before_the_horizon_closes():
    engine = Engine(CFG)
    engine.apply(batch([("u", "view", T0), ("u", "purchase", T0 + 10), ("w", "view", T0 + CFG.horizon_s - 1)]))
    alpha, beta = engine.pooled_posterior()
    np.testing.assert_allclose(alpha, engine.prior_alpha)
    np.testing.assert_allclose(beta, engine.prior_beta)


def test_engine_counts_a_conversion_after_the_horizon_as_failure():
    engine = Engine(CFG)
    engine.apply(batch([("u", "view", T0), ("u", "purchase", T0 + CFG.horizon_s + 5), ("x", "view", T0 + 3 * CFG.horizon_s)]))
    ev = engine.context_evidence
    assert ev.success[:, A["view"]].sum() == 0
    assert ev.failure[:, A["view"]].sum() > 0.99


def test_engine_credits_a_late_arriving_action_before_a_conversion():
    cfg = TenantConfig(allowed_lateness_s=600.0)
    engine = Engine(cfg)
    engine.apply(batch([("u", "purchase", T0 + 300)]))
    engine.apply(batch([("u", "add_to_cart", T0)]))  # arrives after the purchase, dated before it
    engine.apply(batch([("clock", "view", T0 + 3 * cfg.horizon_s)]))
    assert engine.context_evidence.success[:, A["add_to_cart"]].sum() > 0.99


def test_engine_state_is_the_same_however_the_stream_is_batched():
    b = views_convert_searches_do_not(120)
    whole, pieces = Engine(CFG), Engine(CFG)
    whole.apply(b)
    apply_in_chunks(pieces, b, 7)
    for key, value in whole.state_dict().items():
        np.testing.assert_allclose(pieces.state_dict()[key], value, rtol=1e-9, err_msg=key)


def test_engine_forgets_with_the_half_life():
    cfg = TenantConfig(allowed_lateness_s=0.0, forget_half_life_s=3600.0, horizon_s=60.0)
    engine = Engine(cfg)
    engine.apply(batch([("u", "view", T0), ("later", "view", T0 + 60 + 3600)]))
    # The view's failure was resolved at T0 + 60 and is one half-life old at the clock.
    assert engine.context_evidence.failure[:, A["view"]].sum() == pytest.approx(0.5, rel=1e-9)


def test_engine_sequence_lift_rewards_transitions_that_convert():
    rows, t = [], T0
    for i in range(300):
        if i % 2:  # view -> add_to_cart converts
            rows += [(f"a{i}", "view", t), (f"a{i}", "add_to_cart", t + 5), (f"a{i}", "purchase", t + 60)]
        else:  # add_to_cart straight away does not
            rows += [(f"b{i}", "add_to_cart", t)]
        t += 30
    rows.append(("clock", "search", t + 3 * CFG.horizon_s))
    engine = Engine(CFG)
    engine.apply(batch(rows))
    assert engine.lift()[A["view"], A["add_to_cart"]] > 1.5
    sequence = engine.sequence_score(["a1"], t, mode="mean")[0]
    alone = engine.sequence_score(["b0"], t, mode="mean")[0]
    assert sequence > alone


def test_engine_scores_unknown_users_zero_and_recent_activity_higher():
    engine = Engine(CFG)
    engine.apply(batch([("old", "add_to_cart", T0), ("new", "add_to_cart", T0 + 7200)]))
    s = engine.sequence_score(["nobody", "old", "new"], T0 + 7200, mode="mean")
    assert s[0] == 0.0 and s[2] > s[1] > 0.0
    s = engine.score(["nobody", "old", "new"], T0 + 7200)
    assert not s.known[0] and s.known[1:].all()
    np.testing.assert_allclose(s.next_probs.sum(axis=1), 1.0)


def test_engine_thompson_draws_replay_identically_and_vary_between_calls():
    b = views_convert_searches_do_not(50)
    one, two = Engine(CFG), Engine(CFG)
    one.apply(b)
    two.apply(b)
    users = ["v1", "v3", "s2"]
    first = one.score(users, T0 + 4000).score_draw
    np.testing.assert_array_equal(first, two.score(users, T0 + 4000).score_draw)
    assert not np.array_equal(first, one.score(users, T0 + 4000).score_draw)


def test_engine_markov_chain_predicts_the_usual_next_action():
    rows = []
    for i in range(50):
        rows += [(f"u{i}", "view", T0 + i), (f"u{i}", "add_to_cart", T0 + i + 10)]
    engine = Engine(CFG)
    engine.apply(batch(rows))
    engine.apply(batch([("me", "view", T0 + 100)]))
    probs = engine.score(["me"], T0 + 101).next_probs[0]
    assert probs.argmax() == A["add_to_cart"] and probs[A["add_to_cart"]] > 0.7


def test_engine_snapshot_round_trip_restores_exact_state():
    engine = Engine(CFG)
    b = views_convert_searches_do_not(80)
    engine.apply(b.take(np.arange(100)), np.arange(1, 101))
    restored = Engine(CFG)
    restored.load_state(engine.state_dict())
    rest = b.take(np.arange(100, len(b)))
    seqs = np.arange(101, 101 + len(rest))
    engine.apply(rest, seqs)
    restored.apply(rest, seqs)
    for key, value in engine.state_dict().items():
        np.testing.assert_array_equal(restored.state_dict()[key], value, err_msg=key)


def test_engine_skips_events_already_applied():
    engine = Engine(CFG)
    b = batch([("u", "view", T0), ("u", "search", T0 + 1)])
    assert engine.apply(b, np.array([1, 2])) == 2
    assert engine.apply(b, np.array([1, 2])) == 0
    assert engine.events_applied == 2


def test_engine_erase_forgets_the_user():
    engine = Engine(CFG)
    engine.apply(batch([("gone", "view", T0), ("kept", "view", T0)]))
    assert engine.erase_user("gone")
    assert engine.recent_actions("gone") is None
    assert engine.recent_actions("kept") == [("view", T0)]
    assert engine.attribution.pending == 1
    assert "gone" not in bytes(engine.state_dict()["windows.user_ids"]).decode().split("\n")


def test_engine_window_keeps_the_last_k_events_in_order():
    cfg = TenantConfig(window_size=3)
    engine = Engine(cfg)
    names = ["view", "search", "favorite", "add_to_cart", "purchase"]
    engine.apply(batch([("u", n, T0 + i) for i, n in enumerate(names)]))
    assert [a for a, _ in engine.recent_actions("u")] == names[-3:]


def test_contexts_encode_device_daypart_and_segment():
    # 2023-11-14 22:13 UTC is morning (07:13) in Tokyo, +540 minutes.
    code = context_codes(np.array([1]), np.array([T0]), np.array([540]), np.array([2]))[0]
    assert describe_context(code, ("a", "b")) == {"device": "mobile", "daypart": "morning", "segment": "b"}


def test_engine_late_events_join_windows_but_not_attribution():
    cfg = TenantConfig(allowed_lateness_s=60.0)
    engine = Engine(cfg)
    engine.apply(batch([("u", "view", T0 + 1000)]))
    engine.apply(batch([("u", "search", T0)]))  # 1000 s behind the newest event: late
    assert [a for a, _ in engine.recent_actions("u")] == ["view", "search"]
    assert engine.late_events == 1
    engine.apply(batch([("clock", "view", T0 + 5 * cfg.horizon_s)]))
    ev = engine.context_evidence
    assert ev.success[:, A["search"]].sum() + ev.failure[:, A["search"]].sum() == 0
    assert ev.failure[:, A["view"]].sum() > 0


def test_engine_out_of_order_stream_gives_the_same_state_however_batched():
    rng = np.random.default_rng(5)
    n = 3000
    ts = T0 + np.sort(rng.uniform(0, 20_000, n)) - rng.exponential(200.0, n)  # mostly in order, some late
    names = rng.choice(["view", "view", "add_to_cart", "purchase", "search"], n)
    b = EventBatch.build([f"u{i}" for i in rng.integers(0, 80, n)], [A[x] for x in names], ts)
    cfg = TenantConfig(allowed_lateness_s=120.0, horizon_s=600.0)
    whole, pieces = Engine(cfg), Engine(cfg)
    whole.apply(b)
    for size in (1, 13, 250):
        pieces = Engine(cfg)
        apply_in_chunks(pieces, b, size)
        assert 0 < pieces.late_events < n
        np.testing.assert_allclose(pieces.context_evidence.success, whole.context_evidence.success, rtol=1e-9)
        np.testing.assert_allclose(pieces.transition_evidence.failure, whole.transition_evidence.failure, rtol=1e-9)
