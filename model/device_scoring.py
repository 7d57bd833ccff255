"""A scoring batch computed where a GPU engine's state lives: one copy of the users' indexes in, one copy of the
results out.

On the device, from the users' packed rows (``device_state.py``): the windowed sequence scores (the array
backend's kernels), the learned score's features (the same columns as ``ScoreFeatures.assemble`` builds on
the host), the three learned predictions and the score's Thompson draw, the chain's next-action
probabilities, and the Transformer's predictions from the tokens stored in the rows.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

import kernels

from .combiner import _CLIP
from .contexts import OTHER_DEVICE, context_codes
from .device_state import DeviceState, Rows
from .score_features import _EPS, MARKOV_HORIZONS, MARKOV_TABLES
from .transformer import TOKENS
from .user_state import SCALES_S

if TYPE_CHECKING:
    from .engine import Engine

# Batches up to this many users run as a captured CUDA graph (padded to a power of two) when nothing is drawn.
GRAPH_MAX_USERS = 16384
# ... and from this many: on an H200 (docs/benchmarks.md, issue 13) the 256-user graph scored in 0.8-0.9 ms, and
# with the Transformer in 1.3-1.9 ms, where 64 users took 1.4 and 6.2 ms on the host.
GRAPH_MIN_USERS = 64


def run_pass(engine: Engine, users: np.ndarray, now_s: float, draw: bool, predictor=None):
    """:meth:`Engine.score` of ``users`` (dense indexes) on the engine's device, with the Transformer's predictions
    where ``predictor`` is given (on the same device): (scores, (next-action probabilities [B, A + 1],
    conversion probabilities [B, 2]) or None, window lengths or None). One copy in, one copy out.

    Without a draw, on a GPU, the pass runs as a CUDA graph captured for the batch's size (``device_graphs``).
    """
    from .engine import Scores

    ds: DeviceState = engine.device_state
    default_ctx = int(context_codes(OTHER_DEVICE, np.float64(now_s), 0, 0))
    captured = None
    if not draw and ds.device.type == "cuda" and len(users) <= GRAPH_MAX_USERS:
        from .device_graphs import captured_pass

        captured = captured_pass(engine, predictor, len(users))
    if captured is not None:
        host, features = captured.run(users, now_s, default_ctx)
    else:
        packed, features = device_pass(engine, predictor, ds.to_device(users), now_s, default_ctx, draw)
        host = packed.cpu().numpy()
    a = engine.n_actions
    scores = Scores(score=host[:, 0], score_draw=host[:, 1], purchase_5m=host[:, 2], purchase_60m=host[:, 3],
                    next_probs=host[:, 4:4 + a], known=users >= 0, features=features, users=users)
    if predictor is None:
        return scores, None, None
    model = host[:, 4 + a:-1]
    return scores, (model[:, :-2], model[:, -2:]), host[:, -1].astype(np.int64)


def device_pass(engine: Engine, predictor, u: torch.Tensor, now_s, default_ctx, draw: bool):
    """Everything a scoring batch computes, on the device, from the users' indexes there: [B, cols] float64 (the
    score, its draw, P(5 m), P(60 m), the chain's next-action probabilities, and with a predictor its
    probabilities and the window lengths) and the features [B, width].

    ``now_s`` and ``default_ctx`` (the context of a user without events) may be 0-d tensors on the device, as
    in a captured graph, where they change between replays.
    """
    ds: DeviceState = engine.device_state
    cfg = engine.config
    rows = ds.gather(u)
    t = ds.tables
    known = u >= 0
    lengths = rows.length
    ctx = torch.where(known, rows.last_ctx, default_ctx).long()
    ages = (now_s - rows.ts).clamp(min=0.0).float()
    actions = rows.action.contiguous()

    def sequence(theta: torch.Tensor, lift: torch.Tensor) -> torch.Tensor:
        return kernels.sequence_scores(actions, ages, lengths, theta, lift, half_life_s=cfg.recency_half_life_s,
                                       backend=engine.backend, check=False)

    mean_seq = sequence(t.theta[ctx], t.lift)
    prior_seq = sequence(t.prior_mean.expand(len(u), -1).contiguous(), torch.ones_like(t.lift))

    # The latest two events of each window, and the session they are in.
    last = (lengths.long() - 1).clamp(min=0)[:, None]
    before = (lengths.long() - 2).clamp(min=0)[:, None]
    cur = torch.where(lengths > 0, actions.gather(1, last)[:, 0], -1).long()
    prev = torch.where(lengths > 1, actions.gather(1, before)[:, 0], -1).long()
    last_ts, before_ts = rows.ts.gather(1, last)[:, 0], rows.ts.gather(1, before)[:, 0]
    in_session = (prev >= 0) & ((last_ts - before_ts).abs() <= cfg.session_gap_s)
    pair_prev = torch.where(in_session, prev, engine.n_actions)
    has = cur >= 0
    cur0 = cur.clamp(min=0)

    markov = [torch.where(has, t.conversion_pair[h][pair_prev, cur0], t.conversion_overall[h])
              for h in (MARKOV_TABLES[name] for name in MARKOV_HORIZONS)]
    item = t.item_rate[torch.where(known, rows.last_item, 0).long()]
    category = t.category_rate[torch.where(known, rows.last_category, 0).long()]
    columns = [
        torch.ones_like(mean_seq)[:, None],
        log_odds(mean_seq)[:, None],
        log_odds(prior_seq)[:, None],
        torch.where(has, log_odds(t.theta[ctx, cur0]), 0.0)[:, None],
        *(log_odds(m)[:, None] for m in markov),
        (cur[:, None] == torch.arange(engine.n_actions, device=cur.device)[None, :]).float(),  # one-hot, none for -1
        user_state_features(rows, known, now_s, engine.n_actions),
        log_odds(item[:, 0])[:, None], torch.log1p(item[:, 1])[:, None],
        log_odds(category[:, 0])[:, None], torch.log1p(category[:, 1])[:, None],
        session_item_features(actions, rows.ts, rows.item, lengths, cfg.session_gap_s, cfg.conversion_code),
    ]
    x = torch.cat([c.float() for c in columns], dim=1)
    predictions = _sigmoid(x.double() @ t.weights.T)  # [B, 3]: the score, P(5 m), P(60 m)
    score_draw = predictions[:, 0]
    if draw:
        # As on the host: a Thompson draw of the sequence score's action weights, then of the score's own weights.
        engine.draws += 1
        theta = kernels.beta_sample(t.alpha[ctx], t.beta[ctx], seed=cfg.seed, offset=engine.draws,
                                    backend=engine.backend, check=False)
        drawn = x.clone()
        drawn[:, engine.features.index["seq_learned"]] = log_odds(sequence(theta, t.lift))
        drawn = drawn.double()
        spread = torch.linalg.vector_norm(drawn @ t.draw_factor, dim=1)
        generator = torch.Generator(device=ds.device).manual_seed(cfg.seed * 1_000_003 + engine.draws)
        noise = torch.randn(len(u), generator=generator, device=ds.device, dtype=torch.float64)
        score_draw = _sigmoid(drawn @ t.weights[0] + spread * noise)
    active = (lengths > 0) & (now_s - last_ts <= cfg.session_gap_s)
    next_probs = ds.next_probs[torch.where(active, cur, engine.markov.start)]
    parts = [predictions[:, :1], score_draw[:, None], predictions[:, 1:], next_probs]
    if predictor is not None:
        tokens = {name: getattr(rows, name) for name in TOKENS}
        parts += [predictor.predict_on_device(tokens, lengths, x).double(), lengths.double()[:, None]]
    return torch.cat(parts, dim=1), x


def log_odds(p: torch.Tensor) -> torch.Tensor:
    p = p.double().clamp(_EPS, 1.0 - _EPS)
    return torch.log(p / (1.0 - p)).float()


def _sigmoid(z: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(z.clamp(-_CLIP, _CLIP))


def user_state_features(rows: Rows, known: torch.Tensor, now_s: float, n_actions: int) -> torch.Tensor:
    """``UserState.features`` from packed rows: [B, width], zeros for unknown users."""
    elapsed = (now_s - rows.touched).clamp(min=0.0)
    # Column by column, with the half-lives as Python numbers: a tensor made from them here would be a copy to the
    # device, which a CUDA graph cannot capture.
    decay = torch.stack([torch.exp2(-elapsed / half_life) for half_life in SCALES_S], dim=1).float()
    counts = rows.counts.reshape(len(elapsed), len(SCALES_S), n_actions) * decay[:, :, None]
    last = rows.last_ts
    converted = torch.isfinite(rows.last_conversion)
    since_conversion = torch.log1p((last - rows.last_conversion).clamp(min=0.0))
    summary = torch.stack([
        torch.log1p(rows.session_events.double()),
        torch.log1p((last - rows.session_start).clamp(min=0.0)),
        torch.log1p(rows.last_gap.double().clamp(min=0.0)),
        (rows.last_gap < 0).double(),
        torch.where(converted, since_conversion, 0.0),
        (~converted).double(),
        torch.log1p((last - rows.first_ts).clamp(min=0.0)),
    ], dim=1).float()
    out = torch.cat([torch.log1p(counts.reshape(len(elapsed), -1)), summary], dim=1)
    return torch.where(known[:, None], out, 0.0)


def session_item_features(actions: torch.Tensor, ts: torch.Tensor, items: torch.Tensor, lengths: torch.Tensor,
                          session_gap_s: float, conversion: int) -> torch.Tensor:
    """``score_features.session_item_features`` on the device: [B, 4]."""
    k = actions.shape[1]
    pos = torch.arange(k, device=actions.device)[None, :]
    lengths = lengths.long()[:, None]
    valid = pos < lengths
    breaks = torch.zeros_like(valid)
    breaks[:, 1:] = (ts[:, 1:] - ts[:, :-1] > session_gap_s) & valid[:, 1:]
    start = torch.where(breaks, pos, 0).amax(dim=1, keepdim=True)
    in_session = valid & (pos >= start) & (items > 0)
    last = (lengths - 1).clamp(min=0)
    latest = items.gather(1, last)
    same = (in_session & (pos < last) & (items == latest) & (latest > 0)).sum(dim=1)
    seen = _distinct(torch.where(in_session, items, 0))
    converted = _distinct(torch.where(in_session & (actions == conversion), items, 0))
    return torch.log1p(torch.stack([same, seen, converted, seen - converted], dim=1).float())


def _distinct(keys: torch.Tensor) -> torch.Tensor:
    """Distinct non-zero values per row."""
    ordered = keys.sort(dim=1).values
    new = torch.ones_like(ordered, dtype=torch.bool)
    new[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    return (new & (ordered > 0)).sum(dim=1)
