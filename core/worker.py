"""A worker: the engines, signal policies and predictors of a shard's tenants, driven by commands in order.

A worker holds no asyncio, no HTTP and no SQL. It is driven from one thread (the one that drives the device); what
it reads from storage reaches it in commands, and what it decides leaves in replies, so the host alone decides
whether it runs in a thread or in a process of its own.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from model import Engine, EventBatch
from model.engine import Observed
from model.contexts import describe_context
from model.decisions import decide, newly_idle, predict, worth_deciding
from model.events import ConfigChanged, recode_events
from model.report import weights_report
from model.signals import SignalPolicy

from . import commands as c
from .score_rows import packed_results, shown_signals


class NotOpen(LookupError):
    """A command for a tenant the worker has not opened."""


@dataclass
class Shard:
    """One tenant's state in the worker."""

    engine: Engine
    policy: SignalPolicy
    predictor: Any = None  # a TransformerPredictor, or None: the Markov chain predicts
    # While an engine is rebuilt for a config change: the users erased meanwhile (its replay may have read their
    # events before the erasure deleted them), to forget again in the rebuilt engine before it serves.
    erased_while_rebuilding: set[str] | None = None


@dataclass
class Worker:
    """Handles :mod:`core.commands` for its tenants; see :meth:`handle`."""

    backend: str = "numpy"
    shards: dict[int, Shard] = field(default_factory=dict)

    def handle(self, command: c.Command) -> c.Reply:
        """Run one command; its result and the decisions and resolutions it made. :class:`NotOpen` for a tenant
        this worker has not opened (a restarted worker, before its tenants are recovered)."""
        if command.tenant_id not in self.shards and not isinstance(command, c.Open):
            raise NotOpen(f"tenant {command.tenant_id} is not open in this worker yet; retry shortly")
        return _HANDLERS[type(command)](self, command)

    # ---- tenants ------------------------------------------------------------------------------

    def _open(self, cmd: c.Open) -> c.Reply:
        engine, problem, unreadable = Engine(cmd.config, backend=self.backend), None, False
        if cmd.engine_state is not None:
            try:
                engine.load_state(cmd.engine_state)
                for user_id in cmd.erased:
                    engine.erase_user(user_id)
            except KeyError as exc:  # written by an older nudge: the log alone rebuilds the state
                engine, problem = Engine(cmd.config, backend=self.backend), f"the snapshot lacks {exc}"
            except Exception as exc:  # readable, but not a state this engine can take
                engine, problem, unreadable = Engine(cmd.config, backend=self.backend), f"{type(exc).__name__}: {exc}", True
        self.shards[cmd.tenant_id] = Shard(engine, SignalPolicy(cmd.config, backend=self.backend))
        return c.Reply(c.Opened(engine.applied_seq, problem, unreadable))

    def _restore_policy(self, cmd: c.RestorePolicy) -> c.Reply:
        shard = self.shards[cmd.tenant_id]
        policy = SignalPolicy(shard.engine.config, backend=self.backend)
        policy.restore(cmd.recent, cmd.rewards, cmd.open_signals)
        # A conversion may have been applied while its resolution still waited to be written: the log knew.
        resolutions = [policy.resolve(signal_id, True, ts) for signal_id, ts in cmd.converted.items()
                       if signal_id in policy.open]
        shard.policy = policy
        return c.Reply(None, [], resolutions)

    def _reconfigure(self, cmd: c.Reconfigure) -> c.Reply:
        shard = self.shards[cmd.tenant_id]
        shard.engine.config = cmd.config
        # Carried over in memory: decisions still on their way to the signal log stay known.
        shard.policy = shard.policy.reconfigured(cmd.config)
        return c.Reply()

    def _rebuilding(self, cmd: c.Rebuilding) -> c.Reply:
        self.shards[cmd.tenant_id].erased_while_rebuilding = set() if cmd.started else None
        return c.Reply()

    def _swap(self, cmd: c.Swap) -> c.Reply:
        shard, engine = self.shards[cmd.tenant_id], cmd.engine
        for user_id in shard.erased_while_rebuilding or ():
            engine.erase_user(user_id)
        engine.draws = shard.engine.draws
        shard.engine, shard.erased_while_rebuilding = engine, None
        return self._reconfigure(c.Reconfigure(cmd.tenant_id, cmd.config))

    def _serve_model(self, cmd: c.ServeModel) -> c.Reply:
        self.shards[cmd.tenant_id].predictor = cmd.predictor
        return c.Reply()

    def _snapshot(self, cmd: c.Snapshot) -> c.Reply:
        engine = self.shards[cmd.tenant_id].engine
        return c.Reply((engine.capture(), engine.applied_seq, engine.config.engine_dict()))

    def _erase(self, cmd: c.Erase) -> c.Reply:
        shard = self.shards[cmd.tenant_id]
        shard.policy.erase(cmd.user_id)
        if shard.erased_while_rebuilding is not None:
            shard.erased_while_rebuilding.add(cmd.user_id)
        return c.Reply(shard.engine.erase_user(cmd.user_id))

    # ---- events -------------------------------------------------------------------------------

    def _apply(self, cmd: c.Apply) -> c.Reply:
        applied, [(decisions, resolutions)] = self._update(cmd)
        return c.Reply(applied, decisions, resolutions)

    def _update(self, cmd: c.Apply, parts: list[int] | None = None) -> tuple[c.Applied, list[tuple[list, list]]]:
        """The engine update of ``cmd``'s events and, per part of them (its rows in order, of lengths ``parts``; one
        part by default), what the signal policy made of that part: its decisions and the resolutions of its
        conversions. Parts are taken in log order, so a part's conversions resolve the decisions of those before
        it, as separate updates would."""
        started = time.perf_counter()
        shard = self.shards[cmd.tenant_id]
        engine, batch = shard.engine, cmd.batch
        nothing = [([], [])] * (1 if parts is None else len(parts))
        if engine.config != cmd.config:
            # Committed under a config the live engine does not have yet (its successor is being rebuilt from the
            # log, which holds these events too): applied in the live engine's codes where they mean something
            # there, so scores keep seeing acknowledged events meanwhile.
            try:
                batch = recode_events(batch, cmd.config, engine.config)
            except ConfigChanged:  # actions the live engine lacks: the rebuild has them
                return self._applied(engine, 0, started), nothing
        if not cmd.live:
            return self._applied(engine, engine.apply(batch, cmd.seqs), started), nothing
        batch, observed = engine.apply_observed(batch, cmd.seqs)
        now = time.time()
        bounds = np.cumsum([0, *(parts or [len(batch)])])
        made = [self._ingest_signals(shard, batch, observed, slice(lo, hi), now)
                for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist())]
        return self._applied(engine, len(batch), started), made

    @staticmethod
    def _ingest_signals(shard: Shard, batch: EventBatch, observed: Observed, part: slice, now: float
                        ) -> tuple[list, list]:
        """Conversions resolve open signals; users active just now may get one."""
        engine = shard.engine
        batch = batch.take(part)
        observed = Observed(observed.features[part], {role: p[part] for role, p in observed.predictions.items()})
        converted = batch.actions == engine.config.conversion_code
        resolutions = shard.policy.conversions(batch.user_ids[converted], batch.ts[converted])
        if shard.predictor is None:
            users = worth_deciding(engine, batch, observed, now)
        else:  # the Transformer's predictions are known only once it has run: every recent user
            recent = batch.ts >= now - engine.config.session_gap_s
            users = list(dict.fromkeys(batch.user_ids[recent]))
        decisions = []
        if users:
            prediction = predict(engine, shard.predictor, users, now)
            decisions = [d for d in decide(engine, shard.policy, users, prediction, now) if d is not None]
        return decisions, resolutions

    def apply_joined(self, commands: list[c.Apply]) -> list[c.Reply]:
        """:class:`~core.commands.Apply` commands of one tenant, in log order and under one config, run as one
        engine update (whose fixed cost they then share): a reply each, with what its own events decided and
        resolved."""
        if len(commands) == 1:
            return [self.handle(commands[0])]
        first = commands[0]
        if first.tenant_id not in self.shards:
            return [self.handle(first)]  # raises NotOpen, as each would
        # Each command's rows past what the commands before it applied, as separate updates would take them.
        applied = self.shards[first.tenant_id].engine.applied_seq
        fresh = []
        for cmd in commands:
            fresh.append(cmd.seqs > applied)
            applied = max(applied, int(cmd.seqs[fresh[-1]].max(initial=applied)))
        batch = EventBatch.concat([cmd.batch.take(f) for cmd, f in zip(commands, fresh)])
        seqs = np.concatenate([cmd.seqs[f] for cmd, f in zip(commands, fresh)])
        done, made = self._update(c.Apply(first.tenant_id, batch, seqs, first.config, first.live),
                                  [int(f.sum()) for f in fresh])
        rows = sum(len(cmd.batch) for cmd in commands)
        return [c.Reply(c.Applied(int(f.sum()) if done.events else 0, done.applied_seq, done.users,
                                  done.seconds * len(cmd.batch) / max(rows, 1)), decisions, resolutions)
                for cmd, f, (decisions, resolutions) in zip(commands, fresh, made)]

    @staticmethod
    def _applied(engine: Engine, events: int, started: float) -> c.Applied:
        return c.Applied(events, engine.applied_seq, len(engine.windows.index), time.perf_counter() - started)

    def _count_new_users(self, cmd: c.CountNewUsers) -> c.Reply:
        index = self.shards[cmd.tenant_id].engine.windows.index
        new = sum(1 for user_id in set(cmd.user_ids) if user_id not in index)
        return c.Reply((len(index), new) if new and len(index) + new > cmd.limit else None)

    # ---- scores -------------------------------------------------------------------------------

    def _score(self, cmd: c.Score) -> c.Reply:
        shard = self.shards[cmd.tenant_id]
        engine, now = shard.engine, time.time() if cmd.now is None else cmd.now
        prediction = predict(engine, shard.predictor, cmd.user_ids, now)
        decisions = decide(engine, shard.policy, cmd.user_ids, prediction, now, cmd.hints)
        signals = shown_signals(decisions, cmd.user_ids, shard.policy.shown_signal)
        decided = [i for i, d in enumerate(decisions) if d is not None]
        packed = packed_results(engine.config.actions, cmd.user_ids, prediction, signals)
        return c.Reply(c.Scored(packed, decided, int(prediction.by_model.sum())), [decisions[i] for i in decided])

    def _explain(self, cmd: c.Explain) -> c.Reply:
        engine = self.shards[cmd.tenant_id].engine
        out = []
        for uid in cmd.user_ids:
            window = engine.recent_actions(uid) or []
            users = engine.windows.lookup([uid], create=False)
            ctx = int(engine.windows.last_ctx[users[0]]) if users[0] >= 0 else None
            out.append({
                "known": users[0] >= 0,
                "context": describe_context(ctx, engine.config.segments) if ctx is not None else None,
                "window": [{"action": a, "age_s": round(max(cmd.now - t, 0.0), 3)} for a, t in window],
            })
        return c.Reply(out)

    def _view(self, cmd: c.View) -> c.Reply:
        engine = self.shards[cmd.tenant_id].engine
        window = engine.recent_actions(cmd.user_id)
        if window is None:
            return c.Reply(None)
        return c.Reply({
            "user_id": cmd.user_id,
            "recent_actions": [{"action": a, "ts": t} for a, t in window],
            "score": float(engine.score([cmd.user_id], cmd.now, draw=False).score[0]),
            "score_kind": "posterior_mean",
        })

    def _sample_users(self, cmd: c.SampleUsers) -> c.Reply:
        index = self.shards[cmd.tenant_id].engine.windows.index
        step = max(1, -(-len(index) // cmd.limit))
        return c.Reply((list(itertools.islice(index, 0, None, step)), len(index)))

    def _posterior_scores(self, cmd: c.PosteriorScores) -> c.Reply:
        return c.Reply(self.shards[cmd.tenant_id].engine.score(cmd.user_ids, cmd.now, draw=False).score)

    # ---- signal outcomes ----------------------------------------------------------------------

    def _feedback(self, cmd: c.Feedback) -> c.Reply:
        policy = self.shards[cmd.tenant_id].policy
        return c.Reply(None, [], [policy.resolve(sid, True, ts) for sid, ts in cmd.converted if sid in policy.open])

    def _expire(self, cmd: c.Expire) -> c.Reply:
        return c.Reply(None, [], self.shards[cmd.tenant_id].policy.expire(cmd.now))

    def _decide_idle(self, cmd: c.DecideIdle) -> c.Reply:
        shard = self.shards[cmd.tenant_id]
        users = newly_idle(shard.engine, cmd.since, cmd.until)
        if not users:
            return c.Reply()
        prediction = predict(shard.engine, shard.predictor, users, cmd.until)
        decisions = decide(shard.engine, shard.policy, users, prediction, cmd.until)
        return c.Reply(None, [d for d in decisions if d is not None])

    def _weights(self, cmd: c.Weights) -> c.Reply:
        return c.Reply(weights_report(self.shards[cmd.tenant_id].engine))

    def _bandits(self, cmd: c.Bandits) -> c.Reply:
        return c.Reply(self.shards[cmd.tenant_id].policy.bandit_report())


_HANDLERS: dict[type, Callable[[Worker, Any], c.Reply]] = {
    c.Open: Worker._open,
    c.RestorePolicy: Worker._restore_policy,
    c.Apply: Worker._apply,
    c.Score: Worker._score,
    c.Explain: Worker._explain,
    c.View: Worker._view,
    c.SampleUsers: Worker._sample_users,
    c.PosteriorScores: Worker._posterior_scores,
    c.CountNewUsers: Worker._count_new_users,
    c.Feedback: Worker._feedback,
    c.Expire: Worker._expire,
    c.DecideIdle: Worker._decide_idle,
    c.Erase: Worker._erase,
    c.Reconfigure: Worker._reconfigure,
    c.Rebuilding: Worker._rebuilding,
    c.Swap: Worker._swap,
    c.Snapshot: Worker._snapshot,
    c.ServeModel: Worker._serve_model,
    c.Weights: Worker._weights,
    c.Bandits: Worker._bandits,
}
