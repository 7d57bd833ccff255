"""Items, categories and queries seen in the event stream: session co-visitation and popularity for
product recommendations, and each user's latest category, item and query for signal payloads."""
from __future__ import annotations

import json
from collections import Counter

import msgpack
import numpy as np

from .events import EventBatch


class ItemCatalog:
    """Learns which items are viewed together in sessions, and what is popular per category.

    Parameters
    ----------
    session_gap_s : items further apart than this in a user's stream are not co-visited.
    recent_items : how many of a user's latest session items recommendations start from.
    max_neighbors : co-visited items kept per item (the most frequent), so memory stays bounded per item.
    max_popular : items kept per category ranking.
    """

    def __init__(self, session_gap_s: float, recent_items: int = 3, max_neighbors: int = 50, max_popular: int = 200):
        self.session_gap_s = session_gap_s
        self.recent_items = recent_items
        self.max_neighbors = max_neighbors
        self.max_popular = max_popular
        self.covisits: dict[str, Counter] = {}
        self.popular: dict[str, Counter] = {}  # category ("" = all) -> item counts
        self.users: dict[str, dict] = {}  # user -> {"items": [[item, ts], ...], "category", "query", "ts"}

    def observe(self, batch: EventBatch) -> None:
        """Learn from a batch, in order; events without item, category or query are skipped quickly.

        Event by event, so what is learned does not depend on how the stream was batched (a replay of the log
        equals the live state). The loop is written for speed: it runs for every event ingested.
        """
        rows = np.flatnonzero((batch.item_ids != None) | (batch.categories != None) | (batch.queries != None))  # noqa: E711
        if not len(rows):
            return
        users, gap, keep_recent = self.users, self.session_gap_s, self.recent_items - 1
        covisits, popular, neighbors, top = self.covisits, self.popular, self.max_neighbors, self.max_popular
        count = self._count
        for user, item, category, query, ts in zip(
            batch.user_ids[rows].tolist(), batch.item_ids[rows].tolist(), batch.categories[rows].tolist(),
            batch.queries[rows].tolist(), batch.ts[rows].tolist(),
        ):
            state = users.get(user)
            if state is None:
                state = users[user] = {"items": [], "category": None, "query": None, "ts": ts}
            if ts - state["ts"] > gap:
                state["items"] = []  # a new session: earlier items are not co-visited with this one
            if ts > state["ts"]:
                state["ts"] = ts
            if category is not None:
                state["category"] = category
            if query is not None:
                state["query"] = query
            if item is None:
                continue
            recent = state["items"]
            kept = [pair for pair in recent if pair[0] != item]  # the session's other items (at most a few)
            for other, _ in kept:
                count(covisits, item, other, neighbors)
                count(covisits, other, item, neighbors)
            count(popular, "", item, top)
            if category is not None:
                count(popular, category, item, top)
            state["items"] = (kept[-keep_recent:] if keep_recent > 0 else []) + [[item, ts]]

    @staticmethod
    def _count(table: dict[str, Counter], key: str, item: str, keep: int) -> None:
        counts = table.get(key)
        if counts is None:
            counts = table[key] = Counter()
        counts[item] = counts.get(item, 0) + 1
        if len(counts) > 4 * keep:  # amortized: the next prune is 3 x ``keep`` new items away
            table[key] = Counter(dict(counts.most_common(keep)))

    def recommend(self, user: str, n: int, category: str | None = None) -> tuple[list[str], str]:
        """Up to ``n`` items for ``user`` and where they came from: co-visitation, category or overall popularity."""
        state = self.users.get(user)
        seen = {it for it, _ in state["items"]} if state else set()
        scores: Counter = Counter()
        for item, _ in state["items"] if state else ():
            scores.update(self.covisits.get(item, {}))
        picked = [it for it, _ in scores.most_common() if it not in seen][:n]
        if picked:
            return picked, "co_visitation"
        category = category or (state["category"] if state else None)
        for key, source in ((category, "category_popularity"), ("", "popularity")):
            if key is not None and key in self.popular:
                picked = [it for it, _ in self.popular[key].most_common() if it not in seen][:n]
                if picked:
                    return picked, source
        return [], "none"

    def context(self, user: str) -> dict[str, str]:
        """The user's latest category, item and query, where known."""
        state = self.users.get(user)
        if not state:
            return {}
        out = {"category": state["category"], "item_id": state["items"][-1][0] if state["items"] else None,
               "query": state["query"]}
        return {k: v for k, v in out.items() if v is not None}

    def erase(self, user: str) -> None:
        """Forget one user's items; co-visitation and popularity counts are anonymous aggregates."""
        self.users.pop(user, None)

    def state_dict(self) -> dict[str, np.ndarray]:
        # msgpack: a snapshot captures this on the device thread, and it packs twice as fast as JSON.
        blob = msgpack.packb({"covisits": self.covisits, "popular": self.popular, "users": self.users})
        return {"msgpack": np.frombuffer(blob, dtype=np.uint8)}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        if "msgpack" in state:
            data = msgpack.unpackb(bytes(state["msgpack"]))
        else:  # written by an older nudge
            data = json.loads(bytes(state["json"]).decode())
        self.covisits = {k: Counter(v) for k, v in data["covisits"].items()}
        self.popular = {k: Counter(v) for k, v in data["popular"].items()}
        self.users = data["users"]
