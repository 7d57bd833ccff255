"""The columnar item catalog against the per-event loop it replaced, and its bounds, erasure and snapshots."""
import msgpack
import numpy as np
import pytest

from model import EventBatch
from model.catalog import ItemCatalog
from model.pair_counts import PairCounts

T0 = 1_700_000_000.0


def reference(batch: EventBatch, gap: float, depth: int, state: dict) -> None:
    """The catalog's meaning, one event at a time, without pruning (the loop nudge ran before)."""
    covisits, popular, users = state["covisits"], state["popular"], state["users"]
    for user, item, category, query, ts in zip(batch.user_ids.tolist(), batch.item_ids.tolist(),
                                               batch.categories.tolist(), batch.queries.tolist(), batch.ts.tolist()):
        if item is None and category is None and query is None:
            continue
        s = users.setdefault(user, {"items": [], "category": None, "query": None, "ts": ts})
        if ts - s["ts"] > gap:
            s["items"] = []
        s["ts"] = max(s["ts"], ts)
        s["category"] = category if category is not None else s["category"]
        s["query"] = query if query is not None else s["query"]
        if item is None:
            continue
        kept = [other for other in s["items"] if other != item]
        for other in kept:
            covisits.setdefault(item, {}).setdefault(other, 0)
            covisits[item][other] += 1
            covisits.setdefault(other, {}).setdefault(item, 0)
            covisits[other][item] += 1
        for key in ("", category) if category is not None else ("",):
            popular.setdefault(key, {}).setdefault(item, 0)
            popular[key][item] += 1
        s["items"] = [item, *kept][:depth]  # the most recent first


def stream(seed: int, n: int, users: int = 40, items: int = 60):
    rng = np.random.default_rng(seed)
    user_ids = [f"u{x}" for x in rng.integers(0, users, n)]
    item_ids = [None if x < 4 else f"i{x}" for x in rng.integers(0, items, n)]
    categories = [None if x < 2 else f"c{x}" for x in rng.integers(0, 7, n)]
    queries = [None if x < 8 else f"q{x}" for x in rng.integers(0, 10, n)]
    # Mostly in order, with late events and gaps long enough to end sessions.
    ts = T0 + np.cumsum(rng.exponential(60.0, n)) - rng.exponential(20.0, n) * (rng.random(n) < 0.2)
    return EventBatch.build(user_ids, [0] * n, ts, item_ids=item_ids, categories=categories, queries=queries)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("depth", [1, 3, 5])
def test_columnar_batches_learn_what_the_per_event_loop_learns(seed, depth):
    batch = stream(seed, 1500)
    catalog = ItemCatalog(600.0, recent_items=depth, prune_every=10**9)
    expected = {"covisits": {}, "popular": {}, "users": {}}
    rng = np.random.default_rng(seed + 100)
    cuts = sorted(set(rng.integers(0, len(batch), 12).tolist()))
    for lo, hi in zip([0, *cuts], [*cuts, len(batch)]):
        part = batch.take(slice(lo, hi))
        catalog.observe(part)
        reference(part, 600.0, depth, expected)
    learned = catalog.learned()
    assert learned["covisits"] == expected["covisits"]
    assert learned["popular"] == expected["popular"]
    assert learned["users"] == expected["users"]


def test_a_user_repeating_one_item_still_co_visits_the_items_before_it():
    n = 50
    users, items = ["a"] * n, ["x"] + ["y"] * (n - 2) + ["z"]
    catalog = ItemCatalog(1800.0)
    catalog.observe(EventBatch.build(users, [0] * n, T0 + np.arange(n), item_ids=items))
    assert catalog.learned()["covisits"]["z"] == {"x": 1, "y": 1}
    assert catalog.context("a") == {"item_id": "z"}


def test_rankings_are_cut_back_at_fixed_places_in_the_stream():
    rng = np.random.default_rng(3)
    n = 4000
    batch = EventBatch.build([f"u{x}" for x in rng.integers(0, 500, n)], [0] * n, T0 + np.arange(n) * 1e4,
                             item_ids=[f"i{x}" for x in rng.integers(0, 300, n)], categories=["c"] * n)
    catalog = ItemCatalog(1800.0, max_popular=5, prune_every=100)
    catalog.observe(batch)
    popular = catalog.learned()["popular"]
    # The last cut came at event 4000: both rankings hold at most 5 items, the most counted of the stream.
    assert len(popular[""]) == 5 and len(popular["c"]) == 5
    assert len(catalog.popular) == 10
    ranked = sorted(popular[""], key=lambda item: (-popular[""][item], catalog.items.find(item)))
    assert catalog.recommend("nobody", 5) == (ranked, "popularity")


