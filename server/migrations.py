"""The database's schema, as an ordered list of migrations: each brings it one version up, in one transaction.

``PRAGMA user_version`` holds the version a database is at. Opening one runs the migrations it lacks, in order, each
with the version bump in its own transaction, so a crash leaves it at the last whole version. A released migration
never changes: a new column, table or index is a new migration at the end of the list. A database written by a newer
nudge (a version this one does not know) is refused rather than read wrongly.

Databases from before versions were kept are at version 0 with their tables already there: migration 1 only creates
what is missing (``IF NOT EXISTS``), and migration 2 checks for its column. Migration 3 rewrites a per-event log as
one record per 10,000 events of a tenant.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Callable


class SchemaTooNew(ValueError):
    """The database is at a schema version this nudge does not know (a ValueError: the CLI prints it as an error)."""


@dataclass(frozen=True)
class Migration:
    version: int
    summary: str
    apply: Callable[[sqlite3.Connection], None]


def _statements(script: str) -> Callable[[sqlite3.Connection], None]:
    """Runs each statement of ``script`` inside the open transaction (``executescript`` would commit it first);
    SQLite's own parser (``complete_statement``) says where one ends, comments and all."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current)
            current = ""
    assert not current.strip(), f"an unfinished statement: {current!r}"

    def run(db: sqlite3.Connection) -> None:
        for statement in statements:
            db.execute(statement)
    return run


_TABLES_V1 = """
CREATE TABLE IF NOT EXISTS tenants (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    key_hash TEXT NOT NULL UNIQUE,
    config TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    -- AUTOINCREMENT: erasure deletes rows, and a reused sequence number would be skipped on replay.
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id INTEGER NOT NULL,
    event_id TEXT,
    user_id TEXT NOT NULL,
    action TEXT NOT NULL,
    ts REAL NOT NULL,
    device TEXT NOT NULL,
    segment TEXT,
    tz_offset_min INTEGER NOT NULL,
    item_id TEXT,
    category TEXT,
    query TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS events_event_id ON events (tenant_id, event_id) WHERE event_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_user ON events (tenant_id, user_id);
CREATE TABLE IF NOT EXISTS model_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id INTEGER NOT NULL,
    at REAL NOT NULL,
    event TEXT NOT NULL,
    record TEXT NOT NULL  -- the whole entry as JSON: stamps, gate figures, message
);
CREATE INDEX IF NOT EXISTS model_history_tenant ON model_history (tenant_id, id);

CREATE TABLE IF NOT EXISTS signals (
    -- seq orders delivery; AUTOINCREMENT so an erased row's number is never handed out again.
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id INTEGER NOT NULL,
    -- The tenant's own position (pull cursors): seq is shared by all tenants and would reveal their volume.
    tenant_seq INTEGER,
    signal_id TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    intent TEXT NOT NULL,
    type TEXT NOT NULL,
    variant TEXT NOT NULL,
    payload TEXT NOT NULL,
    score REAL NOT NULL,
    created_at REAL NOT NULL,
    withheld INTEGER NOT NULL,
    outcome TEXT,  -- NULL while open, then 'converted' or 'no_conversion'
    resolved_at REAL
);
CREATE INDEX IF NOT EXISTS signals_tenant ON signals (tenant_id, seq);
CREATE TABLE IF NOT EXISTS signal_sequences (
    tenant_id INTEGER PRIMARY KEY,
    last INTEGER NOT NULL  -- never goes back, even when old signals are purged
);
CREATE INDEX IF NOT EXISTS signals_user ON signals (tenant_id, user_id);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY,
    tenant_id INTEGER NOT NULL,
    signal_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    ts REAL NOT NULL,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_user ON feedback (tenant_id, user_id);
-- The bandits' evidence outlives the signals it came from (those are purged after the retention period).
CREATE TABLE IF NOT EXISTS bandit_rewards (
    tenant_id INTEGER NOT NULL,
    intent TEXT NOT NULL,
    variant TEXT NOT NULL,
    successes REAL NOT NULL,
    failures REAL NOT NULL,
    PRIMARY KEY (tenant_id, intent, variant)
);

CREATE TABLE IF NOT EXISTS subscriptions (
    id TEXT PRIMARY KEY,
    tenant_id INTEGER NOT NULL,
    url TEXT NOT NULL,
    types TEXT,  -- JSON list, NULL for every type
    secret TEXT NOT NULL,  -- kept in clear: signing needs it
    created_at REAL NOT NULL,
    cursor INTEGER NOT NULL,  -- the last signal seq delivered or dead-lettered
    -- The batch being delivered: (cursor, inflight_until], fixed at its first attempt so that a
    -- retry, even after a restart, sends the same signals under the same webhook-id.
    inflight_until INTEGER,
    inflight_since REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    delivered INTEGER NOT NULL DEFAULT 0,
    dead_lettered INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    last_error_at REAL,
    last_success_at REAL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription_id TEXT NOT NULL,
    after_seq INTEGER NOT NULL,
    until_seq INTEGER NOT NULL,
    signals INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    last_error TEXT,
    dead_at REAL NOT NULL,
    state TEXT NOT NULL  -- 'dead', 'redeliver' (queued again) or 'delivered'
);
CREATE INDEX IF NOT EXISTS dead_letters_subscription ON dead_letters (subscription_id, state);
"""


