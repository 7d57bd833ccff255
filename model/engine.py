"""The Action Weighting Engine: one tenant's posteriors, Markov chain, user windows and state, and the learned
score that combines them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

import kernels

from ._rings import plan_ring_append
from .attribution import Attribution, Resolved
from .catalog import ItemCatalog
from .combiner import ExampleQueue, OnlineLogit, resolve
from .config import TenantConfig
from .contexts import OTHER_DEVICE, context_codes, context_parts, n_contexts
from .events import EventBatch
from .item_rates import CATEGORY_BUCKETS, ITEM_BUCKETS, HashedRates
from .markov import MarkovChain
from .posteriors import Evidence, beta_mean, prior_params, shrunk_rate, transition_lift
from .score_features import HEURISTIC, MARKOV_TABLES, ScoreFeatures, log_odds, session_item_features
from .sequences import category_buckets
from .user_state import UserState
from .windows import UserWindows

if TYPE_CHECKING:
    import torch

# The Predictive Engagement Module's two horizons: conversion within 5 and within 60 minutes.
PREDICT_HORIZONS_S = (300.0, 3600.0)
SCORE_MODES = ("thompson", "mean", "prior")
# Before any evidence, a conversion within the horizon is taken to be rare, as it is in e-commerce: a fresh
# tenant must not predict that every visitor is about to buy.
BASE_CONVERSION_RATE = 0.05
# The learned predictions, and the feature each one starts from (its heuristic) before any outcome.
ROLES = {"score": HEURISTIC, "purchase_5m": "markov_5m", "purchase_60m": "markov_60m"}
# Tenant-wide knowledge that features read (posteriors, lifts, the chain's rates, item and category shares)
# and the learned predictions move only at ticks of event time, so what an event sees does not depend on how
# the stream was batched.
TICK_S = 300.0


@dataclass(frozen=True)
class Scores:
    """Per scored user: the engagement score (posterior mean of P(conversion within the tenant's horizon))
    and a Thompson draw of it, the next-action distribution, P(conversion in 5 / 60 min)."""

    score: np.ndarray
    score_draw: np.ndarray
    next_probs: np.ndarray
    purchase_5m: np.ndarray
    purchase_60m: np.ndarray
    known: np.ndarray
    features: np.ndarray | torch.Tensor  # [B, d] the users' state now, as the learned predictions and the Transformer
    # read it; where the batch was scored on a device, it stays there (a torch tensor)
    users: np.ndarray  # dense indexes, -1 for unknown users
    windows: "_Window | None" = None  # the users' windows as the host read them (None: scored on a device)


@dataclass(frozen=True)
class Observed:
    """Per applied event (batch order): the score's features just after it, and each learned prediction
    as serving would have answered then."""

    features: np.ndarray
    predictions: dict[str, np.ndarray]


class _Window(NamedTuple):
    """Users' windows gathered once per scoring batch, for every feature that reads them."""

    actions: np.ndarray
    ts: np.ndarray
    lengths: np.ndarray
    items: np.ndarray


@dataclass(frozen=True)
class _Tables:
    """The tenant-wide tables features read, as of the last tick."""

    alpha: np.ndarray  # [contexts, actions]
    beta: np.ndarray
    lift: np.ndarray  # [actions, actions]
    prior_mean: np.ndarray  # [actions]
    conversion: tuple[tuple[np.ndarray, float], ...]  # per horizon index: pair rates [actions + 1, actions], overall

    @property
    def theta(self) -> np.ndarray:
        return beta_mean(self.alpha, self.beta)


class Engine:
    """Applies event batches in log order and scores users; no I/O, deterministic given its inputs."""

    def __init__(self, config: TenantConfig, backend: str = "numpy"):
        self.config = config
        self.backend = backend
        n_actions = len(config.actions)
        self.n_actions = n_actions
        self.horizons_s = (config.horizon_s, *PREDICT_HORIZONS_S)
        means = np.array([config.prior_mean(a) for a in config.actions])
        self.prior_alpha, self.prior_beta = prior_params(means, config.prior_strength)
        self.windows = UserWindows(config.window_size)
        self.attribution = Attribution(self.horizons_s)
        self.context_evidence = Evidence((n_contexts(len(config.segments)), n_actions))
        # Row n_actions of the previous-action axis means "first action of a session".
        self.transition_evidence = Evidence((len(self.horizons_s), n_actions + 1, n_actions))
        self.markov = MarkovChain(n_actions)
        self.catalog = ItemCatalog(config.session_gap_s, users=self.windows.users)
        self.user_state = UserState(n_actions, config.conversion_code, config.session_gap_s)
        self.items = HashedRates(ITEM_BUCKETS, config.forget_half_life_s)
        self.categories = HashedRates(CATEGORY_BUCKETS, config.forget_half_life_s)
        self.features = ScoreFeatures(config.actions)
        self.role_horizons = {"score": config.horizon_s, "purchase_5m": PREDICT_HORIZONS_S[0],
                              "purchase_60m": PREDICT_HORIZONS_S[1]}
        self.examples = {h: ExampleQueue(h, self.features.width) for h in sorted(set(self.role_horizons.values()))}
        self.combiners = {
            role: OnlineLogit(self.features.prior_mean(anchor), self.features.prior_sd(), config.forget_half_life_s)
            for role, anchor in ROLES.items()
        }
        # A GPU backend keeps what the kernels read on the device; NumPy reads the host arrays (and
        # needs no torch, so the device module is imported only here).
        self.device_state = None
        if backend != "numpy":
            from .device_state import DeviceState

            self.device_state = DeviceState(config.window_size, n_actions, kernels.compute_device())
            kernels.warm_up(backend, config.window_size, self.n_actions)
        self._device_tables_stale = True  # the device's tables are older than the last tick
        self.clock_s = -np.inf
        self.tick = -np.inf  # index of the last tick (floor(clock / TICK_S)) the tables were refreshed at
        self._evidence_changed = False  # since the tables were last frozen
        self.applied_seq = 0
        self.draws = 0
        self.events_applied = 0
        self.late_events = 0  # arrived behind the watermark: in windows and the chain, not attributed
        self.tables = self._freeze_tables()

    # ---- ingest -------------------------------------------------------------------------------

    def apply(self, batch: EventBatch, seqs: np.ndarray | None = None) -> int:
        """Apply events in order; rows whose log sequence number was applied already are skipped."""
        observed = self._apply(batch, seqs, predict=False)
        return len(observed.features)

    def apply_observed(self, batch: EventBatch, seqs: np.ndarray) -> tuple[EventBatch, Observed]:
        """Apply events as :meth:`apply` does; return the events applied (those not applied before) and, per
        event, what :meth:`observe` returns: what serving deciding at ingest reads."""
        if len(seqs) and not (fresh := seqs > self.applied_seq).all():
            batch, seqs = batch.take(fresh), seqs[fresh]
        return batch, self._apply(batch, seqs, predict=True)

    def observe(self, batch: EventBatch) -> Observed:
        """Apply events and return, per event, the score's features just after it and the learned predictions
        that serving would have answered for its user right then (for offline replay and training)."""
        return self._apply(batch, None, predict=True)

    def _apply(self, batch: EventBatch, seqs: np.ndarray | None, predict: bool) -> Observed:
        if seqs is not None:
            fresh = seqs > self.applied_seq
            if not fresh.all():
                batch, seqs = batch.take(fresh), seqs[fresh]
        parts: list[Observed] = []
        # A tick falls where the newest event time enters a new TICK_S interval: the batch is applied in
        # segments between ticks, each reading the tables of the tick before it.
        newest = np.maximum.accumulate(np.r_[self.clock_s, batch.ts])[1:]
        ticks = np.floor(newest / TICK_S)
        starts = np.flatnonzero(np.r_[True, ticks[1:] != ticks[:-1]]) if len(batch) else np.zeros(0, np.int64)
        for lo, hi in zip(starts, np.r_[starts[1:], len(batch)]):
            if ticks[lo] > self.tick:
                self._tick(ticks[lo])
            parts.append(self._apply_segment(batch.take(slice(lo, hi)), predict))
        if self.device_state is not None and len(batch):
            # Once per batch, not per segment: nothing scores in between.
            self._push_users_to_device(np.unique(self.windows.lookup(batch.user_ids, create=False)))
            self.device_state.push_next_probs(self.markov.probabilities())
        if seqs is not None and len(seqs):
            self.applied_seq = int(seqs.max())
        if not parts:
            return Observed(np.zeros((0, self.features.width), np.float32), {r: np.zeros(0) for r in ROLES} if predict else {})
        return Observed(np.concatenate([p.features for p in parts]),
                        {r: np.concatenate([p.predictions[r] for p in parts]) for r in parts[0].predictions})

    def _tick(self, tick: float) -> None:
        """Fold what was learned since the last tick into what features and predictions read."""
        watermark = self.clock_s - self.config.allowed_lateness_s
        if np.isfinite(self.clock_s):
            for horizon_s, queue in self.examples.items():
                due = queue.resolve(watermark, self.clock_s)
                queue.adapt()
                if due is None:
                    continue
                converted = self.attribution.converted_within(
                    due["user"], due["ts"], due["action"], horizon_s, self.config.conversion_code)
                for role, combiner in self.combiners.items():
                    if self.role_horizons[role] == horizon_s:
                        combiner.update(due["x"], converted, due["weight"], self.clock_s)
            self.items.fold(self.clock_s)
            self.categories.fold(self.clock_s)
        if self._evidence_changed or not np.isfinite(self.tick):
            self.tables = self._freeze_tables()
            self._evidence_changed = False
        self._device_tables_stale = True
        self.tick = tick

    def _freeze_tables(self) -> _Tables:
        alpha, beta = self.posterior()
        return _Tables(alpha, beta, self.lift(), beta_mean(self.prior_alpha, self.prior_beta),
                       tuple(self._conversion_table(h) for h in range(len(self.horizons_s))))

    def _apply_segment(self, batch: EventBatch, predict: bool) -> Observed:
        cfg = self.config
        # Each event's watermark is the newest time seen before it, less the allowed lateness. It
        # does not depend on how the stream was batched, so neither does attribution.
        newest_before = np.maximum.accumulate(np.r_[self.clock_s, batch.ts])[:-1]
        on_time = batch.ts >= newest_before - cfg.allowed_lateness_s
        self._advance_clock(float(batch.ts.max()))
        ctx = context_codes(batch.device, batch.ts, batch.tz_offset_min, batch.segment)
        item_keys, category_keys = self.items.keys(batch.item_ids), self.categories.keys(batch.categories)
        users = self.windows.lookup(batch.user_ids, create=True)
        prev_action, prev_ts = self.windows.push(users, batch.actions, batch.ts, ctx,
                                                 category_buckets(batch.categories), item_keys)
        in_session = (prev_action >= 0) & (np.abs(batch.ts - prev_ts) <= cfg.session_gap_s)
        prev = np.where(in_session, prev_action, self.n_actions)
        x = self._event_features(batch, users, ctx, prev, item_keys, category_keys)
        predictions = {role: c.predict(x) for role, c in self.combiners.items()} if predict else {}
        self.markov.add(prev, batch.actions, self._weight_at(batch.ts))
        self.late_events += int((~on_time).sum())
        a = on_time
        for queue in self.examples.values():
            queue.push(users[a], batch.ts[a], batch.actions[a], x[a])
        converted = batch.actions == cfg.conversion_code
        self.attribution.add(users[a], batch.ts[a], batch.actions[a], prev[a], ctx[a], converted[a])
        self._learn(self.attribution.sweep(self.clock_s - cfg.allowed_lateness_s, cfg.conversion_code))
        self.items.add(item_keys, converted, batch.ts)
        self.categories.add(category_keys, converted, batch.ts)
        self.events_applied += len(batch)
        self.catalog.observe(batch, users)
        return Observed(x, predictions)

    def _event_features(self, batch: EventBatch, users, ctx, prev, item_keys, category_keys) -> np.ndarray:
        """The score's features just after each event (tenant-wide parts as of the last tick)."""
        state, item_keys, category_keys = self.user_state.push(users, batch.actions, batch.ts, item_keys,
                                                               category_keys)
        theta = self.tables.theta
        learned, heuristic, session_items = self._window_scores_at_events(users, batch.ts, theta[ctx].astype(np.float32))
        cur = batch.actions.astype(np.int64)
        return self.features.assemble(
            seq_learned=learned,
            seq_prior=heuristic,
            context_weight=theta[ctx, cur],
            markov=self._markov_rates(prev, cur),
            last_action=cur,
            state=state,
            item=self.items.rates(item_keys),
            category=self.categories.rates(category_keys),
            session_items=session_items,
        )

    def _window_scores_at_events(self, users: np.ndarray, ts: np.ndarray, theta: np.ndarray):
        """Windowed sequence scores (learned weights with lifts; heuristic weights without) and the session's
        item features, just after each event."""
        actions, times, lengths, items = self.windows.gather(users, "item")
        # The windows hold the whole segment: events of the same user later in it are cut off.
        plan = plan_ring_append(users)
        later = np.empty(len(users), np.int64)
        later[plan.order] = np.repeat(plan.counts, plan.counts) - 1 - plan.rank
        lengths = np.maximum(lengths - later, 0).astype(np.int32)
        ages = np.maximum(ts[:, None] - times, 0.0).astype(np.float32)
        half_life = self.config.recency_half_life_s
        tables = self.tables
        prior = np.broadcast_to(tables.prior_mean, theta.shape).astype(np.float32)
        learned, heuristic = kernels.sequence_scores_many(
            actions, ages, lengths, [(theta, tables.lift.astype(np.float32)), (prior, np.ones_like(tables.lift))],
            half_life_s=half_life, backend="numpy", check=False)
        session = session_item_features(actions, times, items, lengths, self.config.session_gap_s,
                                        self.config.conversion_code)
        return np.asarray(learned), np.asarray(heuristic), session

    def _markov_rates(self, prev: np.ndarray, cur: np.ndarray) -> dict[str, np.ndarray]:
        """The chain's conversion rates after prev -> cur, for the tenant's, the 5- and the 60-minute horizons."""
        out = {}
        for name, h in MARKOV_TABLES.items():
            pair, overall = self.tables.conversion[h]
            out[name] = np.where(cur >= 0, pair[prev, np.maximum(cur, 0)], overall)
        return out

    def _push_users_to_device(self, users: np.ndarray) -> None:
        if self.device_state is not None:
            self.device_state.push_users(self.windows, self.user_state, users)

    def _device_tables(self):
        """The tables on the device, sent there on the first use after a tick."""
        ds = self.device_state
        if self._device_tables_stale or ds.tables is None:
            from .device_state import Tables

            t, up = self.tables, ds.to_device
            f32 = np.float32
            ds.push_tables(Tables(
                alpha=up(t.alpha.astype(f32)), beta=up(t.beta.astype(f32)), theta=up(t.theta.astype(f32)),
                lift=up(t.lift.astype(f32)), prior_mean=up(t.prior_mean.astype(f32)),
                conversion_pair=up(np.stack([pair for pair, _ in t.conversion])),
                conversion_overall=up(np.array([overall for _, overall in t.conversion])),
                item_rate=up(np.stack(self.items.rates(np.arange(self.items.buckets)), axis=1)),
                category_rate=up(np.stack(self.categories.rates(np.arange(self.categories.buckets)), axis=1)),
                weights=up(np.stack([self.combiners[role].mean for role in ROLES])),  # device_pass's order
                draw_factor=up(self.combiners["score"].draw_factor()),
            ))
            if ds.next_probs is None:
                ds.push_next_probs(self.markov.probabilities())
            self._device_tables_stale = False
        return ds.tables

    def _advance_clock(self, ts_max: float) -> None:
        if ts_max <= self.clock_s:
            return
        if np.isfinite(self.clock_s):
            factor = float(np.exp2(-(ts_max - self.clock_s) / self.config.forget_half_life_s))
            self.context_evidence.scale(factor)
            self.transition_evidence.scale(factor)
            self.markov.scale(factor)
        self.clock_s = ts_max

    def _weight_at(self, t: np.ndarray) -> np.ndarray:
        """Evidence dated ``t``, as weighted at the engine clock (forgetting in event time)."""
        return np.exp2(-np.maximum(self.clock_s - t, 0.0) / self.config.forget_half_life_s)

    def _learn(self, resolved: dict[float, Resolved]) -> None:
        for h, horizon_s in enumerate(self.horizons_s):
            r = resolved.get(horizon_s)
            if r is None:
                continue
            w = self._weight_at(r.deadline)
            self._evidence_changed = True
            if h == 0:
                self.context_evidence.add((r.ctx, r.action), r.success, w)
            self.transition_evidence.add((np.full(len(r), h), r.prev, r.action), r.success, w)

    # ---- posteriors ---------------------------------------------------------------------------

    def posterior(self) -> tuple[np.ndarray, np.ndarray]:
        """Beta(alpha, beta) per (context, action)."""
        ev = self.context_evidence
        return self.prior_alpha + ev.success, self.prior_beta + ev.failure

    def pooled_posterior(self) -> tuple[np.ndarray, np.ndarray]:
        """Beta(alpha, beta) per action over all contexts."""
        ev = self.context_evidence
        return self.prior_alpha + ev.success.sum(axis=0), self.prior_beta + ev.failure.sum(axis=0)

    def lift(self) -> np.ndarray:
        """lift[prev, cur] of the weighting horizon."""
        ev = self.transition_evidence
        action_mean = beta_mean(*self.pooled_posterior())
        n = self.n_actions
        return transition_lift(ev.success[0, :n], ev.failure[0, :n], action_mean, self.config.prior_strength)

    def _conversion_table(self, h: int) -> tuple[np.ndarray, float]:
        """P(conversion within horizon h | prev -> cur) [prev, cur], shrunk to the action's, then the overall
        rate; and the overall rate (for users without a last action)."""
        s, f = self.transition_evidence.success[h], self.transition_evidence.failure[h]
        k = self.config.prior_strength
        overall = (s.sum() + BASE_CONVERSION_RATE * k) / (s.sum() + f.sum() + k)
        action = shrunk_rate(s.sum(axis=0), f.sum(axis=0), overall, k)
        return shrunk_rate(s, f, action[None, :], k), float(overall)

    # ---- scoring ------------------------------------------------------------------------------

    def score(self, user_ids, now_s: float, *, draw: bool = True, users: np.ndarray | None = None) -> Scores:
        """Score users at ``now_s``: the learned predictions (posterior means), and with ``draw`` a Thompson draw
        of the score for what decides signals; unknown users score from priors. ``users``: their dense indexes,
        where the caller has looked them up already.

        Where a GPU backend scores the batch on the device (:meth:`scores_on_device`), its ``features`` stay there
        (a torch tensor), for the Transformer to read."""
        if users is None:
            users = self.windows.lookup(user_ids, create=False)
        if self.scores_on_device(len(users), draw=draw):
            return self.predict_on_device(users, now_s, draw=draw)[0]
        windows = _Window(*self.windows.gather(users, "item"))
        modes = ("mean", "prior", "thompson") if draw else ("mean", "prior")
        sequence = self._sequence_scores(users, now_s, modes, windows)
        x = self.current_features(users, now_s, windows, sequence)
        score = self.combiners["score"].predict(x)
        score_draw = score
        if draw:
            drawn = x.copy()
            drawn[:, self.features.index["seq_learned"]] = log_odds(sequence["thompson"])
            rng = np.random.default_rng([self.config.seed, self.draws])
            score_draw = self.combiners["score"].draw(drawn, rng)
        cur, _, last_ts, _, lengths = self.windows.last_two(users)
        active = (lengths > 0) & (now_s - last_ts <= self.config.session_gap_s)
        markov_row = np.where(active, cur, self.markov.start)
        return Scores(
            score=score,
            score_draw=score_draw,
            next_probs=self.markov.probabilities()[markov_row],
            purchase_5m=self.combiners["purchase_5m"].predict(x),
            purchase_60m=self.combiners["purchase_60m"].predict(x),
            known=users >= 0,
            features=x,
            users=users,
            windows=windows,
        )

    def scores_on_device(self, rows: int, *, draw: bool = True, predictor=None) -> bool:
        """Whether a batch of ``rows`` users is scored on the device: on a GPU backend, a batch large enough
        (``kernels.DEVICE_MIN_ROWS``), or smaller where the pass replays as a CUDA graph (``device_graphs``)."""
        if self.device_state is None:
            return False
        if kernels.for_rows(self.backend, rows) != "numpy":
            return True
        from .device_graphs import replays

        return replays(self, rows, draw, predictor)

    def predict_on_device(self, users: np.ndarray, now_s: float, *, draw: bool = True, predictor=None):
        """:meth:`score` of ``users`` (dense indexes) in one device pass, with a Transformer's predictions where
        ``predictor`` (on this device) is given: (scores, (next-action, conversion probabilities) or None,
        window lengths or None). See :func:`model.device_scoring.run_pass`."""
        from .device_scoring import run_pass

        self._device_tables()
        return run_pass(self, users, now_s, draw, predictor)

    def current_features(self, users: np.ndarray, now_s: float, windows: _Window | None = None,
                         sequence: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """The score's features of ``users`` (dense indexes, -1 unknown) read at ``now_s``; ``sequence`` holds
        their windowed sequence scores ("mean" and "prior") where the caller already has them."""
        if windows is None:
            windows = _Window(*self.windows.gather(users, "item"))
        if sequence is None:
            sequence = self._sequence_scores(users, now_s, ("mean", "prior"), windows)
        cur, before, last_ts, before_ts, _ = self.windows.last_two(users)
        in_session = (before >= 0) & (np.abs(last_ts - before_ts) <= self.config.session_gap_s)
        pair_prev = np.where(in_session, before, self.n_actions)
        default_ctx = int(context_codes(OTHER_DEVICE, np.float64(now_s), 0, 0))
        ctx = self.windows.last_context(users, default_ctx)
        known = users >= 0
        items = np.zeros(len(users), np.int32)
        categories = np.zeros(len(users), np.int32)
        if known.any():
            items[known] = self.user_state.last_item[users[known]]
            categories[known] = self.user_state.last_category[users[known]]
        return self.features.assemble(
            seq_learned=sequence["mean"],
            seq_prior=sequence["prior"],
            context_weight=self.tables.theta[ctx, np.maximum(cur, 0)],
            markov=self._markov_rates(pair_prev, cur),
            last_action=cur.astype(np.int64),
            state=self.user_state.features(users, now_s),
            item=self.items.rates(items),
            category=self.categories.rates(categories),
            session_items=session_item_features(windows.actions, windows.ts, windows.items, windows.lengths,
                                                self.config.session_gap_s, self.config.conversion_code),
        )

    def sequence_score(self, user_ids, now_s: float, *, mode: str = "thompson", use_lift: bool = True) -> np.ndarray:
        """The seed's windowed sequence score, a component of the learned score: Thompson draws, posterior
        means or the heuristic priors as the action weights."""
        if mode not in SCORE_MODES:
            raise ValueError(f"mode must be one of {SCORE_MODES}, got {mode!r}")
        users = self.windows.lookup(user_ids, create=False)
        lift = "lift" if use_lift else "flat"
        return self._sequence_scores(users, now_s, (mode,), lifts={mode: lift})[mode]

    def _sequence_scores(self, users: np.ndarray, now_s: float, modes: tuple[str, ...], windows=None,
                         lifts: dict[str, str] | None = None) -> dict[str, np.ndarray]:
        """Windowed sequence scores of ``users`` per mode ("mean", "prior", "thompson"), in one pass over their
        windows; the learned modes weigh transitions by the lifts and "prior" does not, unless ``lifts`` says."""
        lifts = {mode: "flat" if mode == "prior" else "lift" for mode in modes} | (lifts or {})
        default_ctx = int(context_codes(OTHER_DEVICE, np.float64(now_s), 0, 0))
        if not self.scores_on_device(len(users)):
            return self._sequence_scores_host(users, now_s, default_ctx, modes, lifts, windows)
        return self._sequence_scores_device(users, now_s, default_ctx, modes, lifts)

    def _sequence_scores_host(self, users, now_s, default_ctx, modes, lifts, windows=None) -> dict[str, np.ndarray]:
        actions, ts, lengths = self.windows.gather(users) if windows is None else windows[:3]
        ctx = self.windows.last_context(users, default_ctx)
        ages = np.maximum(now_s - ts, 0.0).astype(np.float32)
        tables = {"lift": self.tables.lift.astype(np.float32), "flat": np.ones_like(self.tables.lift, np.float32)}
        # The host holds every window too: this is where a GPU backend's small batches go.
        scores = kernels.sequence_scores_many(
            actions, ages, lengths, [(self._theta(ctx, mode), tables[lifts[mode]]) for mode in modes],
            half_life_s=self.config.recency_half_life_s, backend="numpy", check=False,
        )
        return dict(zip(modes, scores))

    def _sequence_scores_device(self, users, now_s, default_ctx, modes, lifts) -> dict[str, np.ndarray]:
        """One copy in (the users' indexes), the kernels on the windows resident there, one copy out."""
        import torch

        ds = self.device_state
        t = self._device_tables()
        u = ds.to_device(users)
        rows = ds.gather(u)
        ctx = torch.where(u >= 0, rows.last_ctx, default_ctx).long()
        actions, lengths = rows.action.contiguous(), rows.length
        ages = (now_s - rows.ts).clamp(min=0.0).float()
        alpha, beta = t.alpha[ctx], t.beta[ctx]
        tables = {"lift": t.lift, "flat": torch.ones_like(t.lift)}
        scores = []
        for mode in modes:
            if mode == "prior":
                theta = t.prior_mean.expand(len(users), -1).contiguous()
            elif mode == "mean":
                theta = t.theta[ctx]
            else:
                self.draws += 1
                theta = kernels.beta_sample(alpha, beta, seed=self.config.seed, offset=self.draws,
                                            backend=self.backend, check=False)
            scores.append(kernels.sequence_scores(
                actions, ages, lengths, theta, tables[lifts[mode]], half_life_s=self.config.recency_half_life_s,
                backend=self.backend, check=False,
            ))
        out = torch.stack(scores).cpu().numpy()
        return dict(zip(modes, out))

    def _theta(self, ctx: np.ndarray, mode: str) -> np.ndarray:
        tables = self.tables
        if mode == "prior":
            return np.broadcast_to(tables.prior_mean, (len(ctx), self.n_actions)).astype(np.float32)
        alpha, beta = tables.alpha[ctx], tables.beta[ctx]
        if mode == "mean":
            return beta_mean(alpha, beta).astype(np.float32)
        self.draws += 1
        return np.asarray(
            kernels.beta_sample(alpha, beta, seed=self.config.seed, offset=self.draws, backend="numpy",
                                check=False)
        )

    def window_features(self, users: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The next-action Transformer's event tokens for ``users`` (dense indexes): [B, K] columns, lengths [B].

        The model also reads each user's state (:meth:`current_features`), which :meth:`score` returns.
        """
        actions, _, lengths = self.windows.gather(users)
        feats = self.windows.gather_features(users)
        _, device, daypart = context_parts(feats["ctx"])
        tokens = {
            "action": actions.astype(np.int64),
            "gap": feats["gap"].astype(np.int64),
            "device": device.astype(np.int64),
            "daypart": daypart.astype(np.int64),
            "category": feats["category"].astype(np.int64),
        }
        return tokens, lengths

    # ---- users --------------------------------------------------------------------------------

    def recent_actions(self, user_id: str) -> list[tuple[str, float]] | None:
        """The user's window as (action, ts), oldest first; None for an unknown user."""
        users = self.windows.lookup([user_id], create=False)
        if users[0] < 0:
            return None
        actions, ts, lengths = self.windows.gather(users)
        k = int(lengths[0])
        return [(self.config.actions[a], float(t)) for a, t in zip(actions[0, :k], ts[0, :k])]

    def erase_user(self, user_id: str) -> bool:
        """Forget everything held about one user; aggregate posteriors keep their anonymous counts."""
        idx = self.windows.erase(user_id)
        if idx is None:
            return False
        self.attribution.erase(idx)
        self.user_state.erase(idx)
        for queue in self.examples.values():
            queue.drop_user(idx)
        self.catalog.erase_row(idx)
        self._push_users_to_device(np.array([idx]))
        return True

    # ---- snapshots ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, np.ndarray]:
        """Everything needed to restore this engine exactly, as NumPy arrays."""
        return resolve(self.capture())

    def capture(self) -> dict:
        """:meth:`state_dict`, with its largest arrays :class:`~model.combiner.Deferred`: what a snapshot takes on
        the device thread, leaving the copying to its writer."""
        state = {f"windows.{k}": v for k, v in self.windows.state_dict().items()}
        state.update({f"attribution.{k}": v for k, v in self.attribution.state_dict().items()})
        state.update({f"catalog.{k}": v for k, v in self.catalog.state_dict().items()})
        state.update({f"user_state.{k}": v for k, v in self.user_state.state_dict(len(self.windows.ids)).items()})
        state.update({f"items.{k}": v for k, v in self.items.state_dict().items()})
        state.update({f"categories.{k}": v for k, v in self.categories.state_dict().items()})
        for horizon_s, queue in self.examples.items():
            state.update(queue.state_dict(f"examples.{horizon_s:g}"))
        for role, combiner in self.combiners.items():
            state.update(combiner.state_dict(f"combiner.{role}"))
        t = self.tables
        state.update({"tables.alpha": t.alpha.copy(), "tables.beta": t.beta.copy(), "tables.lift": t.lift.copy(),
                      "tables.prior_mean": t.prior_mean.copy(),
                      "tables.conversion_pair": np.stack([pair for pair, _ in t.conversion]),
                      "tables.conversion_overall": np.array([overall for _, overall in t.conversion])})
        state.update(
            {
                "context.success": self.context_evidence.success.copy(),
                "context.failure": self.context_evidence.failure.copy(),
                "transition.success": self.transition_evidence.success.copy(),
                "transition.failure": self.transition_evidence.failure.copy(),
                "markov.counts": self.markov.counts.copy(),
                "scalars": np.array(
                    [self.clock_s, self.applied_seq, self.draws, self.events_applied, self.late_events, self.tick],
                    np.float64,
                ),
            }
        )
        return state

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore from :meth:`state_dict` of an engine with the same config."""
        self.windows.load_state({k[8:]: v for k, v in state.items() if k.startswith("windows.")})
        self.attribution.load_state({k[12:]: v for k, v in state.items() if k.startswith("attribution.")})
        self.catalog.load_state({k[8:]: v for k, v in state.items() if k.startswith("catalog.")})
        self.user_state.load_state({k[11:]: v for k, v in state.items() if k.startswith("user_state.")})
        self.items.load_state({k[6:]: v for k, v in state.items() if k.startswith("items.")})
        self.categories.load_state({k[11:]: v for k, v in state.items() if k.startswith("categories.")})
        for horizon_s, queue in self.examples.items():
            queue.load_state(state, f"examples.{horizon_s:g}")
        for role, combiner in self.combiners.items():
            combiner.load_state(state, f"combiner.{role}")
        self.context_evidence.success = state["context.success"].copy()
        self.context_evidence.failure = state["context.failure"].copy()
        self.transition_evidence.success = state["transition.success"].copy()
        self.transition_evidence.failure = state["transition.failure"].copy()
        self.markov.counts = state["markov.counts"].copy()
        clock, seq, draws, applied, late, tick = state["scalars"]
        self.clock_s, self.applied_seq, self.draws = float(clock), int(seq), int(draws)
        self.events_applied, self.late_events, self.tick = int(applied), int(late), float(tick)
        self.tables = _Tables(state["tables.alpha"].copy(), state["tables.beta"].copy(), state["tables.lift"].copy(),
                              state["tables.prior_mean"].copy(),
                              tuple((pair.copy(), float(overall)) for pair, overall in
                                    zip(state["tables.conversion_pair"], state["tables.conversion_overall"])))
        self._push_users_to_device(np.arange(len(self.windows.ids)))
        self._device_tables_stale = True
        if self.device_state is not None:
            self.device_state.push_next_probs(self.markov.probabilities())
