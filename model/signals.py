"""The signal policy of one tenant: cooldown, daily cap, holdout, discount rules, and the intervention bandits
(sticky variants, a traffic floor, even shares until each variant has outcomes).

Everything here is rebuilt from the durable signal log at start-up (:meth:`SignalPolicy.restore`);
the policy itself does no I/O.
"""
from __future__ import annotations

import hashlib
import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from .bandit import ThompsonBandit
from .catalog import ItemCatalog
from .config import DEFAULT_POLICY, INTENTS, TenantConfig
from .payloads import build_payload, signal_variants

_DAY_S = 86400.0


@dataclass(frozen=True)
class Decision:
    """A signal sent, or withheld from a holdout user (recorded all the same, for measured uplift)."""

    signal_id: str
    user_id: str
    intent: str
    type: str
    variant: str
    payload: dict[str, Any]
    score: float
    created_at: float
    withheld: bool

    def signal(self) -> dict[str, Any]:
        """The signal as third parties receive it (its payload is the decision's own: read, don't change it).

        Built field by field: ``dataclasses.asdict`` copied the payload deeply, and a score shows every user's
        open signal, so that copy was a quarter of a worker's time once most users had one."""
        return {"signal_id": self.signal_id, "user_id": self.user_id, "intent": self.intent, "type": self.type,
                "variant": self.variant, "payload": self.payload, "score": self.score, "created_at": self.created_at}


@dataclass(frozen=True)
class Resolution:
    """A decision's outcome: converted within the signal horizon or not."""

    signal_id: str
    converted: bool
    at: float


@dataclass
class _Open:
    user_id: str
    intent: str
    variant: str
    created_at: float
    withheld: bool


