"""The storage port: what the rest of nudge may ask of storage, as typed interfaces.

``server/storage.py``'s ``Store`` (SQLite, the embedded default, with the migrations of ``server/migrations.py``)
is the adapter that implements every one of them; ``tests/unit/test_ports.py`` checks that it does, method by method
and parameter by parameter. A second adapter (the partitioned log of docs/scaling.md) implements the same ones.
They are synchronous: each adapter is used from one thread at a time (the server gives storage threads of its own).

Engine snapshots are a port of their own (:class:`Snapshots`), with ``server/snapshots.py``'s ``SnapshotFiles``
as the embedded adapter: they are written beside the engine that captures them (a worker process), not through
the server's store. Model checkpoints are files an operator drops in (``server/models.py``) and not part of
this port.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

    from model import EventBatch, TenantConfig

    from .storage import Appended, Tenant
    from .subscription_store import Subscription


@runtime_checkable
class Tenants(Protocol):
    """Tenants, their hashed API keys and their configs."""

    def create_tenant(self, name: str, config: TenantConfig | None = None) -> tuple[Tenant, str]:
        """A new tenant and its API key (shown once; only its hash is kept)."""
        ...

    def delete_tenant(self, name: str) -> None:
        """Delete a tenant that has recorded nothing yet (a key handed out for a server that never started)."""
        ...

    def tenants(self) -> list[Tenant]: ...

    def tenant_by_key(self, key: str) -> Tenant | None: ...

    def save_config(self, tenant_id: int, config: TenantConfig) -> None: ...

    def replace_config(self, tenant_id: int, old: TenantConfig, new: TenantConfig) -> None:
        """Store ``new`` if it describes every logged event, in one transaction; else :class:`ConfigConflict`."""
        ...


@runtime_checkable
class EventLog(Protocol):
    """The durable event log: group-committed, deduplicated by event id, read back in order from a position."""

    def append(self, groups: list[tuple[int, EventBatch, TenantConfig]]) -> list[Appended | Exception]:
        """Commit several tenants' batches in one transaction (group commit), skipping known event ids."""
        ...

    def read_events(
        self, tenant_id: int, config: TenantConfig, after_seq: int = 0, chunk: int = 50000,
        until_seq: int | None = None,
    ) -> Iterator[tuple[EventBatch, np.ndarray]]:
        """The tenant's log after ``after_seq`` in order, as (batch, seqs) chunks; with ``until_seq``, only the
        batches that start at or before it (a reader that must finish while the log grows)."""
        ...

    def recent_events(self, tenant_id: int, config: TenantConfig, n: int) -> EventBatch:
        """The tenant's last ``n`` logged events (all of them if fewer), in log order."""
        ...

    def count_events(self, tenant_id: int, user_id: str | None = None) -> int: ...

    def erase_user(self, tenant_id: int, user_id: str) -> int:
        """Delete every logged event, signal and feedback of one user; returns how many events."""
        ...

    def checkpoint(self) -> bool:
        """Copy the write-ahead log into the database and empty it; False when a reader kept part of it."""
        ...


@runtime_checkable
class ModelHistory(Protocol):
    """Promotions, refusals, rollbacks and failed loads of each tenant's model."""

    def append_model_event(self, tenant_id: int, entry: dict, keep: int) -> None:
        """Record a model event (an entry of ``ModelSlot.history``); only the tenant's last ``keep`` are kept."""
        ...

    def model_history(self, tenant_id: int, limit: int) -> list[dict]:
        """The tenant's last ``limit`` model events, newest first."""
        ...