def _signals_numbered_per_tenant(db: sqlite3.Connection) -> None:
    if "tenant_seq" not in {row[1] for row in db.execute("PRAGMA table_info(signals)")}:
        db.execute("ALTER TABLE signals ADD COLUMN tenant_seq INTEGER")
        db.execute("UPDATE signals SET tenant_seq = (SELECT COUNT(*) FROM signals s "
                   "WHERE s.tenant_id = signals.tenant_id AND s.seq <= signals.seq)")
        db.execute("INSERT OR REPLACE INTO signal_sequences (tenant_id, last) "
                   "SELECT tenant_id, MAX(tenant_seq) FROM signals GROUP BY tenant_id")
    db.execute("CREATE UNIQUE INDEX IF NOT EXISTS signals_tenant_seq ON signals (tenant_id, tenant_seq)")


_COLUMNAR_LOG = """
CREATE TABLE event_batches (
    -- Sequence numbers are global and never reused (log_sequence), so a record's first one names it.
    first_seq INTEGER PRIMARY KEY,
    tenant_id INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    n INTEGER NOT NULL,
    min_ts REAL NOT NULL,
    max_ts REAL NOT NULL,
    users BLOB NOT NULL,
    columns BLOB NOT NULL
);
CREATE INDEX event_batches_position ON event_batches (tenant_id, last_seq);
CREATE INDEX event_batches_time ON event_batches (tenant_id, max_ts);
CREATE TABLE event_ids (
    tenant_id INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (tenant_id, event_id)
) WITHOUT ROWID;
CREATE TABLE logged_names (
    tenant_id INTEGER NOT NULL,
    field TEXT NOT NULL,
    name TEXT NOT NULL,
    PRIMARY KEY (tenant_id, field, name)
) WITHOUT ROWID;
CREATE TABLE log_sequence (last INTEGER NOT NULL);
"""
_MIGRATE_CHUNK = 10_000


def _columnar_event_log(db: sqlite3.Connection) -> None:
    from model.schema import LOG_COLUMNS

    from . import log_records
    from .event_log import insert_record

    _statements(_COLUMNAR_LOG)(db)
    used = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
    db.execute("INSERT INTO log_sequence (last) VALUES (?)", (used[0] if used else 0,))
    select = (f"SELECT seq, {', '.join(LOG_COLUMNS)} FROM events WHERE tenant_id = ? AND seq > ? "
              "ORDER BY seq LIMIT ?")
    for (tenant_id,) in db.execute("SELECT DISTINCT tenant_id FROM events").fetchall():
        after = 0
        while rows := db.execute(select, (tenant_id, after, _MIGRATE_CHUNK)).fetchall():
            insert_record(db, tenant_id, log_records.encode(*log_records.from_rows(rows)))
            after = rows[-1][0]
    db.execute("INSERT INTO event_ids (tenant_id, event_id) SELECT tenant_id, event_id FROM events "
               "WHERE event_id IS NOT NULL")
    db.execute("INSERT INTO logged_names (tenant_id, field, name) SELECT DISTINCT tenant_id, 'action', action "
               "FROM events")
    db.execute("INSERT INTO logged_names (tenant_id, field, name) SELECT DISTINCT tenant_id, 'segment', segment "
               "FROM events WHERE segment IS NOT NULL")
    db.execute("DROP TABLE events")


MIGRATIONS = [
    Migration(1, "tenants, the event log, model history, signals, feedback, bandit rewards, subscriptions and "
                 "dead letters", _statements(_TABLES_V1)),
    Migration(2, "signals numbered per tenant (tenant_seq), so pull cursors do not reveal other tenants' volume",
              _signals_numbered_per_tenant),
    Migration(3, "the event log as one record per batch (columns), with an event-id index and the logged names",
              _columnar_event_log),
]
LATEST = MIGRATIONS[-1].version


def version(db: sqlite3.Connection) -> int:
    return db.execute("PRAGMA user_version").fetchone()[0]


def migrate(db: sqlite3.Connection) -> int:
    """Bring ``db`` (autocommit mode) to :data:`LATEST`; returns the version it was at."""
    found = version(db)
    if found > LATEST:
        raise SchemaTooNew(f"the database is at schema version {found}, and this nudge knows versions up to {LATEST}: "
                           "run the nudge that wrote it, or restore a backup made with this one")
    for migration in MIGRATIONS[found:]:
        db.execute("BEGIN IMMEDIATE")
        try:
            if version(db) < migration.version:  # another connection may have run it since the check above
                migration.apply(db)
                db.execute(f"PRAGMA user_version = {migration.version:d}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    return found
