"""The learned score's parts: user state, item shares, the online logistic regression, its example queue, and the
baselines the replay prints beside it."""
import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import expit

from model import EventBatch, TenantConfig
from model.combiner import ExampleQueue, OnlineLogit
from model.count_baselines import events_last_30m, prequential_logistic, purchases_so_far, simple_counts
from model.item_rates import HashedRates
from model.score_features import session_item_features
from model.user_state import SCALES_S, UserState

CFG = TenantConfig()
A = {name: i for i, name in enumerate(CFG.actions)}
T0 = 1_700_000_000.0


def test_user_state_counts_decay_on_each_scale_and_lifetime_counts_do_not():
    state = UserState(len(CFG.actions), CFG.conversion_code, CFG.session_gap_s)
    users = np.array([0, 0, 1])
    feats, _, _ = state.push(users, np.array([A["view"], A["purchase"], A["view"]]), np.array([T0, T0 + 10, T0]),
                             np.zeros(3, np.int32), np.zeros(3, np.int32))
    names = state.feature_names(CFG.actions)
    col = {n: i for i, n in enumerate(names)}
    assert feats[0, col["count_life_view"]] == pytest.approx(np.log1p(1))
    assert feats[1, col["count_life_purchase"]] == pytest.approx(np.log1p(1))  # the event itself counts
    assert feats[0, col["count_life_purchase"]] == 0.0  # not the event after it
    later = state.features(np.array([0]), T0 + 10 + 3600.0)[0]
    for scale, name in zip(SCALES_S, ("5m", "1h", "1d", "life")):
        expected = 1.0 if np.isinf(scale) else 2.0 ** (-3600.0 / scale)
        assert later[col[f"count_{name}_purchase"]] == pytest.approx(np.log1p(expected), rel=1e-5)
    assert later[col["since_conversion"]] == 0.0 and later[col["never_converted"]] == 0.0
    assert state.features(np.array([-1]), T0).sum() == 0.0  # unknown users


def test_user_state_is_the_same_whether_events_come_together_or_one_by_one():
    rng = np.random.default_rng(0)
    n = 200
    users, actions = rng.integers(0, 7, n), rng.integers(0, len(CFG.actions), n)
    ts = np.sort(T0 + rng.uniform(0, 5000, n))
    items = rng.integers(0, 5, n).astype(np.int32)
    together = UserState(len(CFG.actions), CFG.conversion_code, CFG.session_gap_s)
    whole, _, _ = together.push(users, actions, ts, items, items)
    alone = UserState(len(CFG.actions), CFG.conversion_code, CFG.session_gap_s)
    single = np.concatenate([alone.push(users[i:i + 1], actions[i:i + 1], ts[i:i + 1], items[i:i + 1],
                                        items[i:i + 1])[0] for i in range(n)])
    np.testing.assert_allclose(whole, single, rtol=1e-6)


def test_hashed_rates_see_events_only_after_a_fold_and_forget():
    rates = HashedRates(1024, forget_half_life_s=86400.0)
    keys = rates.keys(np.array(["a", "a", "b", None], dtype=object))
    assert keys[3] == 0 and keys[0] == keys[1] != keys[2]
    rates.add(keys, np.array([True, True, False, False]), np.full(4, T0))
    share, seen = rates.rates(keys)
    assert (seen == 0).all()  # nothing folded yet: reads see the state of the last fold
    rates.fold(T0)
    share, seen = rates.rates(keys)
    assert seen[0] == pytest.approx(2.0) and share[0] > share[2] and seen[3] == 0.0
    rates.fold(T0 + 86400.0)
    assert rates.rates(keys)[1][0] == pytest.approx(1.0)  # one half-life later


def test_online_logit_learns_what_a_batch_fit_learns():
    rng = np.random.default_rng(1)
    x = np.c_[np.ones(4000), rng.normal(size=(4000, 3))]
    w_true = np.array([-1.0, 1.5, -0.7, 0.0])
    y = rng.random(4000) < expit(x @ w_true)
    model = OnlineLogit(np.zeros(4), 1.0, forget_half_life_s=1e12)
    for part in np.array_split(np.arange(4000), 40):
        model.update(x[part], y[part], np.ones(len(part)), T0)

    def penalized(w):
        z = x @ w
        return np.logaddexp(0, z).sum() - y @ z + 0.5 * w @ w

    batch = minimize(penalized, np.zeros(4)).x
    np.testing.assert_allclose(model.mean, batch, atol=0.05)
    assert model.outcomes == 4000
    draws = np.stack([model.draw(x[:5], np.random.default_rng(i)) for i in range(300)])
    np.testing.assert_allclose(draws.mean(axis=0), model.predict(x[:5]), atol=0.02)


def test_online_logit_forgets_toward_its_prior_precision_but_keeps_its_mean():
    model = OnlineLogit(np.zeros(2), 1.0, forget_half_life_s=100.0)
    x = np.c_[np.ones(500), np.linspace(-2, 2, 500)]
    model.update(x, x[:, 1] > 0, np.ones(500), T0)
    mean, precision = model.mean.copy(), model.precision.copy()
    model.update(x[:0], np.zeros(0), np.zeros(0), T0 + 1000.0)  # ten half-lives, no new evidence
    np.testing.assert_array_equal(model.mean, mean)
    assert np.all(np.diag(model.precision) < np.diag(precision) / 100 + 1.0 + 1e-9)


