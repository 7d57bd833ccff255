"""Typed answers of the server, as small frozen dataclasses built from the wire dicts."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypedDict

Outcome = Literal["received", "handled", "shown", "clicked", "converted", "dismissed"]


class Context(TypedDict, total=False):
    """An event's ``context``."""

    device: Literal["desktop", "mobile", "tablet", "other"]
    segment: str
    tz_offset_min: int


class PageState(TypedDict, total=False):
    """What the user is looking at, for ``score``: used by the signal payloads."""

    category: str
    query: str
    page: str


@dataclass(frozen=True)
class Signal:
    """An engagement signal, as pulled, delivered by webhook, or shown in a score."""

    signal_id: str
    user_id: str
    type: str
    intent: str
    variant: str
    payload: dict[str, Any]
    score: float
    created_at: float

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Signal:
        return cls(signal_id=d["signal_id"], user_id=str(d["user_id"]), type=d["type"], intent=d["intent"],
                   variant=d["variant"], payload=d.get("payload") or {}, score=float(d["score"]),
                   created_at=float(d["created_at"]))


@dataclass(frozen=True)
class Prediction:
    """``predicted`` of a score: the next action and the chances of a purchase within 5 and 60 minutes."""

    next_action: str
    probs: dict[str, float]
    purchase_5m: float
    purchase_60m: float
    predictor: str  # "transformer" or "markov"

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Prediction:
        return cls(next_action=d["next_action"], probs={k: float(v) for k, v in d["probs"].items()},
                   purchase_5m=float(d["purchase_5m"]), purchase_60m=float(d["purchase_60m"]),
                   predictor=d["predictor"])


@dataclass(frozen=True)
class ScoreResult:
    """One user's answer of ``POST /v1/score``; ``explain`` only when asked for."""

    user_id: str
    score: float
    predicted: Prediction
    signal: Signal | None
    explain: dict[str, Any] | None = None

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> ScoreResult:
        return cls(user_id=str(d["user_id"]), score=float(d["score"]), predicted=Prediction.from_wire(d["predicted"]),
                   signal=Signal.from_wire(d["signal"]) if d.get("signal") else None, explain=d.get("explain"))


@dataclass(frozen=True)
class FeedbackReport:
    """One step of what became of a signal, for ``feedback_many``."""

    signal_id: str
    outcome: Outcome
    ts: float | None = None

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"signal_id": self.signal_id, "outcome": self.outcome}
        if self.ts is not None:
            out["ts"] = self.ts
        return out


@dataclass(frozen=True)
class FeedbackResult:
    accepted: int


@dataclass(frozen=True)
class SignalPage:
    """An answer of ``GET /v1/signals``: pass ``next`` as ``after`` to read on."""

    signals: list[Signal]
    next: str

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> SignalPage:
        return cls(signals=[Signal.from_wire(s) for s in d["signals"]], next=d["next"])


@dataclass(frozen=True)
class RecentAction:
    action: str
    ts: float


@dataclass(frozen=True)
class UserView:
    """``GET /v1/users/{id}``: the user's recent actions and posterior-mean score."""

    user_id: str
    recent_actions: list[RecentAction]
    score: float
    score_kind: str

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> UserView:
        return cls(user_id=str(d["user_id"]), score=float(d["score"]), score_kind=d.get("score_kind", ""),
                   recent_actions=[RecentAction(a["action"], float(a["ts"])) for a in d["recent_actions"]])


@dataclass(frozen=True)
class Stats:
    """What became of every event handed to the client. Nothing leaves ``pending`` but through one of
    ``sent``, ``duplicates``, ``dropped`` or ``failed``."""

    enqueued: int = 0  # events track() took (under drop_newest, also those it dropped at once)
    restored: int = 0  # events found in the spool at start, left there by an earlier client
    sent: int = 0  # events the server stored ("accepted")
    duplicates: int = 0  # events the server had already (the retry of a request whose answer was lost)
    dropped: int = 0  # events discarded by the overflow policy, or unsent at close() without a spool
    failed: int = 0  # events the server refused, or given up on after the last retry
    failed_batches: int = 0  # requests behind those failures
    retries: int = 0  # requests sent again after a retryable failure
    spooled: int = 0  # batch files written to the spool

    @property
    def pending(self) -> int:
        """Events not yet settled: queued, on their way, or waiting in the spool."""
        return self.enqueued + self.restored - self.sent - self.duplicates - self.dropped - self.failed
