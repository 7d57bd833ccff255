"""The long-lived parts of a running server, with no HTTP in them.

Threads: one owns the SQLite writer connection (every database call runs there, in order); the host runs the
worker (``core``: every tenant's engine, policy and predictor) on the device thread, where commands run in order per
tenant. Because an engine update is sent to the worker as soon as its group commit returns, and before the request
is acknowledged, a score requested after an acknowledged ingest always sees its events.
"""
from __future__ import annotations

import asyncio
import contextlib
import concurrent.futures
import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import msgpack
import numpy as np

import kernels
from core import Outcome, Shard, ThreadHost, Worker
from core import commands as cmd
from core.score_rows import packed_rows
from model import Engine, EventBatch, TenantConfig
from model.events import ConfigChanged, recode_events

from .activity import Activity
from . import rebuild
from .batcher import MicroBatcher, Overloaded
from .shares import Shares
from .config import ServerConfig
from .delivery import Deliveries, DeliverySettings
from .metrics import Metrics
from .models import HISTORY_LIMIT, ModelRejected, ModelSlot, ModelUnavailable, file_stamp, load_candidate, model_path
from .overload import LoopLag
from .ratelimit import TokenBucket
from .signal_writer import SignalWriter
from .snapshots import SnapshotFiles, snapshots_folder
from .stats import signal_stats_report
from .ports import EventLog, Snapshots, Storage
from .storage import Store, Tenant, hash_key
from .validation import Cursor
from .worker_process import ProcessHost
from .worker_runner import Build, CatchUpBuild, Close, DropBuild, Recover, Recovered, Runner, SaveSnapshot, SwapIn, Sync

log = logging.getLogger(__name__)


class NotReady(Exception):
    """Recovery has not finished yet."""


class SubscriptionLimit(Exception):
    """The tenant has as many subscriptions as the server allows."""


class TenantUnavailable(Exception):
    """The tenant's state could not be recovered; the message says why. Other tenants serve."""


# A tenant whose recovery failed is tried again on a request at most this often.
_RECOVERY_RETRY_S = 30.0
# GET /v1/scores/histogram scores at most this many of the tenant's users (a systematic sample beyond), in
# device-thread turns of at most _HISTOGRAM_CHUNK users, so scoring batches wait for one turn at most
# (a few ms on NumPy) and not for the whole histogram.
HISTOGRAM_MAX_USERS = 10_000
_HISTOGRAM_CHUNK = 2_500
_SHARED_LANE = "shared"  # the device thread's lane for calls that belong to no tenant
# Acknowledged events are applied in calls of at most this many events, so that another tenant's score waits for
# one of them (tens of ms), not for a whole group commit (up to max_commit_events). While other tenants are active,
# in shorter calls: beside a flood of 1000-event batches, another tenant's score p99 went from 1.5 s to 0.7 s and
# its refusals from 67 to 0 (bench --parts neighbours --config-changes 0); alone, a tenant keeps the longer calls,
# which ingest 10-20 % faster.
_APPLY_CHUNK = 2_000
_APPLY_CHUNK_SHARED = 500
# A rebuilt engine is swapped in (on the device thread, which replays what is left) once a catch-up round on the
# rebuild thread found at most this many new events: a swap costs the device thread milliseconds.
_REBUILD_SWAP_EVENTS = 2_000
# While a rebuilt engine is caught up, its tenant's ingest waits (then 503) whenever the log is this far ahead of
# it: a tenant sending as fast as a replay applies would otherwise keep its config change from ever finishing.
_REBUILD_MAX_LAG_EVENTS = 50_000


@dataclass
class TenantState:
    tenant: Tenant
    batcher: MicroBatcher
    bucket: TokenBucket
    model: ModelSlot
    shard: Shard | None  # the tenant's state in the worker, where it runs in this process: for tests and tools
    engine_config: TenantConfig  # the config the worker's engine serves under (the stored one, once caught up)
    applied_seq: int = 0  # the log position the worker's engine has applied, as its last reply said
    users: int = 0  # the users the worker's engine knows, as its last reply said
    snapshot_seq: int = 0
    # Held while a snapshot is captured and written, and through an erasure: snapshots are written in
    # the order their states were captured, and none captured before an erasure lands after it.
    snapshot_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    erased_since_snapshot: bool = False
    activity: Activity = field(default_factory=Activity)
    rebuild_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one engine rebuild at a time per tenant
    # One large body decoded and validated at a time per tenant: a burst of a tenant's admitted batches (about 5 ms of
    # Python each, on the event loop) then takes turns with every other request instead of holding them all.
    parse_turn: asyncio.Lock = field(default_factory=asyncio.Lock)
    parse_waiting: int = 0  # this tenant's bodies waiting for a turn (bounded: the rest are refused)
    logged_seq: int = 0  # the log position of the tenant's last committed event
    catching_up: Any = None  # a rebuilt engine (or its progress) being caught up with the log, before its swap
    catch_up_lag: int = 0  # while catching_up: how far the log may run ahead of it before ingest is held back

    @property
    def config(self) -> TenantConfig:
        """The stored config: what new requests are validated against (the engine catches up in order)."""
        return self.tenant.config

    @property
    def engine(self) -> Engine:
        """The worker's live engine (tests and tools: only the device thread may touch it while serving)."""
        if self.shard is None:
            raise RuntimeError("the tenant's engine lives in a worker process (workers >= 1)")
        return self.shard.engine


@dataclass
class _Pending:
    state: TenantState
    batch: EventBatch
    config: TenantConfig
    future: asyncio.Future


@dataclass
class _Reconfigure:
    """A config change, ordered among the ingest batches of the commit queue."""

    state: TenantState
    config: TenantConfig
    future: asyncio.Future


@dataclass
class _Unavailable:
    reason: str
    since: float  # time.monotonic() of the last attempt