def test_erasure_forgets_the_user_but_not_the_anonymous_counts():
    catalog = ItemCatalog(1800.0)
    catalog.observe(EventBatch.build(["a", "a", "b"], [0] * 3, [T0, T0 + 1, T0 + 2], item_ids=["i1", "i2", "i1"],
                                     categories=["shoes", "shoes", None], queries=["boots", None, None]))
    assert catalog.context("a") == {"category": "shoes", "item_id": "i2", "query": "boots"}
    catalog.erase("a")
    assert catalog.context("a") == {}
    assert "a" not in catalog.learned()["users"] and "a" not in msgpack.unpackb(bytes(catalog.state_dict()["names"]))["users"]
    assert catalog.learned()["covisits"]["i1"] == {"i2": 1}
    catalog.observe(EventBatch.build(["a"], [0], [T0 + 3], item_ids=["i3"]))  # back as a new user
    assert catalog.context("a") == {"item_id": "i3"}


def test_a_snapshot_restores_the_catalog_and_learning_goes_on_the_same():
    batch = stream(9, 2000)
    live, restored = ItemCatalog(600.0, prune_every=300, max_neighbors=3), ItemCatalog(600.0, prune_every=300,
                                                                                      max_neighbors=3)
    live.observe(batch.take(slice(0, 1100)))
    restored.load_state({k: v.copy() for k, v in live.state_dict().items()})
    assert restored.learned() == live.learned()
    for c in (live, restored):
        c.observe(batch.take(slice(1100, None)))
    assert restored.learned() == live.learned()
    assert restored.recommend("u3", 4) == live.recommend("u3", 4)


def test_an_older_nested_snapshot_still_loads():
    old = {"covisits": {"i1": {"i2": 2}, "i2": {"i1": 2}}, "popular": {"": {"i1": 3, "i2": 2}, "shoes": {"i2": 2}},
           "users": {"a": {"items": [["i1", T0], ["i2", T0 + 5]], "category": "shoes", "query": None, "ts": T0 + 5}}}
    catalog = ItemCatalog(1800.0)
    catalog.load_state({"msgpack": np.frombuffer(msgpack.packb(old), dtype=np.uint8)})
    learned = catalog.learned()
    assert learned["covisits"] == old["covisits"] and learned["popular"] == old["popular"]
    assert learned["users"]["a"] == {"items": ["i2", "i1"], "ts": T0 + 5, "category": "shoes", "query": None}
    assert catalog.recommend("b", 2, "shoes") == (["i2"], "category_popularity")


def test_pair_counts_prune_keeps_the_largest_counts_ties_to_the_smaller_column():
    table = PairCounts()
    table.add(np.array([0] * 6 + [1]), np.array([5, 4, 4, 3, 2, 1, 9]))
    table.prune(keep=2, limit=3)
    cols, counts = table.row(0)
    assert dict(zip(cols.tolist(), counts.tolist())) == {4: 2, 1: 1}
    assert table.row(1)[0].tolist() == [9]
    table.add(np.array([0]), np.array([5]))  # a pruned pair counts again from 1
    assert dict(zip(*(x.tolist() for x in table.row(0)))) == {4: 2, 1: 1, 5: 1}
    assert len(table) == 4
    table.merge()
    assert table.ranked([0, 1]).tolist() == [4, 1, 5, 9]


def test_in_an_engine_the_catalog_shares_its_user_rows_through_erasure_and_snapshots():
    from model import Engine, TenantConfig

    cfg = TenantConfig()
    engine = Engine(cfg)
    view = cfg.actions.index("view")
    engine.apply(EventBatch.build(["quiet"], [view], [T0]), np.array([1]))  # no item, category or query
    engine.apply(EventBatch.build(["a", "a", "b"], [view] * 3, [T0 + 1, T0 + 2, T0 + 3], item_ids=["i1", "i2", "i1"],
                                  categories=["shoes"] * 3), np.array([2, 3, 4]))
    catalog = engine.catalog
    assert catalog.users is engine.windows.users
    assert catalog.context("quiet") == {} and catalog.recommend("quiet", 2) == (["i1", "i2"], "popularity")
    assert catalog.context("b") == {"category": "shoes", "item_id": "i1"}
    assert catalog.recommend("b", 2) == (["i2"], "co_visitation")
    assert engine.erase_user("a")
    assert catalog.context("a") == {} and "a" not in catalog.learned()["users"]
    again = Engine(cfg)
    again.load_state(engine.state_dict())
    assert again.catalog.users is again.windows.users
    assert again.catalog.learned() == catalog.learned()
    assert again.catalog.context("a") == {} and again.catalog.context("b") == catalog.context("b")
    again.apply(EventBatch.build(["a"], [view], [T0 + 5], item_ids=["i3"]), np.array([5]))  # back as a new user
    assert again.catalog.context("a") == {"item_id": "i3"}
