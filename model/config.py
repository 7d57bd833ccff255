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
        return out

    def prior_mean(self, action: str) -> float:
        """The prior mean of ``action`` after clipping."""
        return min(MAX_PRIOR_MEAN, float(self.prior_means.get(action, FALLBACK_PRIOR_MEAN)))

    @property
    def conversion_code(self) -> int:
        return self.actions.index(self.conversion_action)


_NUMBER_FIELDS = {
    "prior_strength",
    "horizon_s",
    "forget_half_life_s",
    "recency_half_life_s",
    "session_gap_s",
    "allowed_lateness_s",
}


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


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
    if key in ("window_size", "seed"):
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
    return p
