"""Uplift-minded decisions: abandoned carts after inactivity, no discount in checkout or after a purchase, discounts for
undecided users only, and bandit hygiene (sticky variants, a traffic floor, even shares while warming up)."""
import numpy as np

from model import Engine, EventBatch, TenantConfig
from model.bandit import ThompsonBandit
from model.catalog import ItemCatalog
from model.config import INTENTS
from model.decisions import decide, newly_idle, predict
from model.intents import intent_scores, open_cart
from model.signals import SignalPolicy

CFG = TenantConfig(cart_idle_s=600.0)
A = {name: i for i, name in enumerate(CFG.actions)}
T0 = 1_700_000_000.0
CART = INTENTS.index("cart_abandon_risk")


def windows(*sequences):
    k = max(len(s) for s in sequences)
    actions, ts = np.zeros((len(sequences), k), np.int32), np.zeros((len(sequences), k))
    for i, s in enumerate(sequences):
        for j, (name, t) in enumerate(s):
            actions[i, j], ts[i, j] = A[name], T0 + t
    return actions, ts, np.array([len(s) for s in sequences])


def test_a_cart_is_abandoned_only_after_inactivity_and_not_in_checkout_or_after_a_purchase():
    actions, ts, lengths = windows(
        [("view", 0), ("add_to_cart", 10)],
        [("view", 0), ("add_to_cart", 10), ("begin_checkout", 20)],
        [("add_to_cart", 0), ("purchase", 30)],
        [("add_to_cart", 0), ("remove_from_cart", 30)],
    )
    at_the_add = open_cart(actions, ts, lengths, CFG, T0 + 11)
    later = open_cart(actions, ts, lengths, CFG, T0 + 10 + 600)
    assert at_the_add.tolist() == [False, False, False, False]
    assert later.tolist() == [True, False, False, False]
    assert open_cart(actions, ts, lengths, CFG).tolist() == [True, True, False, False]  # open, idle or not


def test_discounts_go_to_undecided_users_only():
    n = 4
    next_probs = np.full((n, len(CFG.actions)), 1 / len(CFG.actions))
    p60 = np.array([0.005, 0.1, 0.4, 0.8])  # nearly sure not to buy, undecided, undecided, about to buy
    scores = intent_scores(next_probs, p60 / 4, p60, np.ones(n, bool), CFG)
    risk = scores[:, CART]
    assert risk[0] == 0.0 and risk[3] == 0.0 and risk[1] > risk[2] > 0.0


def _engine_with_idle_carts(users=("a", "b"), purchase_before=()):
    engine = Engine(CFG)
    rows = [(u, "purchase", T0 - 3000) for u in purchase_before]
    rows += [(u, a, T0 + i) for u in users for i, a in enumerate(["view", "add_to_cart"])]
    rows.sort(key=lambda r: r[2])
    names, acts, ts = zip(*rows)
    engine.apply(EventBatch.build(list(names), [A[a] for a in acts], list(ts)))
    return engine


def test_the_idle_sweep_finds_each_idle_spell_once_and_decides_for_it():
    engine = _engine_with_idle_carts()
    config = TenantConfig(cart_idle_s=600.0, holdout_share=0.0)
    policy = SignalPolicy(config)
    assert newly_idle(engine, T0, T0 + 500) == []  # not idle yet
    found = newly_idle(engine, T0 + 500, T0 + 700)
    assert sorted(found) == ["a", "b"]
    assert newly_idle(engine, T0 + 700, T0 + 900) == []  # already looked at
    decisions = decide(engine, policy, found, predict(engine, None, found, T0 + 700), T0 + 700)
    assert [d.type for d in decisions] == ["offer_discount", "offer_discount"]


def test_no_discount_right_after_a_purchase():
    engine = _engine_with_idle_carts(users=("buyer", "browser"), purchase_before=("buyer",))
    policy = SignalPolicy(TenantConfig(cart_idle_s=600.0, holdout_share=0.0))
    users = ["buyer", "browser"]
    decisions = decide(engine, policy, users, predict(engine, None, users, T0 + 700), T0 + 700)
    assert decisions[0] is None and decisions[1] is not None and decisions[1].type == "offer_discount"


def test_a_user_keeps_the_variant_first_shown_within_the_signal_horizon():
    config = TenantConfig(holdout_share=0.0, cooldown_s=0.0, daily_cap=1000, bandit_min_outcomes=0,
                          bandit_floor_share=0.2)
    policy = SignalPolicy(config)
    intents = np.array([CART] * 40)
    users = [f"u{i}" for i in range(40)]
    first = [d.variant for d in policy.decide(users, intents, np.ones(40), T0, ItemCatalog(1800.0))]
    again = [d.variant for d in policy.decide(users, intents, np.ones(40), T0 + 60, ItemCatalog(1800.0))]
    assert first == again and len(set(first)) > 1
    # The second signal renewed the variant's hold; past that horizon the bandit chooses afresh.
    later = [d.variant for d in policy.decide(users, intents, np.ones(40), T0 + 60 + config.signal_horizon_s + 1,
                                              ItemCatalog(1800.0))]
    assert later != first


def test_bandit_shares_traffic_evenly_until_every_arm_has_outcomes_then_keeps_a_floor():
    bandit = ThompsonBandit(3, seed=1)
    bandit.update(np.array([0] * 20), np.ones(20))  # arm 0 looks great after 20 lucky outcomes
    early = bandit.choose(3000, floor_share=0.05, min_outcomes=30)
    assert np.all(np.abs(np.bincount(early, minlength=3) / 3000 - 1 / 3) < 0.04)  # still even
    bandit.update(np.array([1] * 30 + [2] * 30), np.zeros(60))
    bandit.update(np.array([0] * 10), np.ones(10))
    late = np.bincount(bandit.choose(5000, floor_share=0.05, min_outcomes=30), minlength=3) / 5000
    assert late[0] > 0.8 and late[1] > 0.03 and late[2] > 0.03  # the floor: 5 % each, drawn uniformly
    assert bandit.outcomes().tolist() == [30.0, 30.0, 30.0]


def test_policy_replay_counts_the_users_and_carts_each_intent_fires_for():
    from model.policy_replay import replay_policy

    users, actions, ts = [], [], []

    def session(user, start, names):
        for k, name in enumerate(names):
            users.append(user), actions.append(A[name]), ts.append(T0 + start + 30 * k)

    for i in range(30):  # carts left behind: each user goes quiet after adding
        session(f"leaves{i}", 60 * i, ["view", "view", "add_to_cart"])
    for i in range(30):  # carts that are checked out and bought
        session(f"buys{i}", 7200 + 60 * i, ["view", "add_to_cart", "begin_checkout", "purchase"])
    session("late", 5 * 3600, ["view"])  # time goes on, so the last carts go idle too
    order = np.argsort(ts, kind="stable")
    batch = EventBatch.build(np.array(users)[order].tolist(), np.array(actions)[order], np.array(ts)[order])

    report = replay_policy(batch, CFG)
    rows = {r["intent"]: r for r in report.rows}
    assert (report.events, report.users, report.users_with_cart) == (len(batch), 61, 60)
    discount = rows["cart_abandon_risk"]
    assert discount["type"] == "offer_discount"
    assert discount["users"] == 30 and discount["carts"] == 30 and discount["share_of_carts"] == 0.5, discount
    assert discount["share_of_users"] == 30 / 61
    assert all(r["carts"] is None for name, r in rows.items() if name != "cart_abandon_risk")
    assert "| cart_abandon_risk | offer_discount | 30 | 30 | 49.18% | 30 | 50.00% |" in report.table()