def test_example_queue_samples_when_full_and_weights_what_it_keeps():
    queue = ExampleQueue(300.0, width=2, capacity=100, min_batch=1)
    x = np.zeros((50, 2), np.float32)
    for step in range(6):
        queue.push(np.arange(50), T0 + step + np.zeros(50), np.zeros(50), x)
        queue.adapt()
    assert queue.stride > 1 and len(queue) < 300
    due = queue.resolve(T0 + 1000.0, T0 + 1000.0)
    assert due["weight"].sum() == pytest.approx(300, rel=0.2)  # weights stand for what was not kept


@pytest.mark.parametrize("chunks", [1, 7, 300])
def test_example_queue_stays_bounded_between_ticks_whatever_the_batching(chunks):
    # A flood between two ticks (no adapt): 200,000 rows into a queue of capacity 1,000.
    n, rng = 200_000, np.random.default_rng(1)
    ts = T0 + np.arange(n) * 1e-3
    x = rng.normal(size=(n, 2)).astype(np.float32)
    queue = ExampleQueue(300.0, width=2, capacity=1000, min_batch=1)
    for part in np.array_split(np.arange(n), chunks):
        queue.push(part, ts[part], np.zeros(len(part)), x[part])
    assert len(queue) < 2000 + 1000 * np.log2(n / 2000) + 100  # about capacity rows per doubling, past 2 x
    due = queue.resolve(T0 + 1e6, T0 + 1e6)
    assert due["weight"].sum() == pytest.approx(n, rel=0.02)  # what was thinned out is stood for
    np.testing.assert_allclose(np.average(due["x"], axis=0, weights=due["weight"]), x.mean(axis=0), atol=0.08)
    if chunks == 7:  # the same rows whatever the chunking
        one = ExampleQueue(300.0, width=2, capacity=1000, min_batch=1)
        one.push(np.arange(n), ts, np.zeros(n), x)
        np.testing.assert_array_equal(one.resolve(T0 + 1e6, T0 + 1e6)["user"], due["user"])


def test_session_item_features_count_revisits_items_and_purchases_in_the_latest_session():
    conv = A["purchase"]
    actions = np.array([[A["view"], A["view"], conv, A["view"], A["view"]]])
    ts = np.array([[T0, T0 + 10, T0 + 20, T0 + 5000, T0 + 5010]])  # a new session starts at the 4th event
    items = np.array([[1, 2, 2, 3, 3]], np.int32)
    feats = session_item_features(actions, ts, items, np.array([5]), 1800.0, conv)
    np.testing.assert_allclose(feats[0], np.log1p([1, 1, 0, 1]))  # item 3 seen once before; 1 item; none bought
    feats = session_item_features(actions, ts, items, np.array([3]), 1800.0, conv)  # just after the purchase
    np.testing.assert_allclose(feats[0], np.log1p([1, 2, 1, 1]))


def test_simple_counts_are_per_user_so_far_and_in_the_last_30_minutes():
    b = EventBatch.build(["a", "b", "a", "a"], [A["view"], A["view"], A["purchase"], A["view"]],
                         [T0, T0 + 1, T0 + 100, T0 + 2000])
    counts = simple_counts(b, len(CFG.actions))
    assert purchases_so_far(counts, CFG.conversion_code).tolist() == [0, 0, 1, 1]
    assert events_last_30m(counts, len(CFG.actions)).tolist() == [1, 1, 2, 1]  # 1,900 s later only itself


def test_prequential_logistic_only_uses_outcomes_known_before_it_predicts():
    rng = np.random.default_rng(2)
    n = 3000
    ts = np.sort(T0 + rng.uniform(0, 40_000, n))
    counts = rng.integers(0, 5, (n, 2)).astype(np.float32)
    labels = rng.random(n) < expit(counts[:, 0] - 2.0)
    out = prequential_logistic(counts, ts, labels, np.ones(n, bool), 300.0)
    assert (out[ts < ts.min() + 300.0] == 0.5).all()  # nothing was known yet
    late = ts > ts.min() + 20_000
    assert np.corrcoef(out[late], counts[late, 0])[0, 1] > 0.9
    # Labels the model could not have seen cannot change what it predicted before them.
    changed = labels.copy()
    changed[ts > ts.min() + 30_000] ^= True
    again = prequential_logistic(counts, ts, changed, np.ones(n, bool), 300.0)
    early = ts < ts.min() + 30_000
    np.testing.assert_allclose(again[early], out[early])


def test_online_logit_draws_weights_with_the_posterior_covariance():
    model = OnlineLogit(np.array([0.5, -1.0, 0.2]), 1.0, forget_half_life_s=1e12)
    rng = np.random.default_rng(3)
    a = rng.normal(size=(3, 3))
    model.precision = a @ a.T + 3 * np.eye(3)  # a posterior with correlated weights
    x = np.array([[1.0, 0.5, -0.3], [0.2, -1.0, 1.5]])
    logits = np.log(1 / np.stack([model.draw(x, np.random.default_rng(i)) for i in range(4000)]) - 1) * -1
    variance = np.diag(x @ np.linalg.inv(model.precision) @ x.T)
    # Each row (user) gets a draw of its own: its logit's variance is the posterior's, and rows are independent.
    observed = np.cov(logits.T)
    np.testing.assert_allclose(np.diag(observed), variance, rtol=0.1)
    assert abs(observed[0, 1]) < 0.05
    np.testing.assert_allclose(logits.mean(axis=0), x @ model.mean, atol=0.03)
