"""The SQLite database: tenants and their hashed keys, configs, the durable event log, the signal log
and feedback.

One ``Store`` owns one connection and is used from one thread at a time (the server gives it a
dedicated thread). The event log is the source of truth: engine state is rebuilt from it.
"""
from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from model import EventBatch, TenantConfig

from ._sql import select_in
from .event_log import Appended, EventLogStore  # noqa: F401 - Appended: the port's answer type
from .migrations import migrate
from .signal_log import SignalLog
from .subscription_store import SubscriptionStore

DB_NAME = "nudge.sqlite3"


class ConfigConflict(ValueError):
    """A new config cannot describe the events already logged."""


@dataclass(frozen=True)
class Tenant:
    id: int
    name: str
    config: TenantConfig


def hash_key(key: str) -> str:
    """API keys are long random strings, so one SHA-256 is enough to store them safely."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key() -> str:
    return "nk_" + secrets.token_urlsafe(32)


class Store(EventLogStore, SignalLog, SubscriptionStore):
    """SQLite access for one thread."""

    def __init__(self, data_dir: Path):
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / DB_NAME
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        # FULL: every commit is fsynced before it returns, so an acknowledged batch survives a crash.
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA busy_timeout=10000")
        # Erased users' rows are overwritten with zeros, not left readable in free pages.
        self.db.execute("PRAGMA secure_delete=ON")
        migrate(self.db)

    def close(self) -> None:
        self.db.close()

    # ---- tenants ------------------------------------------------------------------------------

    def create_tenant(self, name: str, config: TenantConfig | None = None) -> tuple[Tenant, str]:
        """A new tenant and its API key (shown once; only its hash is kept)."""
        if not name or len(name) > 64 or not name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"tenant name must be 1-64 letters, digits, '-' or '_', got {name!r}")
        config = config or TenantConfig()
        key = new_api_key()
        try:
            cur = self.db.execute(
                "INSERT INTO tenants (name, key_hash, config, created_at) VALUES (?, ?, ?, ?)",
                (name, hash_key(key), json.dumps(config.to_dict()), time.time()),
            )
        except sqlite3.IntegrityError:
            raise ValueError(f"a tenant named {name!r} exists already") from None
        return Tenant(cur.lastrowid, name, config), key

    def delete_tenant(self, name: str) -> None:
        """Delete a tenant that has recorded nothing yet (a key handed out for a server that never started)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            row = self.db.execute("SELECT id FROM tenants WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise ValueError(f"no tenant {name!r}")
            # Refused rather than cascaded: its events are the source of truth, and a reused id must inherit nothing.
            for table in ("event_batches", "signals", "feedback", "subscriptions"):
                if self.db.execute(f"SELECT 1 FROM {table} WHERE tenant_id = ? LIMIT 1", row).fetchone():
                    raise ValueError(f"tenant {name!r} has {table}; only a tenant with nothing recorded can be deleted")
            # A tenant that never ran has no model history either; the delete makes sure of it for a reused id.
            self.db.execute("DELETE FROM model_history WHERE tenant_id = ?", row)
            self.db.execute("DELETE FROM tenants WHERE id = ?", row)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def tenants(self) -> list[Tenant]:
        rows = self.db.execute("SELECT id, name, config FROM tenants ORDER BY id").fetchall()
        return [Tenant(i, n, TenantConfig.from_dict(json.loads(c))) for i, n, c in rows]

    def tenant_by_key(self, key: str) -> Tenant | None:
        row = self.db.execute("SELECT id, name, config FROM tenants WHERE key_hash = ?", (hash_key(key),)).fetchone()
        return Tenant(row[0], row[1], TenantConfig.from_dict(json.loads(row[2]))) if row else None

    def save_config(self, tenant_id: int, config: TenantConfig) -> None:
        self.db.execute("UPDATE tenants SET config = ? WHERE id = ?", (json.dumps(config.to_dict()), tenant_id))

    def replace_config(self, tenant_id: int, old: TenantConfig, new: TenantConfig) -> None:
        """Store ``new`` if it describes every logged event, in one transaction; else :class:`ConfigConflict`.

        The log only ever holds actions and segments of the stored config, so only what ``new`` drops
        from ``old`` needs looking for.
        """
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for column, kept, removed in (
                ("action", new.actions, set(old.actions) - set(new.actions)),
                ("segment", new.segments, set(old.segments) - set(new.segments)),
            ):
                if not removed:
                    continue
                logged = {r[0] for r in select_in(
                    self.db, "SELECT name FROM logged_names WHERE tenant_id = ? AND field = ? AND name IN ({marks})",
                    (tenant_id, column), sorted(removed),
                )}
                if logged:
                    raise ConfigConflict(
                        f"the event log holds {column}s the new config lacks: {sorted(logged)[:10]}; "
                        f"keep them in '{column}s' (events already logged cannot be re-labelled)")
            self.save_config(tenant_id, new)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    # ---- the event log ------------------------------------------------------------------------

    def append(self, groups: list[tuple[int, EventBatch, TenantConfig]]) -> list[Appended | Exception]:
        """Commit several tenants' batches in one transaction (group commit), skipping known event ids.

        Each batch has a savepoint of its own: one that fails is rolled back alone and its place in the
        answer holds the exception, so one tenant's bad batch fails only its own request.
        """
        out: list[Appended | Exception] = []
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for tenant_id, batch, config in groups:
                self.db.execute("SAVEPOINT batch")
                try:
                    out.append(self._append_one(tenant_id, batch, config))
                except (sqlite3.Error, ValueError, TypeError) as exc:  # UnicodeEncodeError is a ValueError
                    self.db.execute("ROLLBACK TO batch")
                    out.append(exc)
                self.db.execute("RELEASE batch")
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return out

    # ---- the model history --------------------------------------------------------------------

    def append_model_event(self, tenant_id: int, entry: dict, keep: int) -> None:
        """Record a model event (an entry of ``ModelSlot.history``); only the tenant's last ``keep`` are kept."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("INSERT INTO model_history (tenant_id, at, event, record) VALUES (?, ?, ?, ?)",
                            (tenant_id, entry["at"], entry["event"], json.dumps(entry)))
            self.db.execute(
                "DELETE FROM model_history WHERE tenant_id = ? AND id <= (SELECT id FROM model_history "
                "WHERE tenant_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?)", (tenant_id, tenant_id, keep))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def model_history(self, tenant_id: int, limit: int) -> list[dict]:
        """The tenant's last ``limit`` model events, newest first."""
        rows = self.db.execute("SELECT record FROM model_history WHERE tenant_id = ? ORDER BY id DESC LIMIT ?",
                               (tenant_id, limit)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def erase_user(self, tenant_id: int, user_id: str) -> int:
        """Delete every logged event, signal and feedback of one user; returns how many events."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            erased = self._erase_logged_events(tenant_id, user_id)
            for table in ("signals", "feedback"):
                self.db.execute(f"DELETE FROM {table} WHERE tenant_id = ? AND user_id = ?", (tenant_id, user_id))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.checkpoint()
        return erased

    def checkpoint(self) -> bool:
        """Copy the write-ahead log into the database and empty it; False when a reader kept part of it."""
        busy, _, _ = self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return not busy
