"""Request bodies for nudge's load tests, in msgpack: what the benchmark and the locustfile both send.

Locust-free on purpose (msgpack, random and time only): ``loadtests.bench`` runs where locust is not installed.
"""
from __future__ import annotations

import random
import time

import msgpack

ACTIONS = ["view"] * 6 + ["search", "favorite", "add_to_cart", "remove_from_cart", "purchase", "help_view"]
DEVICES = ["desktop", "mobile", "tablet"]
USERS = 50_000


def _event(rng: random.Random, now: float) -> dict:
    return {
        "user_id": f"u{rng.randrange(USERS)}", "action": rng.choice(ACTIONS), "ts": now - rng.uniform(0, 30),
        "item_id": f"i{rng.randrange(5000)}", "category": f"c{rng.randrange(50)}",
        "context": {"device": rng.choice(DEVICES)},
    }


def events_body(rng: random.Random, n: int, columns: bool) -> bytes:
    """``n`` events, as rows or as columns."""
    now = time.time()
    rows = [_event(rng, now) for _ in range(n)]
    if not columns:
        return msgpack.packb({"events": rows})
    cols = {k: [r[k] for r in rows] for k in ("user_id", "action", "ts", "item_id", "category")}
    cols["device"] = [r["context"]["device"] for r in rows]
    return msgpack.packb({"columns": cols})


def score_body(rng: random.Random, n: int) -> bytes:
    """``n`` users to score (drawn with replacement from the same ``USERS`` the events go to)."""
    return msgpack.packb({"users": [{"user_id": f"u{rng.randrange(USERS)}"} for _ in range(n)]})
