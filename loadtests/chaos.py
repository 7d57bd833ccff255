"""Chaos test of restarts: nudge is SIGKILLed again and again under ingest, erasure and config changes.

    python -m loadtests.chaos [--trials 30] [--seed N] [--work-dir DIR]

One data dir serves every trial, with tenants ``acme`` (short horizons) and ``globex``. A trial starts
``nudge serve``, waits until both tenants answer, checks that the log holds every acknowledged event and none
of an erased user's, runs 0.3-1.5 s of load (ingest clients, an eraser per tenant, a config changer for acme
that adds and removes the action ``wishlist`` while wishlist events are in flight, and changes ``horizon_s``),
then SIGKILLs the server: at a random moment, or in about a third of the trials the moment a temporary
snapshot file appears. After the last trial the server is stopped gracefully (SIGTERM) and started once more.

Prints the trials, kills (and those that landed while a snapshot was being written), acknowledged and lost
events, erasures, config changes applied and refused, seconds from start to ready, and every defect (a 500, an
unexpected answer) and failed restart with the server log's tail. Exits 1 when anything failed. Without
``--work-dir`` the data dir lives in a temporary directory that is removed afterwards.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from model import DEFAULT_ACTIONS, TenantConfig
from server import Store
from server.event_log import logged_events

from ._server_proc import StartFailed, free_port, log_tail, start_server, wait_ready

ACTIONS = ("view",) * 6 + DEFAULT_ACTIONS  # mostly views, as real traffic
WISHLIST = "wishlist"
USERS = 300
LIVE_VICTIMS = 8
VICTIM_SHARE = 0.1
WISHLIST_SHARE = 0.05
READY_TIMEOUT_S = 60.0
LOAD_S = (0.3, 1.5)
SNAPSHOT_HUNT_S = 2.0
GRACEFUL_STOP_S = 30.0
SETTINGS = {"snapshot_interval_s": "0.2", "rate_limit_per_s": "0"}
# Finished snapshots and the files kept beside them on purpose (erasure journal, unreadable ones set aside).
# Anything else in the folder is a snapshot being written, whatever its temporary name.
_SETTLED_SNAPSHOT_FILE = re.compile(r"tenant-\d+\.(npz|erased)|.*\.unreadable-.*")
Answer = tuple[int, Any]


@dataclass
class Tally:
    """What one chaos run saw."""

    seed: int
    trials: int = 0
    kills: int = 0
    snapshot_hunts: int = 0
    kills_in_snapshot: int = 0
    graceful_exit: int | None = None
    acknowledged: int = 0
    lost: int = 0
    lost_examples: list[str] = field(default_factory=list)
    erasures: int = 0
    erasure_violations: list[str] = field(default_factory=list)
    config_applied: int = 0
    config_refused: int = 0
    removals_racing_ingest: int = 0
    ingest_answers: collections.Counter = field(default_factory=collections.Counter)
    ready_s: list[float] = field(default_factory=list)
    recovery_s: list[float] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)
    restart_failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def problems(self) -> list[str]:
        """Everything that fails the run, one line each."""
        out = [f"restart failed: {f.splitlines()[0]}" for f in self.restart_failures]
        if self.lost:
            out.append(f"{self.lost} acknowledged events lost, e.g. {self.lost_examples}")
        out += [f"erasure not kept: {v}" for v in self.erasure_violations]
        out += [f"defect: {d}" for d in self.defects]
        if self.graceful_exit not in (None, 0):
            out.append(f"graceful stop exited with {self.graceful_exit}")
        return out

    def report(self) -> str:
        lines = [
            f"chaos run: seed {self.seed}, {self.seconds:.1f} s",
            f"trials: {self.trials}",
            f"kills: {self.kills} ({self.snapshot_hunts} waited for a temporary snapshot; "
            f"{self.kills_in_snapshot} landed while a snapshot was being written)",
            f"graceful stop: {'not reached' if self.graceful_exit is None else f'exit code {self.graceful_exit}'}",
            f"acknowledged events: {self.acknowledged}",
            f"lost events: {self.lost}",
            f"erasures: {self.erasures} (violations: {len(self.erasure_violations)})",
            f"config changes: {self.config_applied} applied, {self.config_refused} refused; "
            f"{self.removals_racing_ingest} wishlist removals overlapped wishlist ingest",
            "ingest answers: " + ", ".join(f"{k}: {v}" for k, v in sorted(self.ingest_answers.items())),
            f"start to ready, s (min/median/max over {len(self.ready_s)} starts): {_spread(self.ready_s)}",
            f"server's own recovery, s (min/median/max): {_spread(self.recovery_s)}",
            f"defects: {len(self.defects)}",
            *(f"  {d}" for d in self.defects[:20]),
            f"restart failures: {len(self.restart_failures)}",
            *self.restart_failures,
        ]
        return "\n".join(lines)


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"


@dataclass
class Victims:
    """Users who are erased later: they get events only before their erasure is sent."""

    prefix: str
    live: list[str] = field(default_factory=list)
    sent: set[str] = field(default_factory=set)
    in_flight: collections.Counter = field(default_factory=collections.Counter)
    # Retired (no more events) but no 200 yet: their events may or may not be in the log.
    doomed: set[str] = field(default_factory=set)
    erased: set[str] = field(default_factory=set)
    with_wishlist: set[str] = field(default_factory=set)
    # The one live victim that gets wishlist events: few users hold them, so erasing them is quick.
    wishlister: str | None = None
    created: int = 0

    def pick(self, rng: random.Random) -> str:
        while len(self.live) < LIVE_VICTIMS:
            self.live.append(f"{self.prefix}-victim-{self.created}")
            self.created += 1
        return rng.choice(self.live)

    def pick_wishlister(self, rng: random.Random) -> str:
        if self.wishlister is None:
            self.wishlister = self.pick(rng)
            self.with_wishlist.add(self.wishlister)
        return self.wishlister

    def next_to_erase(self, rng: random.Random) -> str | None:
        """A victim whose erasure never got its 200 first, else a live one that was sent events."""
        if self.doomed:
            return rng.choice(sorted(self.doomed))
        ready = [v for v in self.live if v in self.sent and self.in_flight[v] <= 0]
        return rng.choice(ready) if ready else None

    def retire(self, victim: str) -> None:
        if victim in self.live:
            self.live.remove(victim)
        if victim == self.wishlister:
            self.wishlister = None
        self.doomed.add(victim)

    def confirm(self, victim: str) -> None:
        self.doomed.discard(victim)
        self.with_wishlist.discard(victim)
        self.erased.add(victim)

    def unsure(self) -> set[str]:
        """Users whose logged events may rightly be gone."""
        return self.doomed | self.erased


@dataclass
class TenantLoad:
    name: str
    tenant_id: int
    key: str
    victims: Victims
    # Whether ingest clients may send wishlist events now (acme only).
    wishlist_open: bool = False
    wishlist_in_flight: int = 0
    wishlist_batches: int = 0

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def _temp_snapshots(snap_dir: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of every file in the snapshot folder that is not a finished snapshot or its companion."""
    found = {}
    try:
        entries = list(snap_dir.iterdir())
    except FileNotFoundError:
        return found
    for path in entries:
        if _SETTLED_SNAPSHOT_FILE.fullmatch(path.name):
            continue
        try:
            st = path.stat()
        except FileNotFoundError:
            continue  # renamed into place while we looked
        found[path.name] = (st.st_ino, st.st_mtime_ns)
    return found


