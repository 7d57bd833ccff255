"""The Action Weighting Engine: one tenant's posteriors, Markov chain and user windows."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import kernels

from .attribution import Attribution, Resolved
from .catalog import ItemCatalog
from .config import TenantConfig
from .contexts import OTHER_DEVICE, context_codes, context_parts, n_contexts
from .events import EventBatch
from .markov import MarkovChain
from .posteriors import Evidence, beta_mean, prior_params, shrunk_rate, transition_lift
from .sequences import category_buckets
from .windows import UserWindows

# The Predictive Engagement Module's two horizons: conversion within 5 and within 60 minutes.
PREDICT_HORIZONS_S = (300.0, 3600.0)
SCORE_MODES = ("thompson", "mean", "prior")
# Before any evidence, a conversion within the horizon is taken to be rare, as it is in e-commerce: a fresh
# tenant must not predict that every visitor is about to buy.
BASE_CONVERSION_RATE = 0.05


@dataclass(frozen=True)
class Scores:
    """Per scored user: engagement score, next-action distribution, P(conversion in 5 / 60 min)."""

    score: np.ndarray
    next_probs: np.ndarray
    purchase_5m: np.ndarray
    purchase_60m: np.ndarray
    known: np.ndarray


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
        self.catalog = ItemCatalog(config.session_gap_s)
        # A GPU backend keeps what the kernels read on the device; NumPy reads the host arrays (and
        # needs no torch, so the device module is imported only here).
        self.device_state = None
        if backend != "numpy":
            from .device_state import DeviceState

            self.device_state = DeviceState(config.window_size, kernels.compute_device())
        self.clock_s = -np.inf
        self.applied_seq = 0
        self.draws = 0
        self.events_applied = 0
        self.late_events = 0  # arrived behind the watermark: in windows and the chain, not attributed

    # ---- ingest -------------------------------------------------------------------------------

    def apply(self, batch: EventBatch, seqs: np.ndarray | None = None) -> int:
        """Apply events in order; rows whose log sequence number was applied already are skipped."""
        if seqs is not None:
            fresh = seqs > self.applied_seq
            if not fresh.all():
                batch, seqs = batch.take(fresh), seqs[fresh]
        if not len(batch):
            return 0
        cfg = self.config
        # Each event's watermark is the newest time seen before it, less the allowed lateness. It
        # does not depend on how the stream was batched, so neither does attribution.
        newest_before = np.maximum.accumulate(np.r_[self.clock_s, batch.ts])[:-1]
        on_time = batch.ts >= newest_before - cfg.allowed_lateness_s
        self._advance_clock(float(batch.ts.max()))
        ctx = context_codes(batch.device, batch.ts, batch.tz_offset_min, batch.segment)
        users = self.windows.lookup(batch.user_ids, create=True)
        prev_action, prev_ts = self.windows.push(users, batch.actions, batch.ts, ctx, category_buckets(batch.categories))
        in_session = (prev_action >= 0) & (np.abs(batch.ts - prev_ts) <= cfg.session_gap_s)
        prev = np.where(in_session, prev_action, self.n_actions)
        self.markov.add(prev, batch.actions, self._weight_at(batch.ts))
        self.late_events += int((~on_time).sum())
        a = on_time
        self.attribution.add(users[a], batch.ts[a], batch.actions[a], prev[a], ctx[a], batch.actions[a] == cfg.conversion_code)
        self._learn(self.attribution.sweep(self.clock_s - cfg.allowed_lateness_s, cfg.conversion_code))
        if seqs is not None:
            self.applied_seq = int(seqs.max())
        self.events_applied += len(batch)
        self.catalog.observe(batch)
        self._push_to_device(np.unique(users))
        return len(batch)

    def _push_to_device(self, users: np.ndarray) -> None:
        if self.device_state is None:
            return
        self.device_state.push_users(self.windows, users)
        alpha, beta = self.posterior()
        self.device_state.push_tables(alpha, beta, self.lift(), beta_mean(self.prior_alpha, self.prior_beta))

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

    def _conversion_rates(self, h: int, prev: np.ndarray, cur: np.ndarray) -> np.ndarray:
        """P(conversion within horizon h | prev -> cur), shrunk to the action's, then the overall rate."""
        s, f = self.transition_evidence.success[h], self.transition_evidence.failure[h]
        k = self.config.prior_strength
        overall = (s.sum() + BASE_CONVERSION_RATE * k) / (s.sum() + f.sum() + k)
        action = shrunk_rate(s.sum(axis=0), f.sum(axis=0), overall, k)
        pair = shrunk_rate(s, f, action[None, :], k)
        return np.where(cur >= 0, pair[prev, np.maximum(cur, 0)], overall)

    # ---- scoring ------------------------------------------------------------------------------

    def score(self, user_ids, now_s: float, *, mode: str = "thompson", use_lift: bool = True) -> Scores:
        """Score users at time ``now_s``; unknown users have empty windows and score from priors."""
        if mode not in SCORE_MODES:
            raise ValueError(f"mode must be one of {SCORE_MODES}, got {mode!r}")
        users = self.windows.lookup(user_ids, create=False)
        default_ctx = int(context_codes(OTHER_DEVICE, np.float64(now_s), 0, 0))
        if self.device_state is None:
            scores = self._sequence_scores_host(users, now_s, default_ctx, mode, use_lift)
        else:
            scores = self._sequence_scores_device(users, now_s, default_ctx, mode, use_lift)
        n = self.n_actions
        cur, before, last_ts, before_ts, lengths = self.windows.last_two(users)
        active = (lengths > 0) & (now_s - last_ts <= self.config.session_gap_s)
        markov_row = np.where(active, cur, self.markov.start)
        pair_prev = np.where((before >= 0) & (np.abs(last_ts - before_ts) <= self.config.session_gap_s), before, n)
        return Scores(
            score=scores,
            next_probs=self.markov.probabilities()[markov_row],
            purchase_5m=self._conversion_rates(1, pair_prev, cur),
            purchase_60m=self._conversion_rates(2, pair_prev, cur),
            known=users >= 0,
        )

    def _sequence_scores_host(self, users, now_s, default_ctx, mode, use_lift) -> np.ndarray:
        actions, ts, lengths = self.windows.gather(users)
        theta = self._theta(self.windows.last_context(users, default_ctx), mode)
        n = self.n_actions
        lift = self.lift() if use_lift else np.ones((n, n))
        ages = np.maximum(now_s - ts, 0.0).astype(np.float32)
        return np.asarray(kernels.sequence_scores(
            actions, ages, lengths, theta, lift.astype(np.float32),
            half_life_s=self.config.recency_half_life_s, backend=self.backend,
        ))

    def _sequence_scores_device(self, users, now_s, default_ctx, mode, use_lift) -> np.ndarray:
        ds = self.device_state
        if ds.alpha is None:
            self._push_to_device(np.zeros(0, np.int64))
        actions, ages, lengths, ctx = ds.gather(users, now_s, default_ctx)
        if mode == "prior":
            theta = ds.prior_mean.expand(len(users), -1).contiguous()
        else:
            alpha, beta = ds.alpha[ctx], ds.beta[ctx]
            if mode == "mean":
                theta = alpha / (alpha + beta)
            else:
                self.draws += 1
                theta = kernels.beta_sample(alpha, beta, seed=self.config.seed, offset=self.draws, backend=self.backend)
        lift = ds.lift if use_lift else ds.lift.new_ones(ds.lift.shape)
        scores = kernels.sequence_scores(
            actions, ages, lengths, theta, lift, half_life_s=self.config.recency_half_life_s, backend=self.backend
        )
        return scores.cpu().numpy()

    def _theta(self, ctx: np.ndarray, mode: str) -> np.ndarray:
        if mode == "prior":
            return np.broadcast_to(beta_mean(self.prior_alpha, self.prior_beta), (len(ctx), self.n_actions)).astype(
                np.float32
            )
        alpha, beta = self.posterior()
        alpha, beta = alpha[ctx], beta[ctx]
        if mode == "mean":
            return beta_mean(alpha, beta).astype(np.float32)
        self.draws += 1
        return np.asarray(
            kernels.beta_sample(alpha, beta, seed=self.config.seed, offset=self.draws, backend=self.backend)
        )

    def window_features(self, users: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The next-action Transformer's inputs for ``users`` (dense indexes): [B, K] columns, lengths [B].

        The score input of an event is the engagement score its user had just before it (posterior
        means with lifts, as in training), recomputed from the window with today's posteriors.
        """
        actions, ts, lengths = self.windows.gather(users)
        feats = self.windows.gather_features(users)
        batch, k = actions.shape
        # Row (b, j) scores the first j events of user b's window as seen at the time of event j.
        rows_actions = np.repeat(actions, k, axis=0)
        ages = np.maximum(ts[:, :, None] - ts[:, None, :], 0.0).reshape(batch * k, k).astype(np.float32)
        prefix = np.minimum(np.tile(np.arange(k, dtype=np.int32), batch), np.repeat(lengths, k))
        prev_ctx = np.concatenate([feats["ctx"][:, :1], feats["ctx"][:, :-1]], axis=1).reshape(-1)
        alpha, beta = self.posterior()
        theta = beta_mean(alpha, beta)[prev_ctx].astype(np.float32)
        before = np.asarray(kernels.sequence_scores(
            rows_actions, ages, prefix, theta, self.lift().astype(np.float32),
            half_life_s=self.config.recency_half_life_s, backend=self.backend,
        )).reshape(batch, k)
        _, device, daypart = context_parts(feats["ctx"])
        tokens = {
            "action": actions.astype(np.int64),
            "gap": feats["gap"].astype(np.int64),
            "device": device.astype(np.int64),
            "daypart": daypart.astype(np.int64),
            "category": feats["category"].astype(np.int64),
            "score": before,
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
        self.catalog.erase(user_id)
        self._push_to_device(np.array([idx]))
        return True

    # ---- snapshots ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, np.ndarray]:
        """Everything needed to restore this engine exactly, as NumPy arrays."""
        state = {f"windows.{k}": v for k, v in self.windows.state_dict().items()}
        state.update({f"attribution.{k}": v for k, v in self.attribution.state_dict().items()})
        state.update({f"catalog.{k}": v for k, v in self.catalog.state_dict().items()})
        state.update(
            {
                "context.success": self.context_evidence.success.copy(),
                "context.failure": self.context_evidence.failure.copy(),
                "transition.success": self.transition_evidence.success.copy(),
                "transition.failure": self.transition_evidence.failure.copy(),
                "markov.counts": self.markov.counts.copy(),
                "scalars": np.array(
                    [self.clock_s, self.applied_seq, self.draws, self.events_applied, self.late_events], np.float64
                ),
            }
        )
        return state

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore from :meth:`state_dict` of an engine with the same config."""
        self.windows.load_state({k[8:]: v for k, v in state.items() if k.startswith("windows.")})
        self.attribution.load_state({k[12:]: v for k, v in state.items() if k.startswith("attribution.")})
        self.catalog.load_state({k[8:]: v for k, v in state.items() if k.startswith("catalog.")})
        self.context_evidence.success = state["context.success"].copy()
        self.context_evidence.failure = state["context.failure"].copy()
        self.transition_evidence.success = state["transition.success"].copy()
        self.transition_evidence.failure = state["transition.failure"].copy()
        self.markov.counts = state["markov.counts"].copy()
        clock, seq, draws, applied, late = state["scalars"]
        self.clock_s, self.applied_seq, self.draws = float(clock), int(seq), int(draws)
        self.events_applied, self.late_events = int(applied), int(late)
        self._push_to_device(np.arange(len(self.windows.ids)))
