"""Memory one tenant's engine holds per user (what ``max_users_per_tenant`` bounds).

    python -m loadtests.bench_user_memory [--users 200000] [--events-per-user 3]

Feeds an engine (default config, NumPy backend) ``--users`` new users with a few events each, carrying items and
categories as a shop's events do, after a warm-up of 50,000 users, and prints the growth of the process's
resident memory per user.
"""
from __future__ import annotations

import argparse
import gc
import time

import numpy as np

from model.config import TenantConfig
from model.engine import Engine
from server.validation import parse_events

ACTIONS = ["view", "view", "search", "add_to_cart", "view", "purchase"]


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def feed(engine: Engine, config: TenantConfig, first: int, last: int, per_user: int, seq: int) -> int:
    for start in range(first, last, 10_000):
        now = time.time()
        events = [{"user_id": f"user-{u:08d}", "action": ACTIONS[(u + j) % len(ACTIONS)], "ts": now - 100 + j,
                   "item_id": f"i{(u * 7 + j) % 5000}", "category": f"c{u % 50}"}
                  for u in range(start, min(last, start + 10_000)) for j in range(per_user)]
        batch = parse_events({"events": events}, config, now, len(events))
        engine.apply(batch, np.arange(seq, seq + len(batch)))
        seq += len(batch)
    return seq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--events-per-user", type=int, default=3)
    args = parser.parse_args()
    config = TenantConfig()
    engine = Engine(config, backend="numpy")
    warm_up = 50_000
    seq = feed(engine, config, 0, warm_up, args.events_per_user, 0)
    gc.collect()
    before = rss_mib()
    feed(engine, config, warm_up, warm_up + args.users, args.events_per_user, seq)
    gc.collect()
    grown = rss_mib() - before
    print(f"{args.users:,} users, {args.events_per_user} events each: resident memory +{grown:,.0f} MiB, "
          f"{grown * 1024 / args.users:.2f} KiB per user")


if __name__ == "__main__":
    main()
