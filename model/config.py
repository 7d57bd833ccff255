"""A tenant's engine configuration: vocabulary, priors, horizons, half-lives (validated when built)."""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

DEFAULT_ACTIONS = (
    "view",
    "search",
    "favorite",
    "add_to_cart",
    "remove_from_cart",
    "begin_checkout",
    "purchase",
    "help_view",
    "form_start",
)
DEFAULT_PRIOR_MEANS = {
    "view": 0.2,
    "search": 0.1,
    "favorite": 0.3,
    "add_to_cart": 0.5,
    "remove_from_cart": 0.1,
    "begin_checkout": 0.7,
    "purchase": 1.0,
    "help_view": 0.15,
    "form_start": 0.25,
}
# A prior mean of exactly 1 would make the Beta degenerate; the design clips it here.
MAX_PRIOR_MEAN = 0.99
FALLBACK_PRIOR_MEAN = 0.1
INTENTS = ("purchase_likely", "cart_abandon_risk", "information_seeking", "needs_help", "form_intent")
SIGNAL_TYPES = ("offer_discount", "recommend_product", "recommend_content", "proactive_support", "automated_workflow")
DEFAULT_THRESHOLDS = {
    "purchase_likely": 0.5,
    "cart_abandon_risk": 0.6,
    "information_seeking": 0.4,
    "needs_help": 0.3,
    "form_intent": 0.4,
}
DEFAULT_POLICY = {
    "purchase_likely": "recommend_product",
    "cart_abandon_risk": "offer_discount",
    "information_seeking": "recommend_content",
    "needs_help": "proactive_support",
    "form_intent": "automated_workflow",
}
_ACTION_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_DAY_S = 86400.0