def _new_temp_snapshots(snap_dir: Path, before: dict[str, tuple[int, int]]) -> list[str]:
    # A temp file left by an earlier kill stays until that tenant's next snapshot: only new writes count.
    return [name for name, stamp in _temp_snapshots(snap_dir).items() if before.get(name) != stamp]


def _kill_on_temp_snapshot(proc: subprocess.Popen, snap_dir: Path, before: dict, timeout_s: float) -> None:
    """SIGKILL the server the moment a temporary snapshot file is written (or after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not _new_temp_snapshots(snap_dir, before):
        time.sleep(0.0005)
    proc.send_signal(signal.SIGKILL)


async def _stop(proc: subprocess.Popen, sig: signal.Signals) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            await asyncio.to_thread(proc.wait, GRACEFUL_STOP_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)


def _read_log(db_path: Path) -> tuple[set[tuple[int, str]], set[tuple[int, str]]]:
    """(tenant_id, event_id) and (tenant_id, user_id) pairs in the event log, read-only beside the server."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        rows = [(t, e, u) for t, u, e, _ in logged_events(db)]
    finally:
        db.close()
    return {(t, e) for t, e, _ in rows}, {(t, u) for t, _, u in rows}


def _with_wishlist(config: dict) -> dict:
    return {"actions": [*config["actions"], WISHLIST], "prior_means": {**config["prior_means"], WISHLIST: 0.3}}