@runtime_checkable
class SignalLog(Protocol):
    """Decisions and their outcomes, feedback, the bandits' evidence, and signals read for pull and delivery."""

    def write_signals(self, writes: list[tuple[int, list, list]]) -> None:
        """(tenant_id, decisions, resolutions) groups in one transaction, in order."""
        ...

    def policy_rows(self, tenant_id: int, since: float) -> tuple[list[tuple], list[tuple]]:
        """What ``SignalPolicy.restore`` needs: recent and open decisions, and rewards per variant."""
        ...

    def allocation_history(self, tenant_id: int, since: float, period_s: float) -> list[dict[str, Any]]:
        """Signals sent per period, intent and variant since ``since``: how the bandits split the traffic."""
        ...

    def open_signals(self, tenant_id: int) -> list[dict[str, Any]]:
        """The tenant's unresolved sent signals, oldest first, as delivered."""
        ...

    def first_conversion(self, tenant_id: int, user_id: str, action: str, start: float, end: float) -> float | None:
        """Time of the user's first logged ``action`` in [start, end], if any."""
        ...

    def signal_owners(self, tenant_id: int, signal_ids: list[str]) -> dict[str, str]:
        """signal_id -> user_id of those of ``signal_ids`` that this tenant has."""
        ...

    def add_feedback(self, tenant_id: int, rows: list[tuple[str, str, str, float]]) -> None:
        """(signal_id, user_id, outcome, ts) rows."""
        ...

    def signal_stats(self, tenant_id: int, now: float, horizon_s: float) -> dict:
        """Counts for ``GET /v1/stats``: sent by type and variant, outcomes per group, the funnel, feedback."""
        ...

    def read_signals(
        self, tenant_id: int, after_seq: int, limit: int, types: list[str] | None = None, until_seq: int | None = None
    ) -> list[tuple[int, dict[str, Any]]]:
        """(seq, signal) of the tenant's sent (not withheld) signals after ``after_seq``, in order."""
        ...

    def pull_signals(self, tenant_id: int, after: int, limit: int) -> list[tuple[int, dict[str, Any]]]:
        """(tenant position, signal) of the tenant's sent signals after its position ``after``, in order."""
        ...

    def tenant_position(self, tenant_id: int, seq: int) -> int:
        """The tenant's position of its last signal at or before the shared ``seq`` (cursors of older nudges)."""
        ...

    def last_signal_seq(self) -> int:
        """The newest signal's sequence number across tenants (0 when there is none)."""
        ...

    def purge_signals(self, before: float) -> int:
        """Delete signals created before ``before`` (the retention period), and their feedback."""
        ...


@runtime_checkable
class Subscriptions(Protocol):
    """Webhook subscriptions, each one's delivery cursor and in-flight batch, and dead letters."""

    def create_subscription(self, tenant_id: int, url: str, types: list[str] | None, start_after: int) -> Subscription:
        """A new subscription that receives the signals after ``start_after`` (the log's end: only new ones)."""
        ...

    def subscription(self, sub_id: str, tenant_id: int | None = None) -> Subscription | None: ...

    def subscriptions(self, tenant_id: int | None = None) -> list[Subscription]: ...

    def count_subscriptions(self, tenant_id: int) -> int: ...

    def subscription_report(self, tenant_id: int) -> list[dict[str, Any]]:
        """Every subscription of the tenant with its delivery statistics (never the secret)."""
        ...

    def delete_subscription(self, tenant_id: int, sub_id: str) -> bool: ...

    def start_batch(self, sub_id: str, until_seq: int) -> float:
        """Fix the in-flight batch (cursor, until_seq]; returns when it was first tried."""
        ...

    def batch_delivered(self, sub_id: str, until_seq: int, n: int) -> None: ...

    def batch_failed(self, sub_id: str, attempts: int, error: str) -> None: ...

    def dead_letter_batch(self, sub_id: str, after_seq: int, until_seq: int, n: int, attempts: int, error: str) -> None:
        """Give up on the in-flight batch: record it as a dead letter and move the cursor past it."""
        ...

    def dead_letters(self, sub_id: str) -> list[dict[str, Any]]: ...

    def mark_redeliver(self, sub_id: str, dead_letter_id: int) -> bool: ...

    def next_redelivery(self, sub_id: str) -> tuple[int, int, int] | None:
        """(dead letter id, after_seq, until_seq) of the oldest dead letter queued for redelivery."""
        ...

    def redelivery_done(self, dead_letter_id: int, delivered: bool, attempts: int, error: str | None) -> None: ...


@runtime_checkable
class Snapshots(Protocol):
    """Each tenant's latest engine snapshot, and the users erased since it was written.

    A snapshot is only a shortcut: the event log rebuilds everything it holds. Erasures do not rewrite it;
    they are journalled beside it, applied to it when it is loaded, and forgotten by the next snapshot.
    """

    def save_snapshot(self, tenant_id: int, state: dict, config: dict) -> None:
        """Replace the tenant's snapshot durably and whole, then forget the erasures journalled before it."""
        ...

    def load_snapshot(self, tenant_id: int) -> tuple[dict, dict] | None:
        """(state, engine settings), None without one; ``SnapshotUnreadable`` when it is damaged."""
        ...

    def set_aside_snapshot(self, tenant_id: int) -> str:
        """Move an unusable snapshot out of the way, kept for a post-mortem; returns the name it is kept as."""
        ...

    def journal_erasure(self, tenant_id: int, user_id: str) -> None:
        """Record, durably, that ``user_id`` must not come back from the tenant's current snapshot."""
        ...

    def erased_since_snapshot(self, tenant_id: int) -> list[str]:
        """The user ids journalled since the tenant's snapshot was written."""
        ...

    def remove_interrupted_writes(self) -> int:
        """Delete what writers killed mid-write left behind (at start-up, before any writer); how many."""
        ...


@runtime_checkable
class Storage(Tenants, EventLog, ModelHistory, SignalLog, Subscriptions, Protocol):
    """Everything the server keeps durably, through one adapter."""

    def close(self) -> None: ...
