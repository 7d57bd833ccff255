"""Items, categories and queries seen in the event stream: session co-visitation and popularity for
product recommendations, and each user's latest category, item and query for signal payloads."""
from __future__ import annotations

import json

import msgpack
import numpy as np

from .events import EventBatch
from .interner import Interner
from .pair_counts import PairCounts
from .recent_items import walk

ALL = 0  # the popularity row of every category; a category's row is its id + 1


class ItemCatalog:
    """Learns which items are viewed together in sessions, and what is popular per category.

    A batch is learned as columns, with no loop per event, and what is learned does not depend on how the stream
    was batched: a replay of the log in other chunks, in another process, equals the live state.

    Parameters
    ----------
    session_gap_s : items further apart than this in a user's stream are not co-visited.
    recent_items : how many of a user's latest session items recommendations start from.
    max_neighbors : co-visited items kept per item (the most frequent), so memory stays bounded per item.
    max_popular : items kept per category ranking.
    prune_every : the rankings are cut back to those bounds (from four times them) after every so many events with
        an item: at fixed places in the stream, so that batching cannot change what is kept.
    users : the user numbering to share (the engine's), which then owns the names, their snapshot and their
        erasure; :meth:`observe` is then given each event's row. By default the catalog numbers its own users.
    """

    def __init__(self, session_gap_s: float, recent_items: int = 3, max_neighbors: int = 50, max_popular: int = 200,
                 prune_every: int = 4096, users: Interner | None = None) -> None:
        if recent_items < 1:
            raise ValueError("recent_items must be at least 1")
        self.session_gap_s = session_gap_s
        self.max_neighbors = max_neighbors
        self.max_popular = max_popular
        self.prune_every = prune_every
        self.items, self.categories = Interner(), Interner()
        self.owns_users = users is None
        self.users = Interner() if users is None else users
        self.covisits = PairCounts()  # (item, item)
        self.popular = PairCounts()  # (ALL or category id + 1, item)
        self.item_events = 0  # events with an item learned so far: where the stream's pruning places are
        self.user_ts = np.zeros(0)  # per user id: the latest event time (-inf: none)
        self.user_items = np.zeros((0, recent_items), dtype=np.int64)  # the session's items, latest first; -1
        self.user_category = np.zeros(0, dtype=object)
        self.user_query = np.zeros(0, dtype=object)

    def observe(self, batch: EventBatch, user_rows: np.ndarray | None = None) -> None:
        """Learn from a batch, in order; events without item, category or query change nothing. ``user_rows``:
        each event's user in the shared numbering (required when it is shared)."""
        rows = np.flatnonzero((batch.item_ids != None) | (batch.categories != None) | (batch.queries != None))  # noqa: E711
        if not len(rows):
            return
        users = self.users.intern(batch.user_ids[rows].tolist()) if user_rows is None else user_rows[rows]
        self._grow_users(len(self.users))
        item_names, categories = batch.item_ids[rows], batch.categories[rows]
        has_item, has_category = item_names != None, categories != None  # noqa: E711
        items = np.full(len(rows), -1, dtype=np.int64)
        items[has_item] = self.items.intern(item_names[has_item].tolist())
        category_rows = np.full(len(rows), ALL, dtype=np.int64)
        category_rows[has_category] = self.categories.intern(categories[has_category].tolist()) + 1

        walked = walk(users, batch.ts[rows], items, self.user_ts, self.user_items, self.session_gap_s)
        self.user_ts[walked.users] = walked.last_ts
        self.user_items[walked.users] = walked.recent
        for column, values in ((self.user_category, categories), (self.user_query, batch.queries[rows])):
            given = np.flatnonzero(values != None)  # noqa: E711
            last = np.unique(users[given][::-1], return_index=True)[1]  # each user's last given value
            column[users[given][::-1][last]] = values[given][::-1][last]

        # Each event with an item, by its place among them in the stream: its co-visits both ways, and its
        # popularity overall and in its category.
        place = np.cumsum(has_item) - 1 + self.item_events
        item_rows = np.flatnonzero(has_item)
        pop_rows = np.concatenate([item_rows, item_rows[category_rows[item_rows] != ALL]])
        pop_keys = np.concatenate([np.full(len(item_rows), ALL), category_rows[pop_rows[len(item_rows):]]])
        co = (place[walked.rows], items[walked.rows], walked.others)
        pop = (place[pop_rows], pop_keys, items[pop_rows])
        start, self.item_events = self.item_events, self.item_events + len(item_rows)
        cuts = range(start // self.prune_every * self.prune_every + self.prune_every, self.item_events + 1,
                     self.prune_every)
        lo = start
        for hi in [*cuts, self.item_events] if self.item_events not in cuts else cuts:
            for table, (at, a, b), both_ways in ((self.covisits, co, True), (self.popular, pop, False)):
                part = (at >= lo) & (at < hi)
                a, b = a[part], b[part]
                table.add(*((np.concatenate([a, b]), np.concatenate([b, a])) if both_ways else (a, b)))
            if hi in cuts:
                self.covisits.prune(self.max_neighbors, 4 * self.max_neighbors)
                self.popular.prune(self.max_popular, 4 * self.max_popular)
            lo = hi

    def _grow_users(self, n: int) -> None:
        have = len(self.user_ts)
        if n <= have:
            return
        more = max(n, 2 * have) - have
        self.user_ts = np.concatenate([self.user_ts, np.full(more, -np.inf)])
        self.user_items = np.concatenate([self.user_items, np.full((more, self.user_items.shape[1]), -1)])
        self.user_category = np.concatenate([self.user_category, np.full(more, None, dtype=object)])
        self.user_query = np.concatenate([self.user_query, np.full(more, None, dtype=object)])

    def _row(self, user: str) -> int | None:
        """The user's row, None if the catalog has learned nothing about them."""
        uid = self.users.find(user)
        return uid if uid is not None and uid < len(self.user_ts) and self.user_ts[uid] > -np.inf else None

    def _recent(self, uid: int | None) -> list[int]:
        return [] if uid is None else [int(i) for i in self.user_items[uid] if i >= 0]

    def recommend(self, user: str, n: int, category: str | None = None) -> tuple[list[str], str]:
        """Up to ``n`` items for ``user`` and where they came from: co-visitation, category or overall popularity.

        Ranked by count, ties to the item seen first in the stream."""
        uid = self._row(user)
        recent = self._recent(uid)
        seen = set(recent)
        picked = [int(i) for i in self.covisits.ranked(recent) if i not in seen][:n]
        if picked:
            return self._names(picked), "co_visitation"
        category = category or (self.user_category[uid] if uid is not None else None)
        category_id = self.categories.find(category) if category is not None else None
        for row, source in ((None if category_id is None else category_id + 1, "category_popularity"),
                            (ALL, "popularity")):
            if row is not None:
                picked = [int(i) for i in self.popular.ranked([row]) if i not in seen][:n]
                if picked:
                    return self._names(picked), source
        return [], "none"

    def _names(self, ids: list[int]) -> list[str]:
        return [self.items.names[i] for i in ids]

    def context(self, user: str) -> dict[str, str]:
        """The user's latest category, item and query, where known."""
        uid = self._row(user)
        if uid is None:
            return {}
        recent = self._recent(uid)
        out = {"category": self.user_category[uid], "item_id": self.items.names[recent[0]] if recent else None,
               "query": self.user_query[uid]}
        return {k: v for k, v in out.items() if v is not None}

    def erase(self, user: str) -> None:
        """Forget one user's items; co-visitation and popularity counts are anonymous aggregates."""
        self.erase_row(self.users.forget(user))

    def erase_row(self, uid: int | None) -> None:
        """Forget the items of the user numbered ``uid`` (whose name the shared numbering has forgotten)."""
        if uid is not None and uid < len(self.user_ts):
            self.user_ts[uid] = -np.inf
            self.user_items[uid] = -1
            self.user_category[uid] = self.user_query[uid] = None

    def learned(self) -> dict:
        """Everything learned, by name: for comparing two catalogs, and for reading one."""
        names = self.items.names
        categories = ["", *self.categories.names]

        def table(counts: PairCounts, row_names: list) -> dict:
            return _nested(*counts.state(), row_names, names)

        users = {name: {"items": [names[i] for i in self._recent(uid)], "ts": float(self.user_ts[uid]),
                        "category": self.user_category[uid], "query": self.user_query[uid]}
                 for uid, name in enumerate(self.users.names[:len(self.user_ts)])
                 if name is not None and self.user_ts[uid] > -np.inf}
        return {"covisits": table(self.covisits, names), "popular": table(self.popular, categories), "users": users}

    def state_dict(self) -> dict[str, np.ndarray]:
        n = min(len(self.users), len(self.user_ts))
        names = {"items": self.items.names, "categories": self.categories.names,
                 "user_category": self.user_category[:n].tolist(), "user_query": self.user_query[:n].tolist()}
        if self.owns_users:
            names["users"] = self.users.names
        names = msgpack.packb(names)
        co_keys, co_counts = self.covisits.state()
        pop_keys, pop_counts = self.popular.state()
        return {"names": np.frombuffer(names, dtype=np.uint8), "covisit_keys": co_keys, "covisit_counts": co_counts,
                "popular_keys": pop_keys, "popular_counts": pop_counts, "user_ts": self.user_ts[:n].copy(),
                "user_items": self.user_items[:n].copy(), "item_events": np.array([self.item_events])}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        if "names" not in state:  # written by an older nudge, as nested tables
            return self._load_tables(msgpack.unpackb(bytes(state["msgpack"])) if "msgpack" in state
                                     else json.loads(bytes(state["json"]).decode()))
        names = msgpack.unpackb(bytes(state["names"]))
        self.items, self.categories = Interner(names["items"]), Interner(names["categories"])
        if self.owns_users:
            self.users.load(names["users"])
        self.covisits.load(state["covisit_keys"], state["covisit_counts"])
        self.popular.load(state["popular_keys"], state["popular_counts"])
        self.item_events = int(state["item_events"][0])
        depth = self.user_items.shape[1]
        self.user_ts, self.user_items = np.zeros(0), np.zeros((0, depth), dtype=np.int64)
        self.user_category, self.user_query = np.zeros(0, dtype=object), np.zeros(0, dtype=object)
        n = len(state["user_ts"])
        self._grow_users(n)
        self.user_ts[:n] = state["user_ts"]
        self.user_items[:n] = state["user_items"][:, :depth] if state["user_items"].shape[1] >= depth else -1
        self.user_category[:n] = names["user_category"]
        self.user_query[:n] = names["user_query"]

    def _load_tables(self, data: dict) -> None:
        """The nested tables of nudge before the catalog was columnar: {"covisits": {item: {item: n}},
        "popular": {category or "": {item: n}}, "users": {user: {"items": [[item, ts], ...], ...}}}."""
        for table, counts, row_id in (
            ("covisits", self.covisits, lambda key: self.items.intern([key])[0]),
            ("popular", self.popular, lambda key: ALL if key == "" else self.categories.intern([key])[0] + 1),
        ):
            rows, cols, values = [], [], []
            for key, ranked in data[table].items():
                row = row_id(key)
                for item, n in ranked.items():
                    rows.append(row)
                    cols.append(self.items.intern([item])[0])
                    values.append(n)
            loaded = PairCounts.of(np.array(rows, np.int64), np.array(cols, np.int64), np.array(values, np.int64))
            counts.load(*loaded.state())
        users = data["users"]
        uids = (self.users.intern(list(users)).tolist() if self.owns_users
                else [self.users.find(name) for name in users])
        self._grow_users(len(self.users))
        depth = self.user_items.shape[1]
        for uid, state in zip(uids, users.values()):
            if uid is None:  # not a user of the shared numbering (erased since)
                continue
            self.user_ts[uid] = state["ts"]
            recent = [self.items.intern([item])[0] for item, _ in state["items"]][::-1][:depth]
            self.user_items[uid, :len(recent)] = recent
            self.user_category[uid], self.user_query[uid] = state.get("category"), state.get("query")


def _nested(keys: np.ndarray, values: np.ndarray, row_names: list, col_names: list) -> dict:
    out: dict = {}
    for key, value in zip(keys.tolist(), values.tolist()):
        out.setdefault(f"{row_names[key >> 32]}", {})[col_names[key & 0xFFFFFFFF]] = value
    return out
