"""The durable event log in SQLite: one record per committed batch (``server/log_records.py``), an index of event
ids for deduplication, and the action and segment names each tenant has logged.

A mixin of :class:`~server.storage.Store` (it uses ``self.db``). Every event has a log sequence number, global
and never reused (``log_sequence``), so erasing events leaves gaps and replaying never skips a later event. The
per-event work of a commit is the event-id index, and only for events that carry an id.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from model import EventBatch, TenantConfig

from . import log_records
from ._sql import select_in
from .log_records import Record


@dataclass(frozen=True)
class Appended:
    """The outcome of one batch in a group commit: which rows were new, and their log positions."""

    accepted: np.ndarray  # bool per row of the submitted batch
    seqs: np.ndarray  # int64 log sequence numbers of the accepted rows, in order


class EventLogStore:
    db: sqlite3.Connection

    def _append_one(self, tenant_id: int, batch: EventBatch, config: TenantConfig) -> Appended:
        accepted = np.ones(len(batch), dtype=bool)
        ids = batch.event_ids
        with_id = np.flatnonzero(ids != None)  # noqa: E711 - elementwise comparison on an object array
        if len(with_id):
            known = {r[0] for r in select_in(
                self.db, "SELECT event_id FROM event_ids WHERE tenant_id = ? AND event_id IN ({marks})",
                (tenant_id,), ids[with_id],
            )}
            seen: set = set()
            for i in with_id:
                eid = ids[i]
                if eid in known or eid in seen:
                    accepted[i] = False
                seen.add(eid)
        rows = np.flatnonzero(accepted)
        if not len(rows):
            return Appended(accepted, np.zeros(0, np.int64))
        if len(rows) < len(batch):
            batch = batch.take(rows)
        new_ids = batch.event_ids[batch.event_ids != None]  # noqa: E711
        if len(new_ids):
            self.db.executemany("INSERT INTO event_ids (tenant_id, event_id) VALUES (?, ?)",
                                ((tenant_id, e) for e in new_ids.tolist()))
        last = self.db.execute("SELECT last FROM log_sequence").fetchone()[0]
        seqs = np.arange(last + 1, last + 1 + len(batch), dtype=np.int64)
        self.db.execute("UPDATE log_sequence SET last = ?", (int(seqs[-1]),))
        names = log_records.vocabularies(config)
        self._insert_record(tenant_id, log_records.encode(batch, seqs, names))
        self.db.executemany("INSERT OR IGNORE INTO logged_names (tenant_id, field, name) VALUES (?, ?, ?)",
                            ((tenant_id, f, n) for f, n in log_records.logged_names(batch, names)))
        return Appended(accepted, seqs)

    def _insert_record(self, tenant_id: int, r: Record) -> None:
        insert_record(self.db, tenant_id, r)

    def read_events(
        self, tenant_id: int, config: TenantConfig, after_seq: int = 0, chunk: int = 50_000,
        until_seq: int | None = None,
    ) -> Iterator[tuple[EventBatch, np.ndarray]]:
        """The tenant's log after ``after_seq`` in order, as (batch, seqs) chunks of about ``chunk`` events.

        Read a page of records at a time, each page its own read (no read transaction stays open between
        chunks, so a reader beside the server never holds the write-ahead log back).
        """
        last, parts, size = after_seq, [], 0
        until = 2**63 - 1 if until_seq is None else until_seq
        while True:
            rows = self.db.execute(
                "SELECT last_seq, users, columns FROM event_batches WHERE tenant_id = ? AND last_seq > ? "
                "AND first_seq <= ? ORDER BY last_seq LIMIT 64", (tenant_id, last, until)).fetchall()
            for _, users, columns in rows:
                batch, seqs = log_records.decode(users, columns, config)
                if seqs[0] <= after_seq:  # a record that straddles the position asked for
                    keep = seqs > after_seq
                    batch, seqs = batch.take(keep), seqs[keep]
                parts.append((batch, seqs))
                size += len(seqs)
            if parts and (size >= chunk or not rows):
                yield EventBatch.concat([b for b, _ in parts]), np.concatenate([q for _, q in parts])
                parts, size = [], 0
            if not rows:
                return
            last = rows[-1][0]

    def recent_events(self, tenant_id: int, config: TenantConfig, n: int) -> EventBatch:
        """The tenant's last ``n`` logged events (all of them if fewer), in log order."""
        parts, total = [], 0
        for users, columns in self.db.execute(
            "SELECT users, columns FROM event_batches WHERE tenant_id = ? ORDER BY last_seq DESC", (tenant_id,)
        ):
            if total >= n:
                break
            batch, _ = log_records.decode(users, columns, config)
            parts.append(batch)
            total += len(batch)
        if not parts:
            return EventBatch.build([], [], [])
        batch = EventBatch.concat(parts[::-1])
        return batch.take(slice(max(0, len(batch) - n), None))

    def count_events(self, tenant_id: int, user_id: str | None = None) -> int:
        if user_id is None:
            return self.db.execute("SELECT COALESCE(SUM(n), 0) FROM event_batches WHERE tenant_id = ?",
                                   (tenant_id,)).fetchone()[0]
        return sum(int((users == user_id).sum()) for _, users in self._records_of_user(tenant_id, user_id))

    def _records_of_user(self, tenant_id: int, user_id: str, where: str = "", args: tuple = ()):
        """(first_seq, user ids) of the tenant's records that hold ``user_id``, found by a scan of the records'
        user columns alone (a per-user index would cost a random write per event)."""
        needle = log_records.user_needle(user_id)
        for first_seq, users in self.db.execute(
            f"SELECT first_seq, users FROM event_batches WHERE tenant_id = ? {where} ORDER BY last_seq",
            (tenant_id, *args),
        ).fetchall():
            if needle in users:
                decoded = log_records.decode_users(users)
                if (decoded == user_id).any():
                    yield first_seq, decoded

    def first_conversion(self, tenant_id: int, user_id: str, action: str, start: float, end: float) -> float | None:
        """Time of the user's first logged ``action`` in [start, end], if any."""
        found: list[float] = []
        for first_seq, _ in self._records_of_user(tenant_id, user_id, "AND max_ts >= ? AND min_ts <= ?",
                                                  (start, end)):
            batch, _, names = self._logged_record(first_seq)
            if action in names["actions"]:
                hit = ((batch.user_ids == user_id) & (batch.actions == names["actions"].index(action))
                       & (batch.ts >= start) & (batch.ts <= end))
                found.extend(batch.ts[hit].tolist())
        return min(found) if found else None

    def _logged_record(self, first_seq: int) -> tuple[EventBatch, np.ndarray, dict[str, tuple]]:
        users, columns = self.db.execute("SELECT users, columns FROM event_batches WHERE first_seq = ?",
                                         (first_seq,)).fetchone()
        return log_records.decode_logged(users, columns)

    def _erase_logged_events(self, tenant_id: int, user_id: str) -> int:
        """Delete the user's events from every record holding them (inside the caller's transaction)."""
        erased = 0
        for first_seq, _ in list(self._records_of_user(tenant_id, user_id)):
            batch, seqs, names = self._logged_record(first_seq)
            theirs = batch.user_ids == user_id
            ids = [e for e in batch.event_ids[theirs].tolist() if e is not None]
            if ids:
                self.db.executemany("DELETE FROM event_ids WHERE tenant_id = ? AND event_id = ?",
                                    ((tenant_id, e) for e in ids))
            self.db.execute("DELETE FROM event_batches WHERE first_seq = ?", (first_seq,))
            if not theirs.all():
                self._insert_record(tenant_id, log_records.encode(batch.take(~theirs), seqs[~theirs], names))
            erased += int(theirs.sum())
        return erased


def insert_record(db: sqlite3.Connection, tenant_id: int, r: Record) -> None:
    db.execute(
        "INSERT INTO event_batches (first_seq, tenant_id, last_seq, n, min_ts, max_ts, users, columns) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (r.first_seq, tenant_id, r.last_seq, r.n, r.min_ts, r.max_ts, r.users, r.columns))


def logged_events(db: sqlite3.Connection) -> Iterator[tuple[int, str, str | None, str]]:
    """(tenant_id, user_id, event_id, action) of every logged event in log order, from any connection (read-only
    ones included): what audits and tests read without a Store."""
    for tenant_id, users, columns in db.execute("SELECT tenant_id, users, columns FROM event_batches "
                                                "ORDER BY first_seq"):
        batch, _, names = log_records.decode_logged(users, columns)
        actions = names["actions"]
        for user_id, event_id, action in zip(batch.user_ids.tolist(), batch.event_ids.tolist(),
                                             batch.actions.tolist()):
            yield tenant_id, user_id, event_id, actions[action]
