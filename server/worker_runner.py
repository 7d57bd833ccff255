"""What runs beside a worker, on its thread or in its process: the steps that read storage between its commands.

A worker holds no storage. Recovering a tenant (its snapshot, then the log after it, then its signal policy) and
swapping in a rebuilt engine (after the log's last events) read the log between commands that must not let the
tenant's other commands in between; the runner takes those steps where the worker runs, with a log reader of its
own, and passes every other command to the worker.

In a worker process the runner also builds a tenant's engine for a config change, beside the live one, on a builder
thread of its own: the new engine never crosses a pipe, and the server's process does none of its work. (A worker
process is a daemon, which may not start a child of its own: the replay shares the worker's GIL, and so slows only
the tenants of that worker.)
"""
from __future__ import annotations

import concurrent.futures
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core import Worker
from core import commands as c
from model import Engine, TenantConfig

from . import rebuild
from .ports import Snapshots
from .snapshots import SnapshotFiles, SnapshotUnreadable, snapshots_folder
from .storage import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recover:
    """Open a tenant from its latest snapshot (where its engine settings still apply) and the log after it, and
    its signal policy from the signal log. Replies with a :class:`Recovered`."""

    tenant_id: int
    config: TenantConfig


@dataclass(frozen=True)
class Recovered:
    snapshot_seq: int  # the snapshot's log position (0: none was used)
    applied_seq: int
    users: int
    replayed: int  # events replayed from the log after the snapshot
    from_snapshot: bool
    erased_since_snapshot: bool  # users journalled as erased are still in the snapshot file
    set_aside: list[tuple[str, str]] = field(default_factory=list)  # (kept as, why): unreadable snapshots


@dataclass(frozen=True)
class SwapIn:
    """Serve ``engine``, rebuilt under ``config``, once the log's last events are applied to it: an Engine where the
    worker runs in the server's process, None in a worker process for the one :class:`Build` made there. Replies
    (events replayed, seconds the step took, applied_seq, users)."""

    tenant_id: int
    engine: Any
    config: TenantConfig


@dataclass(frozen=True)
class Build:
    """Build the tenant's engine under ``config`` from its log up to ``until_seq`` (where the log ended when the
    change came: a log growing as fast as a replay reads must not keep the build from replying), beside the live
    one and off the worker's thread. Replies a future of (events replayed, applied_seq). ``SwapIn(engine=None)``
    serves it."""

    tenant_id: int
    config: TenantConfig
    until_seq: int | None = None


@dataclass(frozen=True)
class CatchUpBuild:
    """Apply what the log gained (up to ``until_seq``) to the engine being built; replies a future of (events
    replayed, applied_seq)."""

    tenant_id: int
    until_seq: int | None = None


@dataclass(frozen=True)
class DropBuild:
    """Forget the engine being built for the tenant (its change was given up); replies a future of None."""

    tenant_id: int


@dataclass(frozen=True)
class SaveSnapshot:
    """Capture the tenant's engine (on the worker's thread) and write it to its snapshot file (on the runner's
    writer thread, in capture order), then clear its erasure journal. Replies a future of the applied_seq the
    snapshot holds, done once the file is durable: the engine's state never leaves the process it lives in."""

    tenant_id: int


@dataclass(frozen=True)
class Sync:
    """Nothing: replies once the tenant's commands sent before it have run (and their signals gone to the sink)."""

    tenant_id: int


@dataclass(frozen=True)
class Close:
    """Close the runner's storage (sent last, on any lane)."""

    tenant_id: int = -1


