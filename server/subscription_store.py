"""Webhook subscriptions, each one's delivery cursor and in-flight batch, and its dead letters."""
from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import time
from dataclasses import dataclass
from typing import Any



@dataclass(frozen=True)
class Subscription:
    id: str
    tenant_id: int
    url: str
    types: list[str] | None
    secret: str
    cursor: int
    inflight_until: int | None
    inflight_since: float | None
    attempts: int


_COLUMNS = "id, tenant_id, url, types, secret, cursor, inflight_until, inflight_since, attempts"


def _subscription(row) -> Subscription:
    return Subscription(row[0], row[1], row[2], json.loads(row[3]) if row[3] else None, *row[4:])


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and base64 of 32 random bytes."""
    import base64

    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class SubscriptionStore:
    """Subscription queries of :class:`server.storage.Store` (which owns ``self.db``)."""

    db: sqlite3.Connection

    def create_subscription(self, tenant_id: int, url: str, types: list[str] | None, start_after: int) -> Subscription:
        """A new subscription that receives the signals after ``start_after`` (the log's end: only new ones)."""
        sub_id = "sub_" + secrets.token_hex(12)
        with self.db:
            self.db.execute(
                "INSERT INTO subscriptions (id, tenant_id, url, types, secret, created_at, cursor) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (sub_id, tenant_id, url, json.dumps(types) if types else None, new_secret(), time.time(), start_after),
            )
        return self.subscription(sub_id)

    def subscription(self, sub_id: str, tenant_id: int | None = None) -> Subscription | None:
        sql = f"SELECT {_COLUMNS} FROM subscriptions WHERE id = ?"
        args: tuple = (sub_id,)
        if tenant_id is not None:
            sql += " AND tenant_id = ?"
            args += (tenant_id,)
        row = self.db.execute(sql, args).fetchone()
        return _subscription(row) if row else None

    def subscriptions(self, tenant_id: int | None = None) -> list[Subscription]:
        sql, args = f"SELECT {_COLUMNS} FROM subscriptions", ()
        if tenant_id is not None:
            sql, args = sql + " WHERE tenant_id = ?", (tenant_id,)
        return [_subscription(r) for r in self.db.execute(sql + " ORDER BY created_at", args)]

    def count_subscriptions(self, tenant_id: int) -> int:
        return self.db.execute("SELECT COUNT(*) FROM subscriptions WHERE tenant_id = ?", (tenant_id,)).fetchone()[0]

    def subscription_report(self, tenant_id: int) -> list[dict[str, Any]]:
        """Every subscription of the tenant with its delivery statistics (never the secret)."""
        rows = self.db.execute(
            "SELECT s.id, s.url, s.types, s.created_at, s.cursor, s.inflight_until, s.attempts, s.delivered, "
            "s.dead_lettered, s.last_error, s.last_error_at, s.last_success_at, "
            "(SELECT COUNT(*) FROM dead_letters d WHERE d.subscription_id = s.id AND d.state = 'dead') "
            "FROM subscriptions s WHERE s.tenant_id = ? ORDER BY s.created_at",
            (tenant_id,),
        ).fetchall()
        return [
            {"id": r[0], "url": r[1], "types": json.loads(r[2]) if r[2] else None, "created_at": r[3],
             "delivery": {"delivered": r[7], "retrying": r[6] > 0, "attempts": r[6], "dead_lettered": r[8],
                          "dead_letters_open": r[12], "last_error": r[9], "last_error_at": r[10],
                          "last_success_at": r[11]}}
            for r in rows
        ]

    def delete_subscription(self, tenant_id: int, sub_id: str) -> bool:
        with self.db:
            gone = self.db.execute("DELETE FROM subscriptions WHERE id = ? AND tenant_id = ?", (sub_id, tenant_id))
            if gone.rowcount:
                self.db.execute("DELETE FROM dead_letters WHERE subscription_id = ?", (sub_id,))
        return bool(gone.rowcount)

    # ---- delivery progress --------------------------------------------------------------------

    def start_batch(self, sub_id: str, until_seq: int) -> float:
        """Fix the in-flight batch (cursor, until_seq]; returns when it was first tried."""
        now = time.time()
        with self.db:
            self.db.execute(
                "UPDATE subscriptions SET inflight_until = ?, inflight_since = ?, attempts = 0 WHERE id = ?",
                (until_seq, now, sub_id),
            )
        return now

    def batch_delivered(self, sub_id: str, until_seq: int, n: int) -> None:
        with self.db:
            self.db.execute(
                "UPDATE subscriptions SET cursor = ?, inflight_until = NULL, inflight_since = NULL, attempts = 0, "
                "delivered = delivered + ?, last_success_at = ? WHERE id = ?",
                (until_seq, n, time.time(), sub_id),
            )

    def batch_failed(self, sub_id: str, attempts: int, error: str) -> None:
        with self.db:
            self.db.execute(
                "UPDATE subscriptions SET attempts = ?, last_error = ?, last_error_at = ? WHERE id = ?",
                (attempts, error[:500], time.time(), sub_id),
            )

    def dead_letter_batch(self, sub_id: str, after_seq: int, until_seq: int, n: int, attempts: int, error: str) -> None:
        """Give up on the in-flight batch: record it as a dead letter and move the cursor past it."""
        now = time.time()
        with self.db:
            self.db.execute(
                "INSERT INTO dead_letters (subscription_id, after_seq, until_seq, signals, attempts, last_error, "
                "dead_at, state) VALUES (?, ?, ?, ?, ?, ?, ?, 'dead')",
                (sub_id, after_seq, until_seq, n, attempts, error[:500], now),
            )
            self.db.execute(
                "UPDATE subscriptions SET cursor = ?, inflight_until = NULL, inflight_since = NULL, attempts = 0, "
                "dead_lettered = dead_lettered + ?, last_error = ?, last_error_at = ? WHERE id = ?",
                (until_seq, n, error[:500], now, sub_id),
            )

    # ---- dead letters -------------------------------------------------------------------------

    def dead_letters(self, sub_id: str) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT id, after_seq, until_seq, signals, attempts, last_error, dead_at, state FROM dead_letters "
            "WHERE subscription_id = ? ORDER BY id",
            (sub_id,),
        ).fetchall()
        return [
            {"id": r[0], "webhook_id": webhook_id(sub_id, r[1], r[2]), "signals": r[3], "attempts": r[4],
             "last_error": r[5], "dead_at": r[6], "state": r[7]}
            for r in rows
        ]

    def mark_redeliver(self, sub_id: str, dead_letter_id: int) -> bool:
        with self.db:
            cur = self.db.execute(
                "UPDATE dead_letters SET state = 'redeliver' WHERE id = ? AND subscription_id = ? AND state = 'dead'",
                (dead_letter_id, sub_id),
            )
        return bool(cur.rowcount)

    def next_redelivery(self, sub_id: str) -> tuple[int, int, int] | None:
        """(dead letter id, after_seq, until_seq) of the oldest dead letter queued for redelivery."""
        return self.db.execute(
            "SELECT id, after_seq, until_seq FROM dead_letters WHERE subscription_id = ? AND state = 'redeliver' "
            "ORDER BY id LIMIT 1",
            (sub_id,),
        ).fetchone()

    def redelivery_done(self, dead_letter_id: int, delivered: bool, attempts: int, error: str | None) -> None:
        with self.db:
            self.db.execute(
                "UPDATE dead_letters SET state = ?, attempts = attempts + ?, last_error = COALESCE(?, last_error), "
                "dead_at = CASE WHEN ? THEN dead_at ELSE ? END WHERE id = ?",
                ("delivered" if delivered else "dead", attempts, error, delivered, time.time(), dead_letter_id),
            )


def webhook_id(sub_id: str, after_seq: int, until_seq: int) -> str:
    """The Standard Webhooks message id of a batch: the same for every retry of it, here or after a restart."""
    # Hashed: sequence numbers are shared by all tenants, so in clear they would tell a receiver others' volumes.
    return "msg_" + hashlib.sha256(f"{sub_id}:{after_seq}:{until_seq}".encode()).hexdigest()[:32]
