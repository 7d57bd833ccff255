"""The database's schema versions: fresh databases, databases from before versions were kept, a failed migration,
and one written by a newer nudge."""
import json
import sqlite3
import subprocess
import sys

import pytest

from server import migrations
from server.migrations import LATEST, MIGRATIONS, Migration, SchemaTooNew, migrate, version
from model import EventBatch, TenantConfig
from server.storage import DB_NAME, ConfigConflict, Store

# The signals table as nudge wrote it before pull cursors were numbered per tenant (no tenant_seq).
_OLD_SIGNALS = """
CREATE TABLE signals (seq INTEGER PRIMARY KEY AUTOINCREMENT, tenant_id INTEGER NOT NULL,
    signal_id TEXT NOT NULL UNIQUE, user_id TEXT NOT NULL, intent TEXT NOT NULL, type TEXT NOT NULL,
    variant TEXT NOT NULL, payload TEXT NOT NULL, score REAL NOT NULL, created_at REAL NOT NULL,
    withheld INTEGER NOT NULL, outcome TEXT, resolved_at REAL);
CREATE TABLE signal_sequences (tenant_id INTEGER PRIMARY KEY, last INTEGER NOT NULL);
"""


def _schema(db):
    return sorted(db.execute("SELECT type, name, tbl_name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"))


def _columns(db, table):
    return [row[1] for row in db.execute(f"PRAGMA table_info({table})")]


def test_the_versions_run_one_by_one_from_one():
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1)) and LATEST == len(MIGRATIONS)


def test_a_fresh_database_gets_every_version_and_a_second_open_changes_nothing(tmp_path):
    store = Store(tmp_path)
    try:
        assert version(store.db) == LATEST
        schema = _schema(store.db)
        assert "tenant_seq" in _columns(store.db, "signals")
    finally:
        store.close()
    again = Store(tmp_path)
    try:
        assert version(again.db) == LATEST and _schema(again.db) == schema
    finally:
        again.close()


def test_a_database_from_before_versions_keeps_its_rows_and_gets_what_it_lacks(tmp_path):
    db = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
    db.executescript(_OLD_SIGNALS)
    rows = [(1, "s1", "u"), (2, "s2", "u"), (1, "s3", "v"), (1, "s4", "w"), (2, "s5", "x")]
    for tenant, sid, user in rows:
        db.execute("INSERT INTO signals (tenant_id, signal_id, user_id, intent, type, variant, payload, score, "
                   "created_at, withheld) VALUES (?, ?, ?, 'i', 't', 'v', '{}', 0.5, 0, 0)", (tenant, sid, user))
    assert version(db) == 0
    db.close()

    store = Store(tmp_path)
    try:
        assert version(store.db) == LATEST
        numbered = store.db.execute("SELECT signal_id, tenant_seq FROM signals ORDER BY seq").fetchall()
        assert numbered == [("s1", 1), ("s2", 1), ("s3", 2), ("s4", 3), ("s5", 2)]
        assert dict(store.db.execute("SELECT tenant_id, last FROM signal_sequences")) == {1: 3, 2: 2}
        assert {name for _, name, _ in _schema(store.db)} >= {"event_batches", "tenants", "subscriptions",
                                                               "signals_tenant_seq"}
    finally:
        store.close()


def test_a_per_event_log_becomes_batch_records_that_read_back_the_same(tmp_path, monkeypatch):
    # A database at version 2, its log one row per event, with an erased row (a gap) at the end.
    monkeypatch.setattr(migrations, "_MIGRATE_CHUNK", 3)  # several records per tenant
    db = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
    for m in MIGRATIONS[:2]:
        m.apply(db)
    db.execute("PRAGMA user_version = 2")
    cfg = TenantConfig(segments=["vip"])
    db.execute("INSERT INTO tenants (name, key_hash, config, created_at) VALUES ('a', 'h', ?, 0)",
               (json.dumps(cfg.to_dict()),))
    rows = [(1, f"e{i}", f"u{i % 3}", ["view", "add_to_cart", "purchase"][i % 3], 1000.0 + i,
             ["mobile", "desktop"][i % 2], "vip" if i % 4 == 0 else None, 60 * (i % 2), f"i{i}" if i % 2 else None,
             "shoes", None) for i in range(8)]
    db.executemany("INSERT INTO events (tenant_id, event_id, user_id, action, ts, device, segment, tz_offset_min, "
                   "item_id, category, query) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    db.execute("DELETE FROM events WHERE seq = 8")
    db.close()

    store = Store(tmp_path)
    try:
        assert version(store.db) == LATEST
        [(batch, seqs)] = list(store.read_events(1, cfg))
        assert seqs.tolist() == list(range(1, 8))
        assert batch.user_ids.tolist() == [r[2] for r in rows[:7]]
        assert [cfg.actions[a] for a in batch.actions] == [r[3] for r in rows[:7]]
        assert batch.ts.tolist() == [r[4] for r in rows[:7]]
        assert [(None, *cfg.segments)[s] for s in batch.segment] == [r[6] for r in rows[:7]]
        assert batch.tz_offset_min.tolist() == [r[7] for r in rows[:7]]
        assert batch.item_ids.tolist() == [r[8] for r in rows[:7]]
        assert batch.event_ids.tolist() == [r[1] for r in rows[:7]]
        # Event ids stay known, and numbering goes on after the erased row's number.
        again = EventBatch.build(["u0", "u9"], [0, 0], [2000.0, 2000.0], event_ids=["e0", "new"])
        [appended] = store.append([(1, again, cfg)])
        assert appended.accepted.tolist() == [False, True] and appended.seqs.tolist() == [9]
        # The config cannot drop a logged segment.
        with pytest.raises(ConfigConflict, match="segment"):
            store.replace_config(1, cfg, TenantConfig())
    finally:
        store.close()


def test_a_failed_migration_leaves_the_database_at_the_last_whole_version(tmp_path, monkeypatch):
    def half_done(db):
        db.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(migrations, "MIGRATIONS", [*MIGRATIONS, Migration(LATEST + 1, "fails", half_done)])
    monkeypatch.setattr(migrations, "LATEST", LATEST + 1)
    db = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
    with pytest.raises(RuntimeError, match="disk on fire"):
        migrate(db)
    assert version(db) == LATEST  # every earlier migration committed
    assert "half_done" not in {name for _, name, _ in _schema(db)}  # the failed one rolled back whole
    db.close()


def test_a_database_written_by_a_newer_nudge_is_refused_untouched(tmp_path):
    db = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
    db.execute(f"PRAGMA user_version = {LATEST + 1}")
    db.execute("CREATE TABLE from_the_future (x)")
    db.close()
    with pytest.raises(SchemaTooNew, match=f"version {LATEST + 1}"):
        Store(tmp_path)
    # The command line says so in one line, without a traceback.
    out = subprocess.run([sys.executable, "-m", "server.cli", "tenant", "create", "acme", "--data-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith("error: the database is at schema version"), out.stderr
    db = sqlite3.connect(tmp_path / DB_NAME)
    assert version(db) == LATEST + 1 and "tenants" not in {name for _, name, _ in _schema(db)}
    db.close()