def in_holdout(user_id: str, config: TenantConfig) -> bool:
    """A stable, uniformly spread draw per (seed, user): the same user is always in or out."""
    digest = hashlib.blake2b(f"{config.seed}:{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < config.holdout_share


class SignalPolicy:
    """Decides who gets which signal, and learns which variant converts best.

    Parameters
    ----------
    config : the tenant's config (thresholds and policy fields).
    backend : array backend of the bandits' Thompson draws.
    """

    def __init__(self, config: TenantConfig, backend: str = "numpy"):
        self.config = config
        self.backend = backend
        self.recent: dict[str, list[float]] = defaultdict(list)  # user -> decision times within a day
        self.open: dict[str, _Open] = {}
        self.open_by_user: dict[str, list[str]] = defaultdict(list)
        # The signal a user was sent last and that is still open: what a score answer shows for them.
        self.open_signal: dict[str, Decision] = {}
        # user -> intent -> (variant, until): a user keeps the variant first shown within the signal horizon.
        self.sticky: dict[str, dict[str, tuple[str, float]]] = defaultdict(dict)
        self.bandits: dict[str, tuple[list[str], ThompsonBandit]] = {}
        for i, intent in enumerate(INTENTS):
            variants = signal_variants(self.signal_type(intent), config)
            self.bandits[intent] = (variants, ThompsonBandit(len(variants), seed=config.seed + i, backend=backend))

    def reconfigured(self, config: TenantConfig) -> "SignalPolicy":
        """The same policy state (cooldowns, open decisions, bandit posteriors) under a new config.

        Arms whose variant the new config still has keep their posterior; new variants start fresh.
        """
        new = SignalPolicy(config, backend=self.backend)
        new.recent, new.open, new.open_by_user = self.recent, self.open, self.open_by_user
        new.open_signal, new.sticky = self.open_signal, self.sticky
        for intent, (variants, bandit) in self.bandits.items():
            new_variants, new_bandit = new.bandits[intent]
            for arm, variant in enumerate(variants):
                if variant in new_variants:
                    i = new_variants.index(variant)
                    new_bandit.alpha[i], new_bandit.beta[i] = bandit.alpha[arm], bandit.beta[arm]
        return new

    def signal_type(self, intent: str) -> str:
        return self.config.policy.get(intent, DEFAULT_POLICY[intent])

    # ---- deciding ------------------------------------------------------------------------------

    def allowed(self, user_id: str, now: float) -> bool:
        """Whether cooldown and daily cap allow a decision for this user now."""
        times = [t for t in self.recent.get(user_id, ()) if now - t < _DAY_S]
        if user_id in self.recent:
            self.recent[user_id] = times
        if times and now - max(times) < self.config.cooldown_s:
            return False
        return len(times) < self.config.daily_cap

    def decide(
        self, user_ids: Iterable[str], intents: np.ndarray, scores: np.ndarray, now: float, catalog: ItemCatalog,
        hints: list[dict[str, str] | None] | None = None, no_discount: np.ndarray | None = None,
    ) -> list[Decision | None]:
        """One entry per user: a decision, or None (no intent, cooling down, capped, or nothing to send).

        ``no_discount`` marks users who must not get ``offer_discount`` now (they just converted).
        """
        user_ids = list(user_ids)
        with_intent = np.flatnonzero(np.asarray(intents) >= 0).tolist()  # most users have none: no loop over them
        eligible = [
            i for i in with_intent
            if self.allowed(user_ids[i], now)
            and not (no_discount is not None and no_discount[i]
                     and self.signal_type(INTENTS[int(intents[i])]) == "offer_discount")
        ]
        variant_of = self._variants(user_ids, intents, eligible, now)
        out: list[Decision | None] = [None] * len(user_ids)
        for i in eligible:
            intent, user_id = INTENTS[int(intents[i])], user_ids[i]
            signal_type = self.signal_type(intent)
            payload = build_payload(
                signal_type, variant_of[i], intent, user_id, self.config, catalog, hints[i] if hints else None
            )
            if payload is None:
                continue
            decision = Decision(
                signal_id="sig_" + uuid.uuid4().hex, user_id=user_id, intent=intent, type=signal_type,
                variant=variant_of[i], payload=payload, score=round(float(scores[i]), 6), created_at=now,
                withheld=in_holdout(user_id, self.config),
            )
            self._remember(decision)
            out[i] = decision
        return out

    def _variants(self, user_ids: list[str], intents: np.ndarray, eligible: list[int], now: float) -> dict[int, str]:
        """The variant for each eligible user: the one they were shown within the horizon, else the bandit's."""
        out: dict[int, str] = {}
        cfg = self.config
        for intent_index in sorted({int(intents[i]) for i in eligible}):
            intent = INTENTS[intent_index]
            variants, bandit = self.bandits[intent]
            rows = []
            for i in (i for i in eligible if intents[i] == intent_index):
                kept = self.sticky.get(user_ids[i], {}).get(intent)
                if kept is not None and kept[1] >= now and kept[0] in variants:
                    out[i] = kept[0]
                else:
                    rows.append(i)
            # One batched draw per intent, not one per user.
            arms = bandit.choose(len(rows), floor_share=cfg.bandit_floor_share, min_outcomes=cfg.bandit_min_outcomes)
            for i, arm in zip(rows, arms):
                out[i] = variants[int(arm)]
        return out

    def _remember(self, d: Decision) -> None:
        self.recent[d.user_id].append(d.created_at)
        self.open[d.signal_id] = _Open(d.user_id, d.intent, d.variant, d.created_at, d.withheld)
        self.open_by_user[d.user_id].append(d.signal_id)
        self.sticky[d.user_id][d.intent] = (d.variant, d.created_at + self.config.signal_horizon_s)
        if not d.withheld:
            self.open_signal[d.user_id] = d

    def shown_signal(self, user_id: str) -> dict[str, Any] | None:
        """The user's latest signal that is still open (sent at ingest or at a score), as third parties get it."""
        d = self.open_signal.get(user_id)
        return d.signal() if d is not None and d.signal_id in self.open else None

    # ---- outcomes ------------------------------------------------------------------------------

    def conversions(self, user_ids: Iterable[str], ts: Iterable[float]) -> list[Resolution]:
        """Conversion events: each converts the user's open decisions made at most one horizon before it."""
        out = []
        for user_id, t in zip(user_ids, ts):
            for signal_id in list(self.open_by_user.get(user_id, ())):
                o = self.open.get(signal_id)
                if o is not None and o.created_at - 1.0 <= t <= o.created_at + self.config.signal_horizon_s:
                    out.append(self.resolve(signal_id, True, float(t)))
        return out

    def expire(self, now: float) -> list[Resolution]:
        """Decisions whose horizon has passed without a conversion (and variants no longer sticky)."""
        horizon = self.config.signal_horizon_s
        due = [sid for sid, o in self.open.items() if now > o.created_at + horizon]
        for user_id in [u for u, kept in self.sticky.items() if all(until < now for _, until in kept.values())]:
            del self.sticky[user_id]
        return [self.resolve(sid, False, now) for sid in due]

    def resolve(self, signal_id: str, converted: bool, at: float) -> Resolution:
        """Close an open decision and reward its variant (holdout decisions teach no bandit)."""
        o = self.open.pop(signal_id)
        shown = self.open_signal.get(o.user_id)
        if shown is not None and shown.signal_id == signal_id:
            del self.open_signal[o.user_id]
        ids = self.open_by_user.get(o.user_id)
        if ids is not None:
            ids.remove(signal_id)
            if not ids:
                del self.open_by_user[o.user_id]
        if not o.withheld:
            self._reward(o.intent, o.variant, 1.0 if converted else 0.0)
        return Resolution(signal_id, converted, at)

    def _reward(self, intent: str, variant: str, reward: float) -> None:
        variants, bandit = self.bandits[intent]
        if variant in variants:  # tiers changed since: the old variant teaches nothing now
            bandit.update(np.array([variants.index(variant)]), np.array([reward]))

    def erase(self, user_id: str) -> None:
        self.recent.pop(user_id, None)
        self.open_signal.pop(user_id, None)
        self.sticky.pop(user_id, None)
        for signal_id in self.open_by_user.pop(user_id, ()):
            self.open.pop(signal_id, None)

    # ---- restart -------------------------------------------------------------------------------

    def restore(self, recent: Iterable[tuple], rewards: Iterable[tuple], open_signals: Iterable[dict] = ()) -> None:
        """Rebuild from the signal log.

        ``recent``: (signal_id, user_id, intent, variant, created_at, withheld, resolved) of the last
        day's and all unresolved decisions, in log order; ``rewards``: (intent, variant, successes, failures)
        of resolved, non-withheld decisions; ``open_signals``: the unresolved, sent signals as delivered.
        """
        for signal_id, user_id, intent, variant, created_at, withheld, resolved in recent:
            self.recent[user_id].append(created_at)
            self.sticky[user_id][intent] = (variant, created_at + self.config.signal_horizon_s)
            if not resolved:
                self.open[signal_id] = _Open(user_id, intent, variant, created_at, bool(withheld))
                self.open_by_user[user_id].append(signal_id)
        for signal in open_signals:
            if signal["signal_id"] in self.open:
                self.open_signal[signal["user_id"]] = Decision(**signal, withheld=False)
        for intent, variant, successes, failures in rewards:
            if intent in self.bandits and variant in self.bandits[intent][0]:
                variants, bandit = self.bandits[intent]
                arm = variants.index(variant)
                bandit.alpha[arm] += successes
                bandit.beta[arm] += failures

    def bandit_report(self) -> dict[str, Any]:
        """Per intent: its signal type, the variants, their posteriors, and how traffic is allocated now."""
        cfg = self.config
        return {
            intent: {"type": self.signal_type(intent), "variants": variants, **bandit.posterior(),
                     "allocation": "even" if bandit.warming_up(cfg.bandit_min_outcomes) else "thompson",
                     "floor_share": cfg.bandit_floor_share, "min_outcomes": cfg.bandit_min_outcomes}
            for intent, (variants, bandit) in self.bandits.items()
        }