def _without_wishlist(config: dict) -> dict:
    # A prior mean for an action outside the vocabulary is refused: both go together.
    return {"actions": [a for a in config["actions"] if a != WISHLIST],
            "prior_means": {a: m for a, m in config["prior_means"].items() if a != WISHLIST}}


class Chaos:
    """Trials against one data dir; the tally, the acknowledged events and the victims outlive each server."""

    def __init__(self, work_dir: Path, seed: int):
        self.data_dir = work_dir / "data"
        self.log_path = work_dir / "server.log"
        self.snap_dir = self.data_dir / "snapshots"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.rng = random.Random(seed)
        self.tally = Tally(seed)
        self.acked: dict[tuple[int, str], str] = {}
        self.lost: set[tuple[int, str]] = set()
        self.tenants = self._create_tenants()
        self.starts = 0

    def _create_tenants(self) -> list[TenantLoad]:
        store = Store(self.data_dir)
        try:
            configs = {"acme": TenantConfig(horizon_s=30.0, allowed_lateness_s=5.0, recency_half_life_s=60.0),
                       "globex": TenantConfig()}
            out = []
            for name, config in configs.items():
                tenant, key = store.create_tenant(name, config)
                out.append(TenantLoad(name, tenant.id, key, Victims(name)))
            return out
        finally:
            store.close()

    @property
    def acme(self) -> TenantLoad:
        return self.tenants[0]

    async def run(self, trials: int) -> Tally:
        started = time.monotonic()
        modes = ["snapshot" if self.rng.random() < 1 / 3 else "random" for _ in range(trials)]
        try:
            for mode in [*modes, "graceful"]:
                if not await self._life(mode):
                    break  # every later start reads the same data dir: it would fail the same way
            else:
                await self._life(None)
        finally:
            self.tally.seconds = time.monotonic() - started
        return self.tally

    async def _life(self, stop_mode: str | None) -> bool:
        """Start, check, load, stop as ``stop_mode`` says (None: leave the load out, stop gracefully)."""
        for tenant in self.tenants:
            tenant.victims.in_flight.clear()  # nothing of an earlier server's can land any more
        proc = start_server(self.data_dir, self.port, self.log_path, **SETTINGS)
        self.starts += 1
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
                try:
                    await self._wait_serving(session, proc)
                except StartFailed as exc:
                    self.tally.restart_failures.append(
                        f"start {self.starts} (after {self.tally.kills} kills): {exc}\n"
                        f"--- server log tail ---\n{log_tail(self.log_path)}")
                    return False
                await self._check(session)
                if stop_mode is not None:
                    await self._load_then_stop(session, proc, stop_mode)
        finally:
            await _stop(proc, signal.SIGTERM if stop_mode is None else signal.SIGKILL)
        return True

    # ---- start-up and checks ----------------------------------------------------------------------

    async def _wait_serving(self, session: aiohttp.ClientSession, proc: subprocess.Popen) -> None:
        """Both tenants answer, not 503, within READY_TIMEOUT_S of the start; else StartFailed."""
        started = time.monotonic()
        deadline = started + READY_TIMEOUT_S
        ready = await wait_ready(session, self.base, proc, READY_TIMEOUT_S)
        while True:
            answers = {t.name: await self._call(session, t, "GET", "/v1/config") for t in self.tenants}
            if all(a is not None and a[0] != 503 for a in answers.values()):
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                statuses = {name: a[0] if a else "no answer" for name, a in answers.items()}
                raise StartFailed(f"/readyz said ready but the tenants answered {statuses}")
            await asyncio.sleep(0.1)
        self.tally.ready_s.append(time.monotonic() - started)
        self.tally.recovery_s.append(float(ready.get("recovery", {}).get("seconds", 0.0)))
        for tenant, (status, body) in zip(self.tenants, answers.values()):
            if self._judge(f"GET /v1/config of {tenant.name}", status, body, refused=()):
                tenant.wishlist_open = WISHLIST in body["actions"]

    async def _check(self, session: aiohttp.ClientSession) -> None:
        """Every acknowledged event is in the log; every erased user is gone from the log and the API."""
        events, users = await asyncio.to_thread(_read_log, self.data_dir / "nudge.sqlite3")
        unsure = {(t.tenant_id, u) for t in self.tenants for u in t.victims.unsure()}
        for (tenant_id, event_id), user in self.acked.items():
            if (tenant_id, event_id) not in events and (tenant_id, user) not in unsure:
                self.lost.add((tenant_id, event_id))
        self.tally.lost = len(self.lost)
        self.tally.lost_examples = sorted(e for _, e in self.lost)[:5]
        checks = [self._check_erased(session, t, u, (t.tenant_id, u) in users)
                  for t in self.tenants for u in sorted(t.victims.erased)]
        limit = asyncio.Semaphore(8)

        async def limited(check):
            async with limit:
                await check

        await asyncio.gather(*(limited(c) for c in checks))

    async def _check_erased(self, session, tenant: TenantLoad, user: str, in_log: bool) -> None:
        if in_log:
            self.tally.erasure_violations.append(f"{tenant.name}/{user} still has events in the log")
        answer = await self._call(session, tenant, "GET", f"/v1/users/{user}")
        if answer is None or answer[0] != 404:
            got = answer[0] if answer else "no answer"
            self.tally.erasure_violations.append(f"GET /v1/users/{user} of {tenant.name} answered {got}, not 404")

    # ---- load and the kill ------------------------------------------------------------------------

    async def _load_then_stop(self, session: aiohttp.ClientSession, proc: subprocess.Popen, mode: str) -> None:
        stop = asyncio.Event()
        trial = self.tally.trials
        tasks = []
        for tenant in self.tenants:
            rng = random.Random(self.rng.random())
            tasks += [self._ingest(session, tenant, random.Random(rng.random()), stop, f"t{trial}-c{i}")
                      for i in range(rng.randint(4, 8))]
            tasks.append(self._eraser(session, tenant, random.Random(rng.random()), stop))
        tasks.append(self._config_changer(session, self.acme, random.Random(self.rng.random()), stop))
        running = [asyncio.ensure_future(t) for t in tasks]
        before = _temp_snapshots(self.snap_dir)
        try:
            await asyncio.sleep(self.rng.uniform(*LOAD_S))
            if proc.poll() is not None:
                self.tally.defects.append(f"the server exited by itself during trial {trial} "
                                          f"with code {proc.returncode}")
            elif mode == "graceful":
                await self._graceful_stop(proc)
            else:
                await self._kill(proc, mode, before)
        finally:
            stop.set()
            await asyncio.gather(*running)

    async def _kill(self, proc: subprocess.Popen, mode: str, before: dict) -> None:
        if mode == "snapshot":
            self.tally.snapshot_hunts += 1
            await asyncio.to_thread(_kill_on_temp_snapshot, proc, self.snap_dir, before, SNAPSHOT_HUNT_S)
        else:
            proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.wait, 10)
        self.tally.trials += 1
        self.tally.kills += 1
        if _new_temp_snapshots(self.snap_dir, before):
            self.tally.kills_in_snapshot += 1

    async def _graceful_stop(self, proc: subprocess.Popen) -> None:
        proc.send_signal(signal.SIGTERM)
        try:
            self.tally.graceful_exit = await asyncio.to_thread(proc.wait, GRACEFUL_STOP_S)
        except subprocess.TimeoutExpired:
            self.tally.defects.append(f"SIGTERM did not stop the server within {GRACEFUL_STOP_S:g} s")

    # ---- the clients ------------------------------------------------------------------------------

    async def _call(self, session, tenant: TenantLoad, method: str, path: str, body: Any = None) -> Answer | None:
        """(status, decoded body), or None when the server is gone or did not answer in time."""
        try:
            async with session.request(method, self.base + path, json=body, headers=tenant.headers) as r:
                raw = await r.read()
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return None
        try:
            return r.status, json.loads(raw)
        except ValueError:
            return r.status, raw.decode(errors="replace")[:200]

    def _judge(self, what: str, status: int, body: Any, refused: tuple[int, ...] = (400, 409, 503)) -> bool:
        """True for a 200; False for an expected refusal; anything else is a defect, recorded."""
        if status == 200:
            return True
        # A tenant past its share of the ingest backlogs while the other ingests too: shedding, like a 503.
        over_share = status == 429 and isinstance(body, dict) and body.get("error", {}).get("code") == "tenant_over_share"
        if status not in refused and not over_share:
            self.tally.defects.append(f"{what} answered {status}: {json.dumps(body)[:300]}")
        return False

    def _batch(self, tenant: TenantLoad, rng: random.Random, prefix: str) -> tuple[list[dict], set[str]]:
        events, victims = [], set()
        for j in range(rng.randint(1, 60)):
            if tenant.wishlist_open and rng.random() < WISHLIST_SHARE:
                # Wishlist events go to a victim only: its erasure is what lets the action be removed again.
                user, action = tenant.victims.pick_wishlister(rng), WISHLIST
                victims.add(user)
            elif rng.random() < VICTIM_SHARE:
                user, action = tenant.victims.pick(rng), rng.choice(ACTIONS)
                victims.add(user)
            else:
                user, action = f"{tenant.name}-user-{rng.randrange(USERS)}", rng.choice(ACTIONS)
            events.append({"user_id": user, "action": action, "event_id": f"{prefix}-{j}"})
        tenant.victims.sent |= victims
        return events, victims

    async def _ingest(self, session, tenant: TenantLoad, rng: random.Random, stop: asyncio.Event, name: str) -> None:
        n = 0
        while not stop.is_set():
            batch, victims = self._batch(tenant, rng, f"{name}-{n}")
            n += 1
            wishlist = any(e["action"] == WISHLIST for e in batch)
            tenant.victims.in_flight.update(victims)
            tenant.wishlist_in_flight += wishlist
            tenant.wishlist_batches += wishlist
            answer = await self._call(session, tenant, "POST", "/v1/events", {"events": batch})
            tenant.wishlist_in_flight -= wishlist
            if answer is None:
                # The batch may still land while this server lives: its victims stay busy until the next start.
                await asyncio.sleep(0.01)
                continue
            tenant.victims.in_flight.subtract(victims)
            status, body = answer
            self.tally.ingest_answers[status] += 1
            if not self._judge(f"POST /v1/events of {tenant.name}", status, body):
                continue
            if body.get("accepted", 0) + body.get("duplicates", 0) != len(batch):
                self.tally.defects.append(f"a batch of {len(batch)} events was answered {body}")
                continue
            for e in batch:
                self.acked[(tenant.tenant_id, e["event_id"])] = e["user_id"]
            self.tally.acknowledged = len(self.acked)

    async def _eraser(self, session, tenant: TenantLoad, rng: random.Random, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(rng.uniform(0.05, 0.25))
            victim = tenant.victims.next_to_erase(rng)
            if victim is not None:
                await self._erase(session, tenant, victim, stop)

    async def _erase(self, session, tenant: TenantLoad, victim: str, stop: asyncio.Event) -> None:
        tenant.victims.retire(victim)
        # A batch already on its way could land after the erasure: wait for its answer first.
        while tenant.victims.in_flight[victim] > 0:
            if stop.is_set():
                return
            await asyncio.sleep(0.005)
        answer = await self._call(session, tenant, "DELETE", f"/v1/users/{victim}")
        if answer is not None and self._judge(f"DELETE /v1/users of {tenant.name}", *answer, refused=(503,)):
            tenant.victims.confirm(victim)
            self.tally.erasures += 1

    async def _config_changer(self, session, tenant: TenantLoad, rng: random.Random, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(rng.uniform(0.0, 0.2))
            answer = await self._call(session, tenant, "GET", "/v1/config")
            if answer is None or not self._judge(f"GET /v1/config of {tenant.name}", *answer, refused=(503,)):
                continue
            config = answer[1]
            if rng.random() < 0.25:
                await self._put_config(session, tenant, {"horizon_s": 45.0 if config["horizon_s"] == 30.0 else 30.0})
            elif WISHLIST not in config["actions"]:
                if await self._put_config(session, tenant, _with_wishlist(config)):
                    tenant.wishlist_open = True
            else:
                await self._remove_wishlist(session, tenant, config, stop)

    async def _remove_wishlist(self, session, tenant: TenantLoad, config: dict, stop: asyncio.Event) -> None:
        # The server refuses the removal while the log holds wishlist events: erase their users first.
        tenant.wishlist_open = False
        await asyncio.gather(*(self._erase(session, tenant, v, stop) for v in sorted(tenant.victims.with_wishlist)))
        if stop.is_set():
            return
        # Reopened before the removal is sent: wishlist ingest in flight while it is removed is the race to provoke.
        tenant.wishlist_open = True
        await asyncio.sleep(0.01)
        in_flight, batches = tenant.wishlist_in_flight, tenant.wishlist_batches
        if await self._put_config(session, tenant, _without_wishlist(config)):
            tenant.wishlist_open = False
        self.tally.removals_racing_ingest += in_flight > 0 or tenant.wishlist_batches != batches

    async def _put_config(self, session, tenant: TenantLoad, change: dict) -> bool:
        answer = await self._call(session, tenant, "PUT", "/v1/config", change)
        if answer is None:
            return False
        applied = self._judge(f"PUT /v1/config {sorted(change)} of {tenant.name}", *answer)
        if applied:
            self.tally.config_applied += 1
        else:
            self.tally.config_refused += 1
        return applied


async def run_chaos(work_dir: Path, trials: int = 30, seed: int = 0) -> Tally:
    """Run ``trials`` kill-and-restart trials on a fresh data dir under ``work_dir``; the tally of what happened."""
    return await Chaos(work_dir, seed).run(trials)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--seed", type=int, default=None, help="default: from the clock (printed)")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the data dir and server.log here")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else time.time_ns() % 2**32
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="nudge-chaos-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        tally = asyncio.run(run_chaos(work_dir, args.trials, seed))
    finally:
        if args.work_dir is None:
            shutil.rmtree(work_dir, ignore_errors=True)
    print(tally.report())
    problems = tally.problems()
    print("\nFAILED:\n" + "\n".join(problems) if problems else "\nPASSED")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