class ConfigError(ValueError):
    """A configuration value breaks a rule; ``problems`` lists (field, reason) pairs."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{f}: {r}" for f, r in problems))


@dataclass(frozen=True)
class TenantConfig:
    """How one tenant's actions are weighted.

    Parameters
    ----------
    actions : the vocabulary, in code order.
    conversion_action : the action that counts as a conversion.
    prior_means : heuristic prior mean per action (others take ``FALLBACK_PRIOR_MEAN``).
    prior_strength : pseudo-count of the Beta priors.
    horizon_s : an action is a success when a conversion follows within this many seconds.
    forget_half_life_s : evidence halves its weight after this much event time (drift).
    recency_half_life_s : an event's contribution to the score halves with this age.
    window_size : events kept per user (K).
    session_gap_s : a gap longer than this starts a new session.
    allowed_lateness_s : the watermark trails the newest event time by this much.
    allow_backfill : accept event times older than 7 days.
    segments : optional anonymized segment names that split the contexts.
    seed : seed of the Thompson draws.

    The signal policy (none of it changes the engine's state):

    thresholds : per intent, the intent score at which it fires.
    min_score : no signal for a user whose engagement score is below this.
    policy : per intent, the signal type it triggers, or "none".
    discount_tiers_pct : the variants of ``offer_discount`` the intervention bandit chooses among.
    discount_codes : optional code per tier (keys are the tiers as strings).
    content_map : content ids per category, intent or "default" (first match wins, in that order).
    support_channel, workflow : what ``proactive_support`` and ``automated_workflow`` signals name.
    recommendations : items per ``recommend_product`` signal.
    cooldown_s : no second signal to a user within this many seconds.
    daily_cap : most signals per user per 24 hours.
    holdout_share : share of users (by a hash of their id) never signalled, for measured uplift.
    signal_horizon_s : a conversion within this long after a signal is attributed to it.
    cart_idle_s : a cart counts as abandoned once its user has done nothing for this long.
    discount_band : (low, high) of P(conversion within 60 min) between which a user is undecided: discounts go
        to them only, not to users about to buy anyway nor to those nearly sure not to.
    quiet_after_conversion_s : no discount to a user who converted within this long.
    bandit_floor_share : every variant keeps at least this share of its intent's traffic.
    bandit_min_outcomes : variants share traffic evenly until each has this many outcomes.
    """

    actions: tuple[str, ...] = DEFAULT_ACTIONS
    conversion_action: str = "purchase"
    prior_means: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_PRIOR_MEANS))
    prior_strength: float = 10.0
    horizon_s: float = 3600.0
    forget_half_life_s: float = 7 * _DAY_S
    recency_half_life_s: float = 1800.0
    window_size: int = 32
    session_gap_s: float = 1800.0
    allowed_lateness_s: float = 300.0
    allow_backfill: bool = False
    segments: tuple[str, ...] = ()
    seed: int = 0
    thresholds: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    min_score: float = 0.0
    policy: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_POLICY))
    discount_tiers_pct: tuple[float, ...] = (5.0, 10.0, 15.0)
    discount_codes: Mapping[str, str] = field(default_factory=dict)
    content_map: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    support_channel: str = "chat"
    workflow: str = "prefill_form"
    recommendations: int = 5
    cooldown_s: float = 1800.0
    daily_cap: int = 3
    holdout_share: float = 0.1
    signal_horizon_s: float = 3600.0
    cart_idle_s: float = 900.0
    discount_band: tuple[float, float] = (0.02, 0.5)
    quiet_after_conversion_s: float = 86400.0
    bandit_floor_share: float = 0.05
    bandit_min_outcomes: int = 30

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise ConfigError(problems)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TenantConfig":
        """Build from a plain mapping (JSON, msgpack, tests); unknown keys and wrong types are errors."""
        if not isinstance(data, Mapping):
            raise ConfigError([("config", "must be an object")])
        known = {f.name: f for f in dataclasses.fields(cls)}
        problems = [(str(key)[:64], "unknown setting") for key in data if key not in known]
        values: dict[str, Any] = {}
        for key, raw in data.items():
            if key not in known:
                continue
            converted, reason = _convert(key, raw)
            if reason:
                problems.append((key, reason))
            else:
                values[key] = converted
        if problems:
            raise ConfigError(problems)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly form (lists, not tuples)."""
        out = dataclasses.asdict(self)
        out["actions"] = list(self.actions)
        out["segments"] = list(self.segments)
        out["prior_means"] = dict(self.prior_means)
        out["thresholds"] = dict(self.thresholds)
        out["policy"] = dict(self.policy)
        out["discount_tiers_pct"] = list(self.discount_tiers_pct)
        out["discount_band"] = list(self.discount_band)
        out["discount_codes"] = dict(self.discount_codes)
        out["content_map"] = {k: list(v) for k, v in self.content_map.items()}
        return out

    def engine_dict(self) -> dict[str, Any]:
        """The settings that shape the engine's state (a change means rebuilding it from the log)."""
        return {k: v for k, v in self.to_dict().items() if k in ENGINE_FIELDS}

    def prior_mean(self, action: str) -> float:
        """The prior mean of ``action`` after clipping."""
        return min(MAX_PRIOR_MEAN, float(self.prior_means.get(action, FALLBACK_PRIOR_MEAN)))

    @property
    def conversion_code(self) -> int:
        return self.actions.index(self.conversion_action)


ENGINE_FIELDS = (
    "actions", "conversion_action", "prior_means", "prior_strength", "horizon_s", "forget_half_life_s",
    "recency_half_life_s", "window_size", "session_gap_s", "allowed_lateness_s", "allow_backfill", "segments", "seed",
)

_NUMBER_FIELDS = {
    "cart_idle_s",
    "quiet_after_conversion_s",
    "bandit_floor_share",
    "min_score",
    "cooldown_s",
    "holdout_share",
    "signal_horizon_s",
    "prior_strength",
    "horizon_s",
    "forget_half_life_s",
    "recency_half_life_s",
    "session_gap_s",
    "allowed_lateness_s",
}


def _is_number(x: Any) -> bool:
    """An int or float that converts to a float (JSON integers can have hundreds of digits)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    return not isinstance(x, int) or abs(x) < 1e308


def _convert(key: str, raw: Any) -> tuple[Any, str | None]:
    if key in ("actions", "segments"):
        if not isinstance(raw, (list, tuple)) or not all(isinstance(x, str) for x in raw):
            return None, "must be a list of strings"
        return tuple(raw), None
    if key == "prior_means":
        if not isinstance(raw, Mapping) or not all(isinstance(k, str) and _is_number(v) for k, v in raw.items()):
            return None, "must map action names to numbers"
        return dict(raw), None
    if key in _NUMBER_FIELDS:
        return (float(raw), None) if _is_number(raw) else (None, "must be a number")
    if key in ("thresholds",):
        if not isinstance(raw, Mapping) or not all(isinstance(k, str) and _is_number(v) for k, v in raw.items()):
            return None, "must map intent names to numbers"
        return dict(raw), None
    if key in ("policy", "discount_codes"):
        if not isinstance(raw, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
            return None, "must map names to strings"
        return dict(raw), None
    if key == "discount_band":
        if not isinstance(raw, (list, tuple)) or len(raw) != 2 or not all(_is_number(x) for x in raw):
            return None, "must be [low, high], two probabilities"
        return (float(raw[0]), float(raw[1])), None
    if key == "discount_tiers_pct":
        if not isinstance(raw, (list, tuple)) or not all(_is_number(x) for x in raw):
            return None, "must be a list of numbers"
        return tuple(float(x) for x in raw), None
    if key == "content_map":
        if not isinstance(raw, Mapping) or not all(
            isinstance(k, str) and isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v)
            for k, v in raw.items()
        ):
            return None, "must map categories, intents or 'default' to lists of content ids"
        return {k: tuple(v) for k, v in raw.items()}, None
    if key in ("window_size", "seed", "recommendations", "daily_cap", "bandit_min_outcomes"):
        return (raw, None) if isinstance(raw, int) and not isinstance(raw, bool) else (None, "must be an integer")
    if key == "allow_backfill":
        return (raw, None) if isinstance(raw, bool) else (None, "must be true or false")
    return raw, None if isinstance(raw, str) else "must be a string"


def _problems(c: TenantConfig) -> list[tuple[str, str]]:
    p: list[tuple[str, str]] = []
    if not 1 <= len(c.actions) <= 64:
        p.append(("actions", "must hold 1 to 64 actions"))
    bad = [a for a in c.actions if not _ACTION_NAME.match(a)]
    if bad:
        p.append(("actions", f"names must match {_ACTION_NAME.pattern}: {bad[:5]}"))
    if len(set(c.actions)) != len(c.actions):
        p.append(("actions", "names must be unique"))
    if c.conversion_action not in c.actions:
        p.append(("conversion_action", f"{c.conversion_action!r} is not one of the actions"))
    unknown = [a for a in c.prior_means if a not in c.actions]
    if unknown:
        p.append(("prior_means", f"actions not in the vocabulary: {unknown[:5]}"))
    if any(not (math.isfinite(v) and 0 < v <= 1) for v in c.prior_means.values()):
        p.append(("prior_means", "each mean must lie in (0, 1]"))
    ranges = {
        "prior_strength": (1e-3, 1e6),
        "horizon_s": (1.0, 7 * _DAY_S),
        "forget_half_life_s": (60.0, 3650 * _DAY_S),
        "recency_half_life_s": (1.0, 3650 * _DAY_S),
        "session_gap_s": (1.0, _DAY_S),
        "allowed_lateness_s": (0.0, _DAY_S),
    }
    for name, (lo, hi) in ranges.items():
        v = getattr(c, name)
        if not (_is_number(v) and math.isfinite(v) and lo <= v <= hi):
            p.append((name, f"must lie in [{lo:g}, {hi:g}], got {v!r}"))
    if not (isinstance(c.window_size, int) and 1 <= c.window_size <= 256):
        p.append(("window_size", f"must be an integer in [1, 256], got {c.window_size!r}"))
    if len(c.segments) > 32 or len(set(c.segments)) != len(c.segments):
        p.append(("segments", "at most 32 unique names"))
    if any(not 1 <= len(s) <= 64 for s in c.segments):
        p.append(("segments", "each name must be 1 to 64 characters"))
    if not (isinstance(c.seed, int) and 0 <= c.seed < 2**63):
        p.append(("seed", "must be an integer in [0, 2^63)"))
    return p + _policy_problems(c)


def _policy_problems(c: TenantConfig) -> list[tuple[str, str]]:
    p: list[tuple[str, str]] = []
    unknown = [k for k in c.thresholds if k not in INTENTS]
    if unknown:
        p.append(("thresholds", f"unknown intents {unknown[:5]}; intents are {list(INTENTS)}"))
    if any(not (math.isfinite(v) and 0 <= v <= 1) for v in c.thresholds.values()):
        p.append(("thresholds", "each threshold must lie in [0, 1]"))
    unknown = [k for k in c.policy if k not in INTENTS]
    if unknown:
        p.append(("policy", f"unknown intents {unknown[:5]}; intents are {list(INTENTS)}"))
    bad = sorted({v for v in c.policy.values() if v not in (*SIGNAL_TYPES, "none")})
    if bad:
        p.append(("policy", f"unknown signal types {bad[:5]}; use one of {list(SIGNAL_TYPES)} or 'none'"))
    if not 1 <= len(c.discount_tiers_pct) <= 10 or any(not 0 < t <= 100 for t in c.discount_tiers_pct):
        p.append(("discount_tiers_pct", "1 to 10 tiers, each in (0, 100]"))
    if len(c.content_map) > 10_000 or any(len(v) > 100 for v in c.content_map.values()):
        p.append(("content_map", "at most 10,000 keys of at most 100 content ids each"))
    for name in ("support_channel", "workflow"):
        if not 1 <= len(getattr(c, name)) <= 64:
            p.append((name, "must be 1 to 64 characters"))
    ranges = {"min_score": (0.0, 1.0), "holdout_share": (0.0, 0.9), "cooldown_s": (0.0, 30 * _DAY_S),
              "signal_horizon_s": (60.0, 30 * _DAY_S), "cart_idle_s": (0.0, 30 * _DAY_S),
              "quiet_after_conversion_s": (0.0, 365 * _DAY_S), "bandit_floor_share": (0.0, 0.2)}
    for name, (lo, hi) in ranges.items():
        v = getattr(c, name)
        if not (_is_number(v) and math.isfinite(v) and lo <= v <= hi):
            p.append((name, f"must lie in [{lo:g}, {hi:g}], got {v!r}"))
    if not (isinstance(c.recommendations, int) and 1 <= c.recommendations <= 100):
        p.append(("recommendations", "must be an integer in [1, 100]"))
    if not (isinstance(c.daily_cap, int) and 0 <= c.daily_cap <= 1000):
        p.append(("daily_cap", "must be an integer in [0, 1000]"))
    if not (isinstance(c.bandit_min_outcomes, int) and 0 <= c.bandit_min_outcomes <= 100_000):
        p.append(("bandit_min_outcomes", "must be an integer in [0, 100000]"))
    low, high = c.discount_band
    if not (0.0 <= low < high <= 1.0):
        p.append(("discount_band", f"must be [low, high] with 0 <= low < high <= 1, got {list(c.discount_band)}"))
    return p