@dataclass
class Recovery:
    state: str = "pending"
    tenants: int = 0
    from_snapshots: int = 0
    replayed_events: int = 0
    snapshots_set_aside: int = 0
    seconds: float = 0.0
    error: str | None = None
    unavailable_tenants: int = 0  # how many; which and why is logged, and told to each tenant's own requests

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Runtime:
    """Tenants, their engines and batchers, the group-committing event log and the snapshotter."""

    def __init__(self, config: ServerConfig, metrics: Metrics):
        self.config = config
        self.metrics = metrics
        self.backend = kernels.resolve_backend(config.backend)
        metrics.backend.labels(self.backend).set(1)
        self._storage_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nudge-storage")
        # Every engine runs in a worker, on one thread (it drives the device), each tenant in a lane of its own: on
        # a thread of this process, or in worker processes (started in start()) that own tenants by id.
        self.worker: Worker | None = None if config.workers else Worker(self.backend)
        self.host: ThreadHost | ProcessHost | None = (
            None if config.workers else ThreadHost(Runner(self.worker, config.data_dir), self._write_signals))
        self._labels: dict[int, str] = {}  # tenant id -> its label in the metrics (for the signal writer)
        # Config changes rebuild a tenant's engine from its log here, beside the live engine, so the device
        # thread (every tenant's scores and updates) never waits for a replay.
        self._rebuild_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nudge-rebuild")
        # Storage is reached through its ports; Store (SQLite) is the adapter opened in start(). The snapshots are
        # files beside it, written by whichever process holds the engine (erasures are journalled from here).
        self.store: Storage | None = None
        self.snapshots: Snapshots = SnapshotFiles(snapshots_folder(config.data_dir))
        self._rebuild_reader: Storage | None = None  # used only on the rebuild thread
        self._rebuild_child: concurrent.futures.ProcessPoolExecutor | None = None  # started on the first large rebuild
        self.tenants: dict[int, TenantState] = {}
        self._key_to_tenant: dict[str, int] = {}
        self._unavailable: dict[int, _Unavailable] = {}
        self._restoring: dict[int, asyncio.Future] = {}
        self.recovery = Recovery()
        self._commits: asyncio.Queue[_Pending | _Reconfigure] | None = None
        self.pending_events = 0
        self.unapplied_events = 0  # acknowledged, not yet applied to the engine
        self.shares = Shares(config.tenant_share)  # each tenant's part of those two
        self._room = asyncio.Event()  # set (and replaced) whenever applied events leave the backlog
        self._ingest_waiters: dict[int, int] = {}  # per tenant: ingest requests waiting for room
        self.apply_events_per_s: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task] = []
        self._recovered = asyncio.Event()
        self.loop_lag = LoopLag(config.max_loop_lag_ms)
        self.deliveries: Deliveries | None = None
        self.signal_writer = SignalWriter(lambda writes: self.on_storage(self.store.write_signals, writes), metrics)

    @property
    def ready(self) -> bool:
        return self.recovery.state == "ready"

    # ---- threads ------------------------------------------------------------------------------

    async def on_storage(self, fn: Callable, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._storage_thread, fn, *args)

    async def on_device(self, fn: Callable, *args: Any, lane: int | None = None) -> Any:
        """``fn(*args)`` on the device thread: in ``lane`` (a tenant id) after that tenant's commands sent before it,
        or, without a lane, after every command sent before it (tests and tools: the worker runs in this process)."""
        if not isinstance(self.host, ThreadHost):
            raise RuntimeError("the workers run in processes of their own (workers >= 1): no device thread here")
        if lane is None:
            await asyncio.wrap_future(self.host.barrier())
            lane = _SHARED_LANE
        return await asyncio.wrap_future(self.host.call(lane, fn, *args))

    async def command(self, command: cmd.Command) -> Any:
        """Send ``command`` to the worker; its result once the signals it decided are durable (a result the worker
        finishes off its thread, such as a snapshot's write, once it is done)."""
        outcome: Outcome = await asyncio.wrap_future(self.host.send(command))
        if outcome.written is not None:
            await asyncio.wrap_future(outcome.written)
        if isinstance(outcome.result, concurrent.futures.Future):
            return await asyncio.wrap_future(outcome.result)
        return outcome.result

    def _write_signals(self, tenant_id: int, decisions: list, resolutions: list) -> concurrent.futures.Future | None:
        """The host's sink: what a command decided, to the signal writer (device thread)."""
        return self.signal_writer.submit((tenant_id, self._labels[tenant_id]), decisions, resolutions)

    # ---- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        data_dir = self.config.data_dir
        if self.host is None:
            self.host = ProcessHost(self.config.workers, data_dir, self.backend, self._write_signals,
                                    lambda index: self._on_loop(self._worker_restarted, index))
        self.store = await self.on_storage(Store, data_dir)
        self._rebuild_reader = await asyncio.get_running_loop().run_in_executor(self._rebuild_thread, Store, data_dir)
        cfg = self.config
        self.deliveries = Deliveries(self.on_storage, self.store, DeliverySettings(
            timeout_s=cfg.webhook_timeout_s, retry_period_s=cfg.webhook_retry_period_s,
            backoff_base_s=cfg.webhook_backoff_base_s, backoff_max_s=cfg.webhook_backoff_max_s,
            batch_size=cfg.webhook_batch_size, allow_private=bool(cfg.webhooks_allow_private),
            test_interval_s=cfg.webhook_test_interval_s,
        ), self.metrics)
        self.signal_writer.on_written = self.deliveries.notify
        await self.deliveries.start()
        self._commits = asyncio.Queue()
        loop = self._loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._committer(), name="nudge-committer"),
            loop.create_task(self._recover(), name="nudge-recovery"),
            loop.create_task(self._snapshotter(), name="nudge-snapshots"),
            loop.create_task(self._model_watcher(), name="nudge-models"),
            loop.create_task(self._signal_sweeper(), name="nudge-signal-sweeper"),
            self.signal_writer.start(),
            loop.create_task(self.loop_lag.run(), name="nudge-loop-lag"),
        ]

    def _worker_restarted(self, index: int) -> None:
        """A worker process died and was started again (event loop): recover the tenants it owns."""
        self._tasks.append(self._loop.create_task(self._recover_worker(index), name=f"nudge-recover-worker-{index}"))

    async def _recover_worker(self, index: int) -> None:
        for state in list(self.tenants.values()):
            if self.host.owner(state.tenant.id) != index:
                continue
            try:
                recovered: Recovered = await self.command(Recover(state.tenant.id, state.config))
                state.engine_config, state.applied_seq, state.users = (
                    state.config, recovered.applied_seq, recovered.users)
                self.metrics.replayed_events.inc(recovered.replayed)
                if state.model.predictor is not None:
                    await self._serve_model(state)
                log.info("tenant %s recovered in worker %d: %d events replayed", state.tenant.name, index,
                         recovered.replayed)
            except Exception:
                log.exception("recovering tenant %s in worker %d failed", state.tenant.name, index)

    async def stop(self) -> None:
        if self.deliveries is not None:
            await self.deliveries.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        for state in self.tenants.values():
            await state.batcher.stop()
        await asyncio.wrap_future(self.host.barrier())  # engine updates sent before the stop have made their signals
        if self.store is not None:
            await self.signal_writer.flush()
        if self.ready:
            await self.snapshot_all()
        if self.store is not None:
            await self.on_storage(self.store.close)
        if isinstance(self.host, ThreadHost):  # a worker process closes its runner's storage as it stops
            await self.command(Close())
        if self._rebuild_reader is not None:
            await asyncio.get_running_loop().run_in_executor(self._rebuild_thread, self._rebuild_reader.close)
        self._storage_thread.shutdown(wait=True)
        self.host.shutdown(wait=True)
        self._rebuild_thread.shutdown(wait=True)
        if self._rebuild_child is not None:
            self._rebuild_child.shutdown(wait=True, cancel_futures=True)

    def _new_state(self, tenant: Tenant, engine_config: TenantConfig) -> TenantState:
        cfg = self.config
        batcher = MicroBatcher(
            functools.partial(self._score_batch, tenant.id),
            max_batch_size=cfg.max_batch_size,
            max_wait_ms=cfg.max_wait_ms,
            max_queue_items=cfg.max_queue_users,
            max_queue_delay_ms=cfg.max_queue_delay_ms,
            on_batch=self.metrics.score_batch_users.observe,
            max_in_flight=cfg.score_batches_in_flight,
        )
        return TenantState(
            tenant=tenant,
            batcher=batcher,
            bucket=TokenBucket(cfg.rate_limit_per_s, cfg.rate_limit_burst),
            model=ModelSlot(model_path(cfg.data_dir, tenant.name)),
            shard=self.worker.shards.get(tenant.id) if self.worker is not None else None,
            engine_config=engine_config,
        )

    # ---- recovery -----------------------------------------------------------------------------

    async def _recover(self) -> None:
        started = time.perf_counter()
        self.recovery.state = "recovering"
        try:
            stale = self.snapshots.remove_interrupted_writes()
            if stale:
                log.info("removed %d temporary snapshot files left by an interrupted write", stale)
            tenants = await self.on_storage(self.store.tenants)
            for tenant in tenants:
                try:
                    await self._bring_up(tenant)
                except TenantUnavailable:
                    pass  # recorded; this tenant answers 503 with the reason, the others serve
            self.recovery.tenants = len(tenants)
            self.recovery.state = "ready"
            self.metrics.ready.set(1)
        except Exception as exc:  # recovery must say why it failed, not die silently
            log.exception("recovery failed")
            self.recovery.state = "failed"
            self.recovery.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.recovery.seconds = round(time.perf_counter() - started, 3)
            self._recovered.set()

    async def _bring_up(self, tenant: Tenant) -> TenantState:
        """The tenant's live state, restored once however many requests ask; :class:`TenantUnavailable`."""
        if tenant.id in self.tenants:
            return self.tenants[tenant.id]
        pending = self._restoring.get(tenant.id)
        if pending is None:
            pending = self._restoring[tenant.id] = asyncio.ensure_future(self._restore_or_record(tenant))
            pending.add_done_callback(lambda _: self._restoring.pop(tenant.id, None))
        return await asyncio.shield(pending)

    async def _restore_or_record(self, tenant: Tenant) -> TenantState:
        try:
            state = await self._restore(tenant)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            log.exception("recovering tenant %s failed; it answers 503 until this is fixed", tenant.name)
            self._unavailable[tenant.id] = _Unavailable(reason, time.monotonic())
            self.recovery.unavailable_tenants = len(self._unavailable)
            self.metrics.tenant_recovery_failures.inc()
            raise TenantUnavailable(reason) from None
        self.tenants[tenant.id] = state
        self._unavailable.pop(tenant.id, None)
        self.recovery.unavailable_tenants = len(self._unavailable)
        return state

    async def _restore(self, tenant: Tenant) -> TenantState:
        """The tenant recovered by its worker (latest snapshot, if its config still applies, then the log after it,
        and its signal policy), then its model."""
        self._labels[tenant.id] = self.metrics.tenant_label(tenant)
        recovered: Recovered = await self.command(Recover(tenant.id, tenant.config))
        for aside, reason in recovered.set_aside:
            log.error("the snapshot of tenant %s is unreadable (%s); kept as %s, rebuilding from the event log",
                      tenant.name, reason, aside)
            self.recovery.snapshots_set_aside += 1
            self.metrics.snapshots_unreadable.inc()
        self.recovery.from_snapshots += recovered.from_snapshot
        self.recovery.replayed_events += recovered.replayed
        self.metrics.replayed_events.inc(recovered.replayed)
        state = self._new_state(tenant, tenant.config)
        state.snapshot_seq, state.applied_seq, state.users = (
            recovered.snapshot_seq, recovered.applied_seq, recovered.users)
        # Users journalled as erased are still in the file: the next periodic snapshot replaces it.
        state.erased_since_snapshot = recovered.erased_since_snapshot
        await self._restore_model(state)
        log.info("tenant %s recovered: %d users, log applied to seq %d", tenant.name, state.users, state.applied_seq)
        return state

    def _replay_into(self, engine: Engine, tenant: Tenant, reader: EventLog, until_seq: int | None = None) -> int:
        """The tenant's log after what ``engine`` has applied, up to ``until_seq`` (the rebuild thread, with its
        own reader)."""
        return rebuild.replay(engine, reader, tenant.id, until_seq)

    async def wait_ready(self) -> None:
        await self._recovered.wait()

    # ---- tenants and keys ---------------------------------------------------------------------

    async def authenticate(self, key: str) -> TenantState | None:
        """The tenant owning ``key``; tenants created while the server runs are picked up here."""
        if not self.ready:
            raise NotReady()
        hashed = hash_key(key)
        state = self.tenants.get(self._key_to_tenant.get(hashed, -1))
        if state is not None:
            return state
        tenant = await self.on_storage(self.store.tenant_by_key, key)
        if tenant is None:
            return None
        failed = self._unavailable.get(tenant.id)
        if failed is not None and time.monotonic() - failed.since < _RECOVERY_RETRY_S:
            raise TenantUnavailable(failed.reason)
        state = await self._bring_up(tenant)
        self._key_to_tenant[hashed] = tenant.id
        return state

    # ---- ingest -------------------------------------------------------------------------------

    def check_ingest_backlog(self, state: TenantState) -> None:
        """Raise :class:`Overloaded` while the engines are too far behind, or :class:`OverShare` while this tenant
        holds more than its share of that backlog (cheap: call it before reading a body).

        Acknowledged events are applied later, on the device thread, ahead of any score asked after them:
        a backlog there is latency for every scoring request, so it is bounded in time.
        """
        self.shares.seen(state.tenant.id)
        behind = state.catching_up
        if behind is not None:
            # Events waiting for their commit will be in the log too.
            ahead = state.logged_seq - behind.applied_seq + self.shares.pending.get(state.tenant.id, 0)
            if ahead > state.catch_up_lag:
                raise Overloaded(ahead, retry_after_s=1.0)
        # Events waiting for their commit are on their way to the engines too: counted, a burst of bodies admitted
        # together cannot all pass before the first of them reaches the backlog.
        coming = self.unapplied_events + self.pending_events
        if coming and self.apply_events_per_s and self.config.max_apply_delay_ms:
            backlog_ms = 1000.0 * coming / self.apply_events_per_s
            if backlog_ms > self.config.max_apply_delay_ms:
                raise Overloaded(coming, retry_after_s=1.0)
        self.shares.check_unapplied(state.tenant.id, self.apply_events_per_s, self.config.max_apply_delay_ms)

    async def admit_ingest(self, state: TenantState) -> None:
        """Return once the backlogs have room for this tenant's ingest; wait for it (up to ``ingest_wait_ms``, on
        no thread) rather than refuse at once; then :class:`Overloaded` or :class:`OverShare`.

        Clients that resend at once after a 503 would otherwise turn the bound into a storm of refusals, and on one
        GIL each refusal takes time from the engine update that makes room. Waiters are bounded: in all, and per
        tenant by its share while others are active.
        """
        try:
            self.check_ingest_backlog(state)
            return
        except Overloaded:
            tenant_id, cfg = state.tenant.id, self.config
            mine = self._ingest_waiters.get(tenant_id, 0)
            cap = cfg.max_ingest_waiters * (cfg.tenant_share if self.shares.others_active(tenant_id) else 1.0)
            if not cfg.ingest_wait_ms or sum(self._ingest_waiters.values()) >= cfg.max_ingest_waiters or mine >= cap:
                raise
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.ingest_wait_ms / 1000.0
        self._ingest_waiters[tenant_id] = mine + 1
        try:
            while True:
                room = self._room  # replaced (and set) whenever events are applied or committed
                try:
                    self.check_ingest_backlog(state)
                    return
                except Overloaded:
                    if loop.time() >= deadline:
                        raise
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(room.wait(), max(0.0, deadline - loop.time()))
        finally:
            self._ingest_waiters[tenant_id] -= 1

    def _made_room(self) -> None:
        self._room.set()
        self._room = asyncio.Event()

    async def new_users_beyond_limit(self, state: TenantState, batch: EventBatch) -> tuple[int, int] | None:
        """(users known, users the batch adds) where the batch would take the tenant past
        ``max_users_per_tenant``; None where it fits.

        Near the limit, counted on the device thread after the updates acknowledged before it: only batches in
        flight at the same moment can pass the limit, by their own new users.
        """
        limit = self.config.max_users_per_tenant
        unapplied = self.shares.unapplied.get(state.tenant.id, 0)  # each could be a new user
        if state.users + unapplied + len(batch) <= limit:
            return None  # the common case, without a look at the ids
        return await self.command(cmd.CountNewUsers(state.tenant.id, batch.user_ids.tolist(), limit))

    async def ingest(self, state: TenantState, batch: EventBatch) -> tuple[int, int]:
        """(accepted, duplicates) once the batch is durable in the log; Overloaded when too much waits."""
        if self.pending_events and self.pending_events + len(batch) > self.config.max_pending_events:
            raise Overloaded(self.pending_events, retry_after_s=1.0)
        self.shares.check_pending(state.tenant.id, len(batch), self.config.max_pending_events)
        self.check_ingest_backlog(state)
        fut = asyncio.get_running_loop().create_future()
        self.pending_events += len(batch)
        self.shares.add(self.shares.pending, state.tenant.id, len(batch))
        self._commits.put_nowait(_Pending(state, batch, state.config, fut))
        return await fut

    async def _committer(self) -> None:
        """Commits ingest batches in groups and config changes between them, in the order they came."""
        held: _Pending | _Reconfigure | None = None
        while True:
            first = held or await self._commits.get()
            held = None
            if isinstance(first, _Reconfigure):
                await self._reconfigure(first)
                continue
            group, size = [first], len(first.batch)
            while not self._commits.empty() and size < self.config.max_commit_events:
                item = self._commits.get_nowait()
                if isinstance(item, _Reconfigure):
                    held = item  # after this group, before anything queued behind it
                    break
                group.append(item)
                size += len(item.batch)
            try:
                await self._commit_group(group)
            finally:
                self.pending_events -= size
                for p in group:
                    self.shares.add(self.shares.pending, p.state.tenant.id, -len(p.batch))

    async def _commit_group(self, group: list[_Pending]) -> None:
        ready = []
        for p in group:
            current = p.state.tenant.config
            if p.config is not current and p.config != current:
                # Validated before a config change that committed ahead of it: re-coded, or refused whole.
                try:
                    p.batch, p.config = recode_events(p.batch, p.config, current), current
                except ConfigChanged as exc:
                    if not p.future.done():
                        p.future.set_exception(exc)
                    continue
            ready.append(p)
        if not ready:
            return
        try:
            results = await self.on_storage(self.store.append, [(p.state.tenant.id, p.batch, p.config) for p in ready])
        except Exception as exc:
            log.exception("group commit of %d batches failed", len(ready))
            for p in ready:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        self.metrics.commit_events.observe(sum(len(p.batch) for p in ready))
        # One engine update per tenant and group: an update has a fixed cost, however few its events.
        updates: dict[int, tuple[TenantState, TenantConfig, list, list]] = {}
        answers = []
        for p, result in zip(ready, results):
            if isinstance(result, Exception):
                log.error("a batch of tenant %s failed its commit; the others in the group committed",
                          p.state.tenant.name, exc_info=result)
                if not p.future.done():
                    p.future.set_exception(result)
                continue
            accepted = int(result.accepted.sum())
            duplicates = len(p.batch) - accepted
            name = self.metrics.tenant_label(p.state.tenant)
            self.metrics.events_ingested.labels(name).inc(accepted)
            self.metrics.events_duplicate.labels(name).inc(duplicates)
            if accepted:
                p.state.logged_seq = max(p.state.logged_seq, int(result.seqs[-1]))
                update = updates.setdefault(id(p.state), (p.state, p.config, [], []))
                update[2].append(p.batch.take(result.accepted))
                update[3].append(result.seqs)
            answers.append((p.future, (accepted, duplicates)))
        for state, config, batches, seqs in updates.values():
            self._apply_later(state, EventBatch.concat(batches), np.concatenate(seqs), config)
        # Acknowledged only now: the engine updates are queued, so a score asked after the answer sees them.
        for future, answer in answers:
            if not future.done():
                future.set_result(answer)

    def _apply_later(self, state: TenantState, batch: EventBatch, seqs: np.ndarray, config: TenantConfig) -> None:
        """Queue the engine update of committed events in the tenant's lane, in calls of at most _APPLY_CHUNK, or
        _APPLY_CHUNK_SHARED while other tenants are active: lanes take turns between calls, so the calls' length
        is what another tenant's score may wait for."""
        chunk = _APPLY_CHUNK_SHARED if self.shares.others_active(state.tenant.id) else _APPLY_CHUNK
        for start in range(0, len(batch), chunk):
            part = slice(start, start + chunk)
            self._apply_part(state, batch.take(part), seqs[part], config)

    def _apply_part(self, state: TenantState, batch: EventBatch, seqs: np.ndarray, config: TenantConfig) -> None:
        n = len(batch)
        self.unapplied_events += n
        self.shares.add(self.shares.unapplied, state.tenant.id, n)
        fut = self.host.send(cmd.Apply(state.tenant.id, batch, seqs, config))
        fut.add_done_callback(lambda done: self._on_loop(self._applied, state, n, done))

    def _on_loop(self, fn: Callable, *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            pass  # the loop has closed: the server is gone, and so is what this would count

    def _applied(self, state: TenantState, n: int, fut: concurrent.futures.Future) -> None:
        """On the event loop, once an engine update has run: the backlog and the measured apply rate."""
        self.unapplied_events -= n
        self.shares.add(self.shares.unapplied, state.tenant.id, -n)
        self._made_room()
        exc = fut.exception()
        if exc is not None:
            self.metrics.apply_errors.inc()
            log.error("engine update failed; the events are in the log and return on restart", exc_info=exc)
        else:
            applied: cmd.Applied = fut.result().result
            state.applied_seq, state.users = applied.applied_seq, applied.users
            rate = n / max(applied.seconds, 1e-6)
            self.apply_events_per_s = rate if self.apply_events_per_s is None else (
                0.8 * self.apply_events_per_s + 0.2 * rate)

    # ---- scoring ------------------------------------------------------------------------------

    async def _score_batch(self, tenant_id: int, items: list[tuple[str, dict | None]]
                           ) -> list[tuple[bytes, concurrent.futures.Future | None]]:
        """One micro-batch, scored by the worker: each user's packed result row, with the write of its decision to
        the signal log where one is being written."""
        user_ids = [uid for uid, _ in items]
        outcome: Outcome = await asyncio.wrap_future(self.host.send(cmd.Score(
            tenant_id, user_ids, [hint for _, hint in items])))
        scored: cmd.Scored = outcome.result
        self.metrics.predictions.labels("transformer").inc(scored.by_model)
        self.metrics.predictions.labels("markov").inc(len(items) - scored.by_model)
        rows = scored.packed
        written = [None] * len(rows)
        for row in scored.decided if outcome.written is not None else ():
            written[row] = outcome.written
        return list(zip(rows, written))

    async def score(
        self, state: TenantState, user_ids: list[str], explain: bool, hints: list[dict | None] | None = None
    ) -> list[bytes]:
        """Results in request order, each packed (msgpack: see ``codecs.encode_results``); a signal in them is
        durable in the signal log before this returns."""
        self.shares.seen(state.tenant.id)
        self.metrics.score_queue_users.set(state.batcher.queued_items + len(user_ids))
        results = await state.batcher.submit(list(zip(user_ids, hints or [None] * len(user_ids))))
        for written in {id(w): w for _, w in results if w is not None}.values():
            await asyncio.wrap_future(written)
        rows = [row for row, _ in results]
        if explain:
            details = await self.command(cmd.Explain(state.tenant.id, user_ids, time.time()))
            rows = packed_rows([{**msgpack.unpackb(row), "explain": detail} for row, detail in zip(rows, details)])
        return rows

    async def score_histogram(self, state: TenantState, bins: int) -> dict[str, Any]:
        """How the tenant's known users' scores (posterior means, as ``GET /v1/users/{id}`` gives them) spread
        over ``bins`` equal bins of [0, 1], now."""

        tenant_id = state.tenant.id
        user_ids, known = await self.command(cmd.SampleUsers(tenant_id, HISTOGRAM_MAX_USERS))
        now = time.time()
        scores = [np.zeros(0)]
        for start in range(0, len(user_ids), _HISTOGRAM_CHUNK):
            chunk = user_ids[start:start + _HISTOGRAM_CHUNK]
            scores.append(await self.command(cmd.PosteriorScores(tenant_id, chunk, now)))
        values = np.concatenate(scores)
        counts, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
        return {
            "bins": bins,
            "edges": edges.round(6).tolist(),
            "counts": counts.tolist(),
            "users": known,
            "scored": len(values),
            "mean": float(values.mean()) if len(values) else None,
            "median": float(np.median(values)) if len(values) else None,
            "score_kind": "posterior_mean",
        }

    # ---- users --------------------------------------------------------------------------------

    async def user(self, state: TenantState, user_id: str) -> dict[str, Any] | None:
        return await self.command(cmd.View(state.tenant.id, user_id, time.time()))

    async def erase_user(self, state: TenantState, user_id: str) -> dict[str, Any]:
        """Remove a user from the log, the engine and the snapshot (through its erasure journal).

        The snapshot is not rewritten here: the user id goes into its journal first, so a restart at any
        later step drops the user from the old snapshot, and the next periodic snapshot replaces it.
        """
        async with state.snapshot_lock:
            await self.on_storage(self.snapshots.journal_erasure, state.tenant.id, user_id)
            deleted = await self.on_storage(self.store.erase_user, state.tenant.id, user_id)

            known = await self.command(cmd.Erase(state.tenant.id, user_id))
            state.erased_since_snapshot = True
        return {"user_id": user_id, "erased": bool(deleted or known), "events_deleted": deleted}

    # ---- config -------------------------------------------------------------------------------

    async def put_config(self, state: TenantState, config: TenantConfig) -> None:
        """Apply a new config whole, or refuse it with :class:`ConfigConflict` and change nothing.

        The change takes its place in the commit queue: batches queued before it commit under the old
        config, batches queued after it are checked against the new one. Once stored, the tenant's engine is
        rebuilt from its log beside the live one, which serves meanwhile, and swapped in once it has caught up;
        this returns after the swap.
        """
        started = time.monotonic()
        fut = asyncio.get_running_loop().create_future()
        self._commits.put_nowait(_Reconfigure(state, config, fut))
        old_config = await fut
        stored = time.monotonic()
        await self._bring_engine_up_to_date(state)
        rebuilt = time.monotonic()
        await self.snapshot(state)
        log.info("tenant %s: config stored after %.2f s in the commit queue, engine up to date %.2f s later, "
                 "snapshot %.2f s", state.tenant.name, stored - started, rebuilt - stored, time.monotonic() - rebuilt)
        vocabulary_changed = (old_config.actions, old_config.conversion_action) != (
            config.actions, config.conversion_action)
        if vocabulary_changed and state.model.predictor is not None:
            state.model.predictor = None  # trained on the old vocabulary
            await self._serve_model(state)
            try:
                await self.reload_model(state)
            except ModelUnavailable:
                pass  # recorded in the slot; the Markov chain predicts

    async def _reconfigure(self, change: _Reconfigure) -> None:
        """Store a config change (committer task); the batches committed after it are validated against it."""
        state, config = change.state, change.config
        old = state.tenant
        try:
            await self.on_storage(self.store.replace_config, old.id, old.config, config)
        except Exception as exc:  # ConfigConflict, or a failed write: nothing changed
            if not change.future.done():
                change.future.set_exception(exc)
            return
        state.tenant = Tenant(old.id, old.name, config)
        if not change.future.done():
            change.future.set_result(old.config)

    async def _bring_engine_up_to_date(self, state: TenantState) -> None:
        """The engine and signal policy under the tenant's stored config, whatever it is by the time this runs.

        Changes that keep the engine's settings touch only the policy. Others build a new engine from the log (the
        snapshot was made under other settings), beside the live one: with worker processes, in the worker that
        owns the tenant (on a builder thread of its), so the server's process does none of it and the engine never
        crosses a pipe; on the thread, in the rebuild child process and this process's rebuild thread. It is caught up with what was committed meanwhile, then swapped in after a last catch-up
        on the worker's thread: other tenants' scores and updates wait for that last step only. Ten quick changes
        make one or two rebuilds, not ten.
        """
        async with state.rebuild_lock:
            config = state.tenant.config
            if config.engine_dict() == state.engine_config.engine_dict():
                await self.command(cmd.Reconfigure(state.tenant.id, config))
                state.engine_config = config
                return
            # Sent, not awaited: it runs before any erasure sent after it, whatever the lane holds before it.
            self.host.send(cmd.Rebuilding(state.tenant.id, started=True))
            swapped, in_worker = False, bool(self.config.workers)
            try:
                started = time.monotonic()
                build = _WorkerBuild(self, state) if in_worker else _ServerBuild(self, state)
                caught_up = await build.start(config)
                self.metrics.replayed_events.inc(caught_up)
                replayed = time.monotonic()
                # What was committed during the replay. The tenant's ingest is held back while the log is far
                # ahead (check_ingest_backlog), so the rounds shorten even under its flood.
                state.catching_up, state.catch_up_lag = build, _REBUILD_MAX_LAG_EVENTS
                rounds = await self._catch_up(state, build, caught_up, drain_pending=False)
                # Then the swap replays the rest on the worker's thread, after the tenant's queued work. Before it,
                # the tenant's ingest is held back to a short lead, its batches already admitted are committed, and
                # those are caught up here.
                state.catch_up_lag = _REBUILD_SWAP_EVENTS
                rounds += await self._catch_up(state, build, 0, drain_pending=True)
                caught = time.monotonic()
                last, swap_s = await self._swap_engine(state, build.engine, config)
                swapped = True
                log.info("tenant %s: engine rebuilt from its log (%s) in %.2f s, caught up in %d more rounds in "
                         "%.2f s, swapped in after %.3f s (%.3f s of it on the worker's thread, replaying %d events)",
                         state.tenant.name, "in its worker" if in_worker else "in the server", replayed - started,
                         rounds, caught - replayed, time.monotonic() - caught, swap_s, last)
            finally:
                state.catching_up = None
                if not swapped:  # the erasures made meanwhile need no longer be remembered
                    if in_worker:
                        self.host.send(DropBuild(state.tenant.id))
                    self.host.send(cmd.Rebuilding(state.tenant.id, started=False))
                self._made_room()

    async def _catch_up(self, state: TenantState, build: "_ServerBuild | _WorkerBuild", behind: int,
                        drain_pending: bool) -> int:
        """Replay what was committed since ``build`` last read until a round finds at most _REBUILD_SWAP_EVENTS, and
        with ``drain_pending`` until none of the tenant's batches waits for its commit; returns the rounds. Ingest
        is held back to ``state.catch_up_lag`` meanwhile, so the rounds shorten."""
        rounds = 0

        def pending() -> int:
            return self.shares.pending.get(state.tenant.id, 0) if drain_pending else 0

        while behind > _REBUILD_SWAP_EVENTS or pending() or (drain_pending and not rounds):
            rounds += 1
            behind = await build.catch_up()
            self.metrics.replayed_events.inc(behind)
            self._made_room()
            if behind <= _REBUILD_SWAP_EVENTS and pending():
                await asyncio.sleep(0.01)  # its admitted batches are being committed
        return rounds

    async def _swap_engine(self, state: TenantState, engine: Engine | None, config: TenantConfig) -> tuple[int, float]:
        """The rebuilt engine serves from now on, with the log's last events (replayed where the worker runs, after
        the tenant's commands sent before) and the erasures made meanwhile; returns how many events that last
        replay took, and the seconds the worker spent on it."""
        replayed, seconds, applied_seq, users = await self.command(SwapIn(state.tenant.id, engine, config))
        self.metrics.replayed_events.inc(replayed)
        state.engine_config, state.applied_seq, state.users = config, applied_seq, users
        return replayed, seconds

    # ---- next-action models -------------------------------------------------------------------

    def _model_device(self) -> str:
        return "cpu" if self.backend == "numpy" else kernels.compute_device()

    def _count_model(self, state: TenantState, outcome: str) -> None:
        self.metrics.model_loads.labels(self.metrics.tenant_label(state.tenant), outcome).inc()

    async def _load_model(self, state: TenantState) -> dict[str, Any]:
        """Serve the tenant's checkpoint without the gate: at start, the one that served before."""
        slot = state.model
        stamp = slot.stamp = file_stamp(slot.path)
        try:
            checkpoint, predictor = await asyncio.get_running_loop().run_in_executor(
                None, load_candidate, slot.path, state.config, self._model_device())
        except ModelUnavailable as exc:
            slot.fail(exc)
            self._count_model(state, exc.code)
            raise
        slot.install(predictor, stamp, checkpoint)
        await self._serve_model(state)
        self._count_model(state, "loaded")
        return slot.describe()

    async def _restore_model(self, state: TenantState) -> None:
        """At start: the model history, and the checkpoint that served before if its file is unchanged. A file
        the gate has not seen is left to the watcher, which gates it once recovery is done."""
        slot = state.model
        slot.restore_history(await self.on_storage(self.store.model_history, state.tenant.id, HISTORY_LIMIT))
        stamp = file_stamp(slot.path)
        if stamp is None:
            return
        if stamp == slot.promoted_stamp():
            try:
                await self._load_model(state)
            except ModelUnavailable:
                pass  # recorded in the slot; the Markov chain predicts meanwhile
        elif slot.tried(stamp):
            slot.stamp = stamp  # refused or rolled back before the restart: tried again once the file changes

    async def reload_model(self, state: TenantState, force: bool = False, changed_only: bool = False) -> dict[str, Any]:
        """Gate the tenant's checkpoint and serve it if it passes (``POST /v1/model/reload``, the watcher).

        Raises :class:`ModelUnavailable` (:class:`ModelRejected` when the gate refuses it); what serves keeps
        serving then. ``force`` skips the comparison with what serves, never the check of the checkpoint's own
        validation; ``changed_only`` does nothing when the file is the one last tried. The file that serves
        already is not gated again.
        """
        slot = state.model
        async with slot.lock:
            stamp = file_stamp(slot.path)
            # Gating the file that serves would only stack a second rollback point to the same model.
            if (changed_only and stamp == slot.stamp) or (slot.predictor is not None and stamp == slot.served_stamp):
                return slot.describe()
            if stamp is None and slot.predictor is None:
                slot.stamp = None
                raise ModelUnavailable("model_not_found", f"no checkpoint for tenant {state.tenant.name}; train one "
                                       f"with nudge train --data-dir DIR --tenant {state.tenant.name}")
            slot.stamp = stamp
            config, loop = state.config, asyncio.get_running_loop()
            try:
                checkpoint, predictor = await loop.run_in_executor(
                    None, load_candidate, slot.path, config, self._model_device())
                from model.deployment import GateRules, judge  # needs torch, which loading the candidate proved

                rules = GateRules()
                recent = await self.on_storage(self.store.recent_events, state.tenant.id, config, rules.recent_events)
                # On a worker thread: neither the event loop nor the device thread waits for the shadow evaluation.
                report = await loop.run_in_executor(None, functools.partial(
                    judge, checkpoint, recent, config, slot.serving.checkpoint, rules, force))
                gate = report.as_dict()
                if state.config is not config:
                    raise ModelUnavailable("model_mismatch", "the tenant's config changed while the checkpoint was "
                                           "evaluated; reload it")
                if not report.promote:
                    raise ModelRejected(report.reason, gate)
            except ModelUnavailable as exc:
                slot.fail(exc)
                self._count_model(state, exc.code)
                rejected = isinstance(exc, ModelRejected)
                await self._record_model(state, "rejected" if rejected else "load_failed", stamp,
                                         exc.gate if rejected else None, str(exc))
                raise
            # Batches read the slot once each, so a swap lands between batches and fails none.
            slot.promote(predictor, checkpoint, stamp, gate)
            await self._serve_model(state)
            self._count_model(state, "loaded")
            await self._record_model(state, "promoted", stamp, gate, report.reason)
            return slot.describe()

    async def rollback_model(self, state: TenantState) -> dict[str, Any]:
        """Serve again what served before the current predictor (``POST /v1/model/rollback``); raises
        :class:`ModelUnavailable` ``nothing_to_roll_back`` when nothing did."""
        slot = state.model
        async with slot.lock:
            replaced = slot.roll_back(state.config)
            await self._serve_model(state)
            self._count_model(state, "rolled_back")
            await self._record_model(state, "rolled_back", replaced.stamp,
                                     message=f"rolled back from {replaced.name} to {slot.predictor_name}")
            return slot.describe()

    async def _serve_model(self, state: TenantState) -> None:
        """The worker predicts with what the slot serves from its next batch on."""
        await self.command(cmd.ServeModel(state.tenant.id, state.model.predictor))

    async def _record_model(self, state: TenantState, event: str, stamp: tuple[int, int] | None,
                            gate: dict[str, Any] | None = None, message: str | None = None) -> None:
        entry = state.model.record(event, stamp, gate, message)
        try:
            await self.on_storage(self.store.append_model_event, state.tenant.id, entry, HISTORY_LIMIT)
        except Exception:  # the decision stands; only its record after a restart is lost
            log.exception("the model history of tenant %s could not be written", state.tenant.name)

    async def _model_watcher(self) -> None:
        """Gate a tenant's checkpoint when its file changes (atomic writes: see ``nudge train``); a file already
        decided on (promoted, refused, rolled back) is not tried again until it changes."""
        await self._recovered.wait()
        while True:
            await asyncio.sleep(self.config.model_poll_s)
            for state in list(self.tenants.values()):
                stamp = file_stamp(state.model.path)
                if stamp == state.model.stamp or (stamp is None and state.model.predictor is None):
                    continue
                try:
                    await self.reload_model(state, changed_only=True)
                except ModelUnavailable:
                    pass  # recorded in the slot and logged; the old model keeps serving
                except Exception:
                    log.exception("reloading the model of tenant %s failed", state.tenant.name)

    # ---- signal outcomes and stats ------------------------------------------------------------

    async def _signal_sweeper(self) -> None:
        """Close decisions whose horizon has passed without a conversion; decide for carts that became idle."""
        await self._recovered.wait()
        purged_at = 0.0
        swept_to = time.time()
        while True:
            await asyncio.sleep(self.config.signal_sweep_s)
            now = time.time()
            for state in list(self.tenants.values()):
                await self.expire_signals(state, now)
                await self.decide_for_idle_users(state, swept_to, now)
            swept_to = now
            if time.time() - purged_at > 60.0:
                purged_at = time.time()
                await self.on_storage(self.store.purge_signals, purged_at - self.config.signal_retention_s)

    async def decide_for_idle_users(self, state: TenantState, since: float, until: float) -> None:
        """Signals for users whose last event became ``cart_idle_s`` old in (since, until]: an abandoned cart is
        seen when its user goes quiet, not when they add to it (nobody sends an event for doing nothing)."""

        await self.command(cmd.DecideIdle(state.tenant.id, since, until))

    async def expire_signals(self, state: TenantState, now: float) -> None:
        """Close the tenant's decisions whose horizon ended before ``now`` as not converted."""
        await self.command(cmd.Expire(state.tenant.id, now))

    async def feedback(self, state: TenantState, items: list[tuple[str, str, float]]) -> list[str]:
        """Record (signal_id, outcome, ts) reports; returns the signal ids this tenant does not know."""
        owners = await self.on_storage(self.store.signal_owners, state.tenant.id, [sid for sid, _, _ in items])
        unknown = [sid for sid, _, _ in items if sid not in owners]
        if unknown:
            return unknown
        rows = [(sid, owners[sid], outcome, ts) for sid, outcome, ts in items]
        await self.on_storage(self.store.add_feedback, state.tenant.id, rows)
        for _, outcome, _ in items:
            self.metrics.feedback.labels(self.metrics.tenant_label(state.tenant), outcome).inc()

        await self.command(cmd.Feedback(state.tenant.id, [(sid, ts) for sid, outcome, ts in items
                                                          if outcome == "converted"]))
        return []

    async def _settle_signals(self, state: TenantState) -> None:
        """Read-your-writes for signals: what the tenant's acknowledged events decided is in the signal log after
        this."""
        # Engine updates of acknowledged events run in order in the tenant's lane, and the host hands what they
        # decided to the writer as each ends: once this no-op has run, the flush makes it durable and visible.
        await self.command(Sync(state.tenant.id))
        await self.signal_writer.flush()

    async def stats(self, state: TenantState, now: float | None = None) -> dict[str, Any]:
        """Signals sent, their funnel, conversion of signalled vs holdout users as of ``now``, the bandits."""
        await self._settle_signals(state)
        now = time.time() if now is None else now
        counts = await self.on_storage(self.store.signal_stats, state.tenant.id, now, state.config.signal_horizon_s)
        bandits = await self.command(cmd.Bandits(state.tenant.id))
        return signal_stats_report(counts, bandits, state.config)

    async def bandits(self, state: TenantState, period_s: float = 3600.0) -> dict[str, Any]:
        """The intervention bandits now (posteriors, how traffic is allocated) and how they split it over time."""
        await self._settle_signals(state)
        since = time.time() - self.config.signal_retention_s
        history = await self.on_storage(self.store.allocation_history, state.tenant.id, since, period_s)
        report = await self.command(cmd.Bandits(state.tenant.id))
        return {"bandits": report, "period_s": period_s, "allocations": history}

    # ---- delivery: subscriptions and pull -----------------------------------------------------

    async def create_subscription(self, state: TenantState, url: str, types: list[str] | None) -> dict[str, Any]:
        """A subscription that receives signals made from now on; the answer holds its secret, shown once."""
        store, tenant_id = self.store, state.tenant.id
        if await self.on_storage(store.count_subscriptions, tenant_id) >= self.config.max_subscriptions:
            raise SubscriptionLimit(f"a tenant has at most {self.config.max_subscriptions} subscriptions")
        await self.signal_writer.flush()
        start_after = await self.on_storage(store.last_signal_seq)
        sub = await self.on_storage(store.create_subscription, tenant_id, url, types, start_after)
        self.deliveries.add(sub)
        return {"id": sub.id, "url": sub.url, "types": sub.types, "secret": sub.secret}

    async def subscriptions(self, state: TenantState) -> list[dict[str, Any]]:
        return await self.on_storage(self.store.subscription_report, state.tenant.id)

    async def subscription(self, state: TenantState, sub_id: str):
        return await self.on_storage(self.store.subscription, sub_id, state.tenant.id)

    async def delete_subscription(self, state: TenantState, sub_id: str) -> bool:
        deleted = await self.on_storage(self.store.delete_subscription, state.tenant.id, sub_id)
        if deleted:
            self.deliveries.remove(sub_id)
        return deleted

    async def pull_signals(self, state: TenantState, cursor: Cursor, limit: int, wait_s: float) -> tuple[list, int]:
        """Signals after ``cursor``, waiting up to ``wait_s`` for the first; and the tenant's next position."""
        deadline = time.monotonic() + min(wait_s, self.config.max_poll_wait_s)
        await self._settle_signals(state)
        after = cursor.position
        if cursor.shared:
            after = await self.on_storage(self.store.tenant_position, state.tenant.id, after)
        while True:
            wakeup = self.deliveries.waiter(state.tenant.id)  # before reading: no commit slips between
            rows = await self.on_storage(self.store.pull_signals, state.tenant.id, after, limit)
            remaining = deadline - time.monotonic()
            if rows or remaining <= 0:
                break
            await self.deliveries.wait(wakeup, remaining)
        return [signal for _, signal in rows], (rows[-1][0] if rows else after)

    # ---- snapshots ----------------------------------------------------------------------------

    async def snapshot(self, state: TenantState) -> None:
        """Have the tenant's worker capture its engine and write it; one at a time per tenant, newest capture
        last."""
        async with state.snapshot_lock:
            state.snapshot_seq = await self.command(SaveSnapshot(state.tenant.id))
            state.erased_since_snapshot = False
        self.metrics.snapshots.inc()

    async def snapshot_all(self) -> None:
        # Once this barrier is done, every engine update sent before it (acknowledged events) has been applied
        # and can be in the snapshot.
        await asyncio.wrap_future(self.host.barrier())
        for state in list(self.tenants.values()):
            if state.applied_seq > state.snapshot_seq or state.erased_since_snapshot:
                try:
                    await self.snapshot(state)
                except Exception:  # one tenant's failed write does not keep the others' from theirs
                    log.exception("snapshot of tenant %s failed; its event log still holds every event",
                                  state.tenant.name)

    async def _snapshotter(self) -> None:
        await self._recovered.wait()
        while True:
            await asyncio.sleep(self.config.snapshot_interval_s)
            await self.snapshot_all()


class _ServerBuild:
    """A tenant's engine rebuilt in this process, for a worker on its thread: a large log replays in the rebuild
    child process, the rest and the catch-up rounds on the rebuild thread, each with its own log reader."""

    def __init__(self, runtime: Runtime, state: TenantState):
        self.runtime, self.state, self.tenant = runtime, state, state.tenant
        self.engine: Engine | None = None

    @property
    def applied_seq(self) -> int:
        return self.engine.applied_seq

    async def start(self, config: TenantConfig) -> int:
        """Build it; returns how many events the last pass replayed."""
        rt, loop = self.runtime, asyncio.get_running_loop()
        self.engine = Engine(config, backend=rt.backend)
        logged = await loop.run_in_executor(rt._rebuild_thread, rt._rebuild_reader.count_events, self.tenant.id)
        if logged >= rebuild.CHILD_PROCESS_EVENTS:
            if rt._rebuild_child is None:
                rt._rebuild_child = rebuild.child_pool()
            engine_state = await loop.run_in_executor(
                rt._rebuild_child, rebuild.replay_state, str(rt.config.data_dir), self.tenant.id, config.to_dict(),
                _REBUILD_SWAP_EVENTS)
            await loop.run_in_executor(rt._rebuild_thread, self.engine.load_state, engine_state)
        return await self.catch_up()

    async def catch_up(self) -> int:
        """Apply what the log had gained when called; returns how many events that was."""
        rt = self.runtime
        return await asyncio.get_running_loop().run_in_executor(
            rt._rebuild_thread, rt._replay_into, self.engine, self.tenant, rt._rebuild_reader, self.state.logged_seq)


class _WorkerBuild:
    """A tenant's engine rebuilt in the worker process that owns it (see worker_runner.Build); here, only how far
    it has read, for the ingest hold-back."""

    engine = None  # it never leaves the worker: SwapIn(engine=None) serves it there

    def __init__(self, runtime: Runtime, state: TenantState):
        self.runtime, self.state, self.tenant_id = runtime, state, state.tenant.id
        self.applied_seq = 0

    async def start(self, config: TenantConfig) -> int:
        """Build it from the log as committed now (what comes meanwhile is caught up after, ingest held back)."""
        replayed, self.applied_seq = await self.runtime.command(Build(self.tenant_id, config, self.state.logged_seq))
        return replayed

    async def catch_up(self) -> int:
        """Apply what the log had gained when called; returns how many events that was."""
        replayed, self.applied_seq = await self.runtime.command(CatchUpBuild(self.tenant_id, self.state.logged_seq))
        return replayed

