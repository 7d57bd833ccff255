"""The commands a worker handles, in order, for the tenants of its shard; each names the tenant it is for.

Commands are data, and so are their results: a host may run its worker in a thread, or send these to another
process. Decisions and resolutions that a command makes travel beside its result (see ``Reply``), so the host writes
them to the signal log in the order they were made.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from model import EventBatch, TenantConfig
from model.signals import Decision, Resolution


@dataclass(frozen=True)
class Open:
    """Start serving a tenant: a fresh engine, advanced to ``engine_state`` (a snapshot's) where one is given, less
    the users erased since it was taken. Replies with a :class:`Opened`."""

    tenant_id: int
    config: TenantConfig
    engine_state: dict[str, np.ndarray] | None = None
    erased: tuple[str, ...] = ()


@dataclass(frozen=True)
class Opened:
    applied_seq: int  # where the log's replay starts
    problem: str | None = None  # why the snapshot was not used: the log alone rebuilds the state
    unreadable: bool = False  # the snapshot cannot be used by any engine: the host sets its file aside


@dataclass(frozen=True)
class RestorePolicy:
    """Rebuild the signal policy from the signal log's rows (see ``SignalPolicy.restore``); ``converted`` maps the
    open signals whose user has converted since, per the event log, to when."""

    tenant_id: int
    recent: list[tuple]
    rewards: list[tuple]
    open_signals: list[dict[str, Any]]
    converted: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Apply:
    """Apply logged events (rows whose sequence number was applied already are skipped). ``live``: also resolve
    conversions and decide for the users an intent could fire for; a replay only learns. Replies with
    :class:`Applied`."""

    tenant_id: int
    batch: EventBatch
    seqs: np.ndarray
    config: TenantConfig  # the config the events were validated under
    live: bool = True


@dataclass(frozen=True)
class Applied:
    events: int
    applied_seq: int
    users: int
    seconds: float


@dataclass(frozen=True)
class Score:
    """Score users, with each one's hints (or None), and decide for them at ``now`` (None: when the command runs,
    after the events applied before it). Replies with a :class:`Scored`."""

    tenant_id: int
    user_ids: list[str]
    hints: list[dict[str, str] | None]
    now: float | None = None


@dataclass(frozen=True)
class Scored:
    """What a score answers: its rows, packed where they were made, and what the host counts. Only this crosses a
    worker process's pipe: the arrays the rows came from stay in the worker."""

    packed: list[bytes]  # the rows in request order, packed by the worker that made them (score_rows.packed_results)
    decided: list[int]  # the rows whose user was decided for now: their reply's decisions, in order
    by_model: int  # how many users the Transformer predicted for (the Markov chain the rest)

    def rows(self) -> list[dict[str, Any]]:
        """The rows as dicts (for tests and tools; the server splices the packed rows as they are)."""
        return [msgpack.unpackb(row) for row in self.packed]


@dataclass(frozen=True)
class Explain:
    """Per user: known or not, context, recent window with ages at ``now``."""

    tenant_id: int
    user_ids: list[str]
    now: float


@dataclass(frozen=True)
class View:
    """One user's recent actions and posterior-mean score at ``now``, or None for an unknown user."""

    tenant_id: int
    user_id: str
    now: float


@dataclass(frozen=True)
class SampleUsers:
    """(at most ``limit`` of the tenant's users, a systematic sample; how many it has)."""

    tenant_id: int
    limit: int


@dataclass(frozen=True)
class PosteriorScores:
    """The users' posterior-mean scores at ``now`` (no draws, no decisions), as an array."""

    tenant_id: int
    user_ids: list[str]
    now: float


@dataclass(frozen=True)
class CountNewUsers:
    """(users known, users ``user_ids`` would add) when that passes ``limit``; None when it fits."""

    tenant_id: int
    user_ids: list[str]
    limit: int


@dataclass(frozen=True)
class Feedback:
    """Outcomes reported by the tenant: (signal_id, at) of signals that converted; resolves those still open."""

    tenant_id: int
    converted: list[tuple[str, float]]


@dataclass(frozen=True)
class Expire:
    """Close the decisions whose horizon ended before ``now`` as not converted."""

    tenant_id: int
    now: float


@dataclass(frozen=True)
class DecideIdle:
    """Decide for users whose last event became ``cart_idle_s`` old in (since, until]."""

    tenant_id: int
    since: float
    until: float


@dataclass(frozen=True)
class Erase:
    """Forget a user in the engine and the policy (and in an engine being rebuilt); replies whether it was known."""

    tenant_id: int
    user_id: str


@dataclass(frozen=True)
class Reconfigure:
    """Serve under ``config`` whose engine settings equal the live engine's: only the policy's settings change."""

    tenant_id: int
    config: TenantConfig


@dataclass(frozen=True)
class Rebuilding:
    """An engine is being rebuilt from the log for a config change (``started``), or no longer is: erasures are
    remembered meanwhile, to be made again in the rebuilt engine before it serves."""

    tenant_id: int
    started: bool


@dataclass(frozen=True)
class Swap:
    """Serve ``engine`` (rebuilt under ``config`` and caught up with the log) from now on, with the erasures made
    while it was rebuilt."""

    tenant_id: int
    engine: Any  # model.Engine
    config: TenantConfig


@dataclass(frozen=True)
class Snapshot:
    """Replies (engine capture, applied_seq, engine settings) for a snapshot file."""

    tenant_id: int


@dataclass(frozen=True)
class ServeModel:
    """Predict with ``predictor`` (None: the Markov chain) from the next command on."""

    tenant_id: int
    predictor: Any


@dataclass(frozen=True)
class Weights:
    """The engine's learned weights, as ``GET /v1/weights`` reports them."""

    tenant_id: int


@dataclass(frozen=True)
class Bandits:
    """The intervention bandits' report."""

    tenant_id: int


@dataclass(frozen=True)
class Reply:
    """A command's result, and the decisions and resolutions it made, for the signal log in this order."""

    result: Any = None
    decisions: list[Decision] = field(default_factory=list)
    resolutions: list[Resolution] = field(default_factory=list)


Command = (Open | RestorePolicy | Apply | Score | Explain | View | SampleUsers | PosteriorScores | CountNewUsers
           | Feedback | Expire | DecideIdle | Erase | Reconfigure | Rebuilding | Swap | Snapshot | ServeModel
           | Weights | Bandits)