class Runner:
    """A worker and its log reader (opened on first use, on the thread that uses it)."""

    def __init__(self, worker: Worker, data_dir: Path, snapshots: Snapshots | None = None):
        self.worker = worker
        self.data_dir = Path(data_dir)
        self.snapshots = snapshots if snapshots is not None else SnapshotFiles(snapshots_folder(self.data_dir))
        self._reader: Store | None = None
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nudge-snapshot-writer")
        # Engines being built for config changes: only the builder thread touches them until their SwapIn, which
        # the server sends once their last Build or CatchUpBuild has replied.
        self._builder = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nudge-builder")
        self._builder_reader: Store | None = None  # opened and used on the builder thread
        self._builds: dict[int, Engine] = {}

    @property
    def reader(self) -> Store:
        if self._reader is None:
            self._reader = Store(self.data_dir)
        return self._reader

    def handle(self, command: Any) -> c.Reply:
        step = _STEPS.get(type(command))
        return step(self, command) if step is not None else self.worker.handle(command)

    def apply_joined(self, commands: list[c.Apply]) -> list[c.Reply]:
        return self.worker.apply_joined(commands)

    def _recover(self, cmd: Recover) -> c.Reply:
        tenant_id, config, snapshots = cmd.tenant_id, cmd.config, self.snapshots
        aside: list[tuple[str, str]] = []
        try:
            snap = snapshots.load_snapshot(tenant_id)
        except SnapshotUnreadable as exc:
            aside.append((snapshots.set_aside_snapshot(tenant_id), str(exc)))
            snap = None
        # None, or made under other engine settings: the log rebuilds the state.
        usable = snap is not None and snap[1] == config.engine_dict()
        journal = snapshots.erased_since_snapshot(tenant_id)
        opened: c.Opened = self.worker.handle(c.Open(tenant_id, config, snap[0] if usable else None,
                                                     tuple(journal) if usable else ())).result
        if opened.unreadable:
            aside.append((snapshots.set_aside_snapshot(tenant_id), opened.problem))
        elif opened.problem:
            log.warning("snapshot of tenant %d: %s; replaying the whole log", tenant_id, opened.problem)
        replayed, applied_seq, users = self._replay(tenant_id, config, opened.applied_seq)
        resolutions = self._restore_policy(tenant_id, config)
        recovered = Recovered(opened.applied_seq, applied_seq, users, replayed,
                              usable and opened.problem is None, bool(journal), aside)
        return c.Reply(recovered, [], resolutions)

    def _replay(self, tenant_id: int, config: TenantConfig, after_seq: int) -> tuple[int, int, int]:
        """The tenant's log after ``after_seq``, to learn from: (events, applied_seq, users)."""
        replayed, applied_seq, users = 0, after_seq, len(self.worker.shards[tenant_id].engine.windows.index)
        for batch, seqs in self.reader.read_events(tenant_id, config, after_seq=after_seq):
            applied: c.Applied = self.worker.handle(c.Apply(tenant_id, batch, seqs, config, live=False)).result
            replayed, applied_seq, users = replayed + applied.events, applied.applied_seq, applied.users
        return replayed, applied_seq, users

    def _restore_policy(self, tenant_id: int, config: TenantConfig) -> list:
        reader = self.reader
        recent, rewards = reader.policy_rows(tenant_id, time.time() - max(86400.0, config.signal_horizon_s))
        # A conversion may have been applied while its resolution still waited to be written: the log knows.
        converted = {}
        for signal_id, user_id, _, _, created_at, _, resolved in recent:
            if not resolved:
                ts = reader.first_conversion(tenant_id, user_id, config.conversion_action,
                                             created_at - 1.0, created_at + config.signal_horizon_s)
                if ts is not None:
                    converted[signal_id] = ts
        reply = self.worker.handle(c.RestorePolicy(tenant_id, recent, rewards, reader.open_signals(tenant_id),
                                                   converted))
        return reply.resolutions

    def _build(self, cmd: Build) -> c.Reply:
        def build() -> tuple[int, int]:
            engine = self._builds[cmd.tenant_id] = Engine(cmd.config, backend=self.worker.backend)
            return rebuild.replay(engine, self._builder_store(), cmd.tenant_id, cmd.until_seq), engine.applied_seq

        return c.Reply(self._builder.submit(build))

    def _catch_up_build(self, cmd: CatchUpBuild) -> c.Reply:
        def catch_up() -> tuple[int, int]:
            engine = self._builds[cmd.tenant_id]
            return rebuild.replay(engine, self._builder_store(), cmd.tenant_id, cmd.until_seq), engine.applied_seq

        return c.Reply(self._builder.submit(catch_up))

    def _drop_build(self, cmd: DropBuild) -> c.Reply:
        def drop() -> None:  # on the builder thread: after the build it drops, whatever stage that is at
            self._builds.pop(cmd.tenant_id, None)

        return c.Reply(self._builder.submit(drop))

    def _builder_store(self) -> Store:
        if self._builder_reader is None:
            self._builder_reader = Store(self.data_dir)
        return self._builder_reader

    def _swap_in(self, cmd: SwapIn) -> c.Reply:
        started = time.perf_counter()
        engine = cmd.engine if cmd.engine is not None else self._builds.pop(cmd.tenant_id)
        replayed = 0
        for batch, seqs in self.reader.read_events(cmd.tenant_id, cmd.config, after_seq=engine.applied_seq):
            replayed += engine.apply(batch, seqs)
        self.worker.handle(c.Swap(cmd.tenant_id, engine, cmd.config))
        return c.Reply((replayed, time.perf_counter() - started, engine.applied_seq, len(engine.windows.index)))

    def _save_snapshot(self, cmd: SaveSnapshot) -> c.Reply:
        engine_state, applied_seq, settings = self.worker.handle(c.Snapshot(cmd.tenant_id)).result

        def write() -> int:
            # Captured after every erasure journalled so far: saving forgets them.
            self.snapshots.save_snapshot(cmd.tenant_id, engine_state, settings)
            return applied_seq

        return c.Reply(self._writer.submit(write))

    def _sync(self, cmd: Sync) -> c.Reply:
        return c.Reply()

    def _close(self, cmd: Close) -> c.Reply:
        self._writer.shutdown(wait=True)
        if self._builder_reader is not None:
            self._builder.submit(self._builder_reader.close).result()
        self._builder.shutdown(wait=True)
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        return c.Reply()


_STEPS = {Recover: Runner._recover, SwapIn: Runner._swap_in, SaveSnapshot: Runner._save_snapshot, Sync: Runner._sync,
          Close: Runner._close, Build: Runner._build, CatchUpBuild: Runner._catch_up_build,
          DropBuild: Runner._drop_build}
