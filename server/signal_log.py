"""The signal log: decisions and their outcomes, feedback, and reading signals for delivery and pull."""
from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from ._sql import select_in

_REWARD = (
    "INSERT INTO bandit_rewards (tenant_id, intent, variant, successes, failures) "
    "SELECT tenant_id, intent, variant, ?, ? FROM signals WHERE tenant_id = ? AND signal_id = ? AND withheld = 0 "
    "ON CONFLICT (tenant_id, intent, variant) DO UPDATE SET "
    "successes = successes + excluded.successes, failures = failures + excluded.failures"
)


class SignalLog:
    """Signal-log queries of :class:`server.storage.Store` (which owns ``self.db``)."""

    db: sqlite3.Connection

    def write_signals(self, writes: list[tuple[int, list, list]]) -> None:
        """(tenant_id, decisions, resolutions) groups in one transaction, in order."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for tenant_id, decisions, resolutions in writes:
                first = self._take_positions(tenant_id, len(decisions))
                self.db.executemany(
                    "INSERT INTO signals (tenant_id, tenant_seq, signal_id, user_id, intent, type, variant, payload, "
                    "score, created_at, withheld) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(tenant_id, first + i, d.signal_id, d.user_id, d.intent, d.type, d.variant, json.dumps(d.payload),
                      d.score, d.created_at, int(d.withheld)) for i, d in enumerate(decisions)],
                )
                for r in resolutions:
                    closed = self.db.execute(
                        "UPDATE signals SET outcome = ?, resolved_at = ? "
                        "WHERE tenant_id = ? AND signal_id = ? AND outcome IS NULL",
                        ("converted" if r.converted else "no_conversion", r.at, tenant_id, r.signal_id),
                    ).rowcount
                    if closed:
                        self.db.execute(_REWARD, (float(r.converted), float(not r.converted), tenant_id, r.signal_id))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def _take_positions(self, tenant_id: int, n: int) -> int:
        """The first of ``n`` consecutive per-tenant positions, reserved (inside the caller's transaction)."""
        if not n:
            return 0
        row = self.db.execute(
            "INSERT INTO signal_sequences (tenant_id, last) VALUES (?, ?) "
            "ON CONFLICT (tenant_id) DO UPDATE SET last = last + excluded.last RETURNING last",
            (tenant_id, n),
        ).fetchone()
        return row[0] - n + 1

    def policy_rows(self, tenant_id: int, since: float) -> tuple[list[tuple], list[tuple]]:
        """What ``SignalPolicy.restore`` needs: recent and open decisions, and rewards per variant."""
        recent = self.db.execute(
            "SELECT signal_id, user_id, intent, variant, created_at, withheld, outcome IS NOT NULL FROM signals "
            "WHERE tenant_id = ? AND (created_at >= ? OR outcome IS NULL) ORDER BY seq",
            (tenant_id, since),
        ).fetchall()
        rewards = self.db.execute(
            "SELECT intent, variant, successes, failures FROM bandit_rewards WHERE tenant_id = ?", (tenant_id,)
        ).fetchall()
        return recent, rewards

    def allocation_history(self, tenant_id: int, since: float, period_s: float) -> list[dict[str, Any]]:
        """Signals sent per period, intent and variant since ``since``: how the bandits split the traffic."""
        rows = self.db.execute(
            "SELECT CAST(created_at / ? AS INTEGER) * ? AS period, intent, variant, COUNT(*) FROM signals "
            "WHERE tenant_id = ? AND created_at >= ? AND withheld = 0 GROUP BY period, intent, variant "
            "ORDER BY period, intent, variant",
            (period_s, period_s, tenant_id, since),
        ).fetchall()
        return [{"period_start": float(p), "intent": i, "variant": v, "signals": n} for p, i, v, n in rows]

    def open_signals(self, tenant_id: int) -> list[dict[str, Any]]:
        """The tenant's unresolved sent signals, oldest first, as delivered."""
        rows = self.db.execute(
            "SELECT signal_id, user_id, intent, type, variant, payload, score, created_at FROM signals "
            "WHERE tenant_id = ? AND outcome IS NULL AND withheld = 0 ORDER BY seq", (tenant_id,)
        ).fetchall()
        return [_signal(row) for row in rows]

    def signal_owners(self, tenant_id: int, signal_ids: list[str]) -> dict[str, str]:
        """signal_id -> user_id of those of ``signal_ids`` that this tenant has."""
        return dict(select_in(
            self.db, "SELECT signal_id, user_id FROM signals WHERE tenant_id = ? AND signal_id IN ({marks})",
            (tenant_id,), signal_ids,
        ))

    def add_feedback(self, tenant_id: int, rows: list[tuple[str, str, str, float]]) -> None:
        """(signal_id, user_id, outcome, ts) rows."""
        now = time.time()
        with self.db:
            self.db.executemany(
                "INSERT INTO feedback (tenant_id, signal_id, user_id, outcome, ts, received_at) VALUES (?, ?, ?, ?, ?, ?)",
                [(tenant_id, *row, now) for row in rows],
            )

    def signal_stats(self, tenant_id: int, now: float, horizon_s: float) -> dict:
        """Counts for ``GET /v1/stats``: sent by type and variant, outcomes per group, the funnel, feedback.

        The complete cohort is the decisions whose horizon had closed by ``now`` (made before ``now - horizon_s``),
        whatever their outcome: a conversion closes a decision at once but a non-conversion only at the horizon's
        end, so closed decisions alone overstate the rate.
        """
        sent: dict[str, dict[str, int]] = {}
        funnel: dict[str, dict[str, int]] = {}
        for kind, variant, n, converted in self.db.execute(
            "SELECT type, variant, COUNT(*), SUM(outcome = 'converted') FROM signals "
            "WHERE tenant_id = ? AND withheld = 0 GROUP BY type, variant",
            (tenant_id,),
        ):
            sent.setdefault(kind, {})[variant] = n
            steps = funnel.setdefault(kind, {"sent": 0, "converted": 0})
            steps["sent"] += n
            steps["converted"] += converted or 0
        # Distinct signals per reported step; a reported conversion counts once beside an attributed one.
        for kind, outcome, n, unattributed in self.db.execute(
            "SELECT s.type, f.outcome, COUNT(DISTINCT f.signal_id), "
            "COUNT(DISTINCT CASE WHEN s.outcome IS NOT 'converted' THEN f.signal_id END) "
            "FROM feedback f JOIN signals s ON s.signal_id = f.signal_id "
            "WHERE f.tenant_id = ? AND s.withheld = 0 GROUP BY s.type, f.outcome",
            (tenant_id,),
        ):
            steps = funnel.setdefault(kind, {"sent": 0, "converted": 0})
            steps[outcome] = steps.get(outcome, 0) + (unattributed if outcome == "converted" else n)
        decided_before = now - horizon_s
        groups = {}
        for withheld, *counts in self.db.execute(
            "SELECT withheld, COUNT(*), SUM(outcome IS NULL), SUM(outcome = 'converted'), "
            "SUM(outcome = 'no_conversion'), SUM(created_at < ?), SUM(created_at < ? AND outcome = 'converted') "
            "FROM signals WHERE tenant_id = ? GROUP BY withheld",
            (decided_before, decided_before, tenant_id),
        ):
            total, open_, converted, expired, cohort, cohort_converted = (n or 0 for n in counts)
            groups["holdout" if withheld else "signalled"] = {
                "decisions": total, "open": open_, "converted": converted, "expired": expired,
                "withheld": total if withheld else 0,
                "cohort": {"decisions": cohort, "converted": cohort_converted}}
        feedback = dict(self.db.execute(
            "SELECT outcome, COUNT(*) FROM feedback WHERE tenant_id = ? GROUP BY outcome", (tenant_id,)
        ).fetchall())
        return {"sent": sent, "groups": groups, "decided_before": decided_before, "funnel": funnel,
                "feedback": feedback}

    def read_signals(
        self, tenant_id: int, after_seq: int, limit: int, types: list[str] | None = None, until_seq: int | None = None
    ) -> list[tuple[int, dict[str, Any]]]:
        """(seq, signal) of the tenant's sent (not withheld) signals after ``after_seq``, in order."""
        sql = ("SELECT seq, signal_id, user_id, intent, type, variant, payload, score, created_at FROM signals "
               "WHERE tenant_id = ? AND seq > ? AND withheld = 0")
        args: list[Any] = [tenant_id, after_seq]
        if until_seq is not None:
            sql += " AND seq <= ?"
            args.append(until_seq)
        if types:
            sql += f" AND type IN ({','.join('?' * len(types))})"
            args += types
        rows = self.db.execute(sql + " ORDER BY seq LIMIT ?", (*args, limit)).fetchall()
        return [(row[0], _signal(row[1:])) for row in rows]

    def pull_signals(self, tenant_id: int, after: int, limit: int) -> list[tuple[int, dict[str, Any]]]:
        """(tenant position, signal) of the tenant's sent signals after its position ``after``, in order."""
        rows = self.db.execute(
            "SELECT tenant_seq, signal_id, user_id, intent, type, variant, payload, score, created_at FROM signals "
            "WHERE tenant_id = ? AND tenant_seq > ? AND withheld = 0 ORDER BY tenant_seq LIMIT ?",
            (tenant_id, after, limit),
        ).fetchall()
        return [(row[0], _signal(row[1:])) for row in rows]

    def tenant_position(self, tenant_id: int, seq: int) -> int:
        """The tenant's position of its last signal at or before the shared ``seq`` (cursors of older nudges)."""
        row = self.db.execute(
            "SELECT MAX(tenant_seq) FROM signals WHERE tenant_id = ? AND seq <= ?", (tenant_id, seq)
        ).fetchone()
        return row[0] or 0

    def last_signal_seq(self) -> int:
        """The newest signal's sequence number across tenants (0 when there is none)."""
        row = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'signals'").fetchone()
        return int(row[0]) if row else 0

    def purge_signals(self, before: float) -> int:
        """Delete signals created before ``before`` (the retention period), and their feedback."""
        with self.db:
            self.db.execute(
                "DELETE FROM feedback WHERE signal_id IN (SELECT signal_id FROM signals WHERE created_at < ?)", (before,)
            )
            return self.db.execute("DELETE FROM signals WHERE created_at < ?", (before,)).rowcount


def _signal(row: tuple) -> dict[str, Any]:
    """A signal as delivered and pulled, from (signal_id, user_id, intent, type, variant, payload, score, created_at)."""
    sid, uid, intent, kind, variant, payload, score, created = row
    return {"signal_id": sid, "user_id": uid, "type": kind, "payload": json.loads(payload), "score": score,
            "intent": intent, "created_at": created, "variant": variant}
