"""Replaying the signal policy on an event file: who would have been sent what, under a tenant's config.

The events go through the engine in time steps of ``step_s``. After each step, the users active in it are
decided for (as serving decides at ingest), and so are the users whose carts became idle in it (as the
server's sweeper does). Conversions resolve the open decisions; the rest expire after the signal horizon.
The report counts, per intent and signal type, how many users and how many carts each fired for.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .config import INTENTS, TenantConfig
from .decisions import decide, newly_idle, predict
from .engine import Engine
from .events import EventBatch
from .signals import SignalPolicy


@dataclass(frozen=True)
class PolicyReport:
    events: int
    users: int
    users_with_cart: int
    rows: list[dict[str, Any]]  # per intent: signal type, decisions, users, share of users, carts, share of carts

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def table(self) -> str:
        lines = ["| intent | signal | decisions (sent + withheld) | users | share of users | carts | share of carts |",
                 "|---|---|---|---|---|---|---|"]
        for r in self.rows:
            carts = "– | –" if r["carts"] is None else f"{r['carts']} | {r['share_of_carts']:.2%}"
            lines.append(f"| {r['intent']} | {r['type']} | {r['decisions']} | {r['users']} | "
                         f"{r['share_of_users']:.2%} | {carts} |")
        return "\n".join(lines)


def replay_policy(batch: EventBatch, config: TenantConfig, *, step_s: float = 300.0,
                  progress: Callable[[int, int], None] | None = None) -> PolicyReport:
    """Run the signal policy over a time-sorted batch under ``config``."""
    engine, policy = Engine(config), SignalPolicy(config)
    fired: dict[str, set[str]] = {intent: set() for intent in INTENTS}
    decisions: dict[str, int] = dict.fromkeys(INTENTS, 0)
    steps = np.floor(batch.ts / step_s)
    bounds = np.r_[0, np.flatnonzero(np.diff(steps)) + 1, len(batch)]
    swept_to = float(batch.ts[0]) if len(batch) else 0.0
    conversion = config.conversion_code
    for k, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        step = batch.take(slice(lo, hi))
        engine.apply(step)
        now = float(step.ts.max())
        converted = step.actions == conversion
        policy.conversions(step.user_ids[converted], step.ts[converted])
        policy.expire(now)
        active = list(dict.fromkeys(step.user_ids[step.ts >= now - config.session_gap_s]))
        idle = [u for u in newly_idle(engine, swept_to, now) if u not in set(active)]
        swept_to = now
        for users in (active, idle):
            if not users:
                continue
            for d in decide(engine, policy, users, predict(engine, None, users, now), now):
                if d is not None:
                    decisions[d.intent] += 1
                    fired[d.intent].add(d.user_id)
        if progress is not None and (k % 200 == 0 or hi == len(batch)):
            progress(int(hi), len(batch))
    users = len(set(batch.user_ids))
    cart_code = config.actions.index("add_to_cart") if "add_to_cart" in config.actions else -1
    carts = set(batch.user_ids[batch.actions == cart_code])
    rows = []
    for intent in INTENTS:
        row: dict[str, Any] = {"intent": intent, "type": policy.signal_type(intent), "decisions": decisions[intent],
                               "users": len(fired[intent]), "share_of_users": len(fired[intent]) / max(users, 1)}
        if intent == "cart_abandon_risk" and carts:
            row["carts"] = len(fired[intent] & carts)
            row["share_of_carts"] = row["carts"] / len(carts)
        else:
            row["carts"] = row["share_of_carts"] = None
        rows.append(row)
    return PolicyReport(len(batch), users, len(carts), rows)
