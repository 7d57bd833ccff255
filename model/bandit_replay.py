"""Off-policy evaluation of the Thompson bandit on uniformly random logs, by the replay method.

Replay (Li, Chu, Langford, Wang, WSDM 2011): walk the log in time order; the bandit picks an arm
for each logged impression; when it picks the logged arm, it sees that impression's reward and
learns from it, otherwise the impression is skipped. Under a uniform logging policy this is an
unbiased estimate of the click rate the bandit would have had online.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .bandit import ThompsonBandit
from .uplift import wilson

CAMPAIGNS = ("all", "men", "women")


@dataclass(frozen=True)
class Log:
    arm: np.ndarray
    reward: np.ndarray
    n_arms: int


def load_obd(path: Path) -> Log:
    """One Open Bandit Dataset CSV (random policy), in its time order."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"item_id", "click", "propensity_score"} <= set(rows[0]):
        raise ValueError(f"{path}: not an Open Bandit Dataset file (needs item_id, click, propensity_score)")
    arm = np.array([int(r["item_id"]) for r in rows])
    reward = np.array([int(r["click"]) for r in rows], dtype=np.float64)
    propensity = np.array([float(r["propensity_score"]) for r in rows])
    n_arms = int(arm.max()) + 1
    if not np.allclose(propensity, propensity[0]):
        raise ValueError(f"{path}: the replay method needs uniformly random logs; propensities vary")
    return Log(arm, reward, n_arms)


def replay_bandit(log: Log, seed: int) -> tuple[int, float]:
    """(matched impressions, clicks among them) of one replay of the Thompson bandit."""
    bandit = ThompsonBandit(log.n_arms, seed=seed)
    matched, clicks = 0, 0.0
    for arm, reward in zip(log.arm, log.reward):
        if bandit.choose(1)[0] == arm:
            bandit.update(np.array([arm]), np.array([reward]))
            matched += 1
            clicks += reward
    return matched, clicks


def evaluate_campaigns(data_dir: Path, runs: int = 20) -> list[dict[str, Any]]:
    """Per campaign and pooled: the random policy's click rate and the replayed bandit's, with intervals."""
    out, pooled = [], {"random": [0.0, 0], "ts": [0.0, 0.0]}
    for campaign in CAMPAIGNS:
        path = data_dir / "random" / campaign / f"{campaign}.csv"
        if not path.exists():
            continue
        log = load_obd(path)
        replays = [replay_bandit(log, seed) for seed in range(runs)]
        matched = float(np.mean([m for m, _ in replays]))
        clicks = float(np.mean([c for _, c in replays]))
        random_clicks, random_n = float(log.reward.sum()), len(log.reward)
        pooled["random"][0] += random_clicks
        pooled["random"][1] += random_n
        pooled["ts"][0] += clicks
        pooled["ts"][1] += matched
        out.append(_row(campaign, log.n_arms, random_clicks, random_n, clicks, matched))
    if len(out) > 1:
        out.append(_row("pooled", None, *pooled["random"], *pooled["ts"]))
    return out


def _row(name, n_arms, random_clicks, random_n, ts_clicks, ts_matched) -> dict[str, Any]:
    random_ctr = random_clicks / random_n
    ts_ctr = ts_clicks / ts_matched if ts_matched else float("nan")
    return {
        "campaign": name,
        "arms": n_arms,
        "random_impressions": random_n,
        "random_clicks": random_clicks,
        "random_ctr": random_ctr,
        "random_ctr_ci95": wilson(random_clicks, random_n),
        "ts_matched_impressions": ts_matched,
        "ts_clicks": ts_clicks,
        "ts_ctr": ts_ctr,
        # Intervals from one replay's worth of data: the runs share the same impressions.
        "ts_ctr_ci95": wilson(ts_clicks, ts_matched),
        "ts_over_random": ts_ctr / random_ctr if random_ctr else float("nan"),
    }
