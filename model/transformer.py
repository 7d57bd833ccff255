"""The next-action Transformer: a causal encoder over each user's last K events, with the user's state.

Each event is a token (action, time gap, device, daypart, hashed category). There is no position
embedding: the causal mask orders the events and the gap buckets date them, so a window longer than any
seen in training, or an unusually long gap (the last bucket holds everything past 18 hours), asks nothing
the model has not learned. The heads read each position's hidden state together with the user's state
just after that event (the learned score's features: counts over minutes to a lifetime, conversions so
far, item and category shares, ...), so the model sees the long-term user, not only the last K events.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from .sequences import CATEGORY_BUCKETS, GAP_BUCKETS, Sequences

N_DEVICES, N_DAYPARTS = 4, 4
TOKENS = ("action", "gap", "device", "daypart", "category")


@dataclass(frozen=True)
class TransformerConfig:
    """Sizes of the model; ``n_actions`` is the vocabulary (the next-action head adds 'session end');
    ``state_dim`` the width of the user-state input (0: none)."""

    n_actions: int
    window: int = 32
    d_model: int = 64
    layers: int = 2
    heads: int = 4
    dropout: float = 0.1
    state_dim: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class NextActionTransformer(nn.Module):
    """Per event: the next action (vocabulary + session end), P(conversion in 5 min), P(in 60 min)."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        d = config.d_model
        self.action = nn.Embedding(config.n_actions + 1, d)  # the extra row is padding
        self.gap = nn.Embedding(GAP_BUCKETS, d)
        self.device_embedding = nn.Embedding(N_DEVICES, d)
        self.daypart = nn.Embedding(N_DAYPARTS, d)
        self.category = nn.Embedding(CATEGORY_BUCKETS, d)
        layer = nn.TransformerEncoderLayer(d, config.heads, 4 * d, config.dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        # The state's columns are on different scales: standardized with the training data's statistics.
        self.register_buffer("state_mean", torch.zeros(config.state_dim))
        self.register_buffer("state_scale", torch.ones(config.state_dim))
        self.state = nn.Sequential(nn.Linear(config.state_dim, d), nn.GELU(), nn.Linear(d, d)) if config.state_dim else None
        self.next_action = nn.Linear(d, config.n_actions + 1)
        self.conversion = nn.Linear(d, 2)

    def encode(self, tokens: dict[str, torch.Tensor], padding: torch.Tensor | None) -> torch.Tensor:
        """Hidden state per position [B, L, d]; position i sees events 0..i of its row only.

        Rows are left-aligned, so under the causal mask no real event ever sees a pad: ``padding=None``
        gives the same hidden states at real events (pads get values nobody reads), and lets attention
        run as one fused causal kernel instead of an explicit mask.
        """
        length = tokens["action"].shape[1]
        x = (
            self.action(tokens["action"]) + self.gap(tokens["gap"]) + self.device_embedding(tokens["device"])
            + self.daypart(tokens["daypart"]) + self.category(tokens["category"])
        )
        causal = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
        return self.norm(self.encoder(x, mask=causal, src_key_padding_mask=padding, is_causal=True))

    @torch.no_grad()
    def event_table(self) -> torch.Tensor:
        """Every (action, gap, device, daypart) token's summed embedding [A' * G * D * P, d], for serving: one
        gather instead of four (rows in the order of :func:`event_codes`). Sums in :meth:`encode`'s order, so
        the result is the same to the bit."""
        d = self.config.d_model
        table = (self.action.weight[:, None, None, None] + self.gap.weight[None, :, None, None]
                 + self.device_embedding.weight[None, None, :, None] + self.daypart.weight[None, None, None, :])
        return table.reshape(-1, d).contiguous()

    def encode_last(self, tokens: dict[str, torch.Tensor], last: torch.Tensor,
                    events: torch.Tensor | None = None) -> torch.Tensor:
        """The hidden state at each row's position ``last`` [B, d]: what :meth:`encode` gives there, for serving,
        where only that position is read. The last layer runs its query, attention output and feed-forward block
        at that position alone (its keys and values still cover the row). ``events`` is :meth:`event_table`, made
        once by the caller."""
        length = tokens["action"].shape[1]
        if events is None:
            events = self.event_table()
        x = events[event_codes(tokens)] + self.category(tokens["category"])
        *below, top = self.encoder.layers
        if below:
            causal = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
            for layer in below:
                x = layer(x, src_mask=causal, is_causal=True)
        pick = torch.arange(len(last), device=x.device)
        return self.norm(_last_position_layer(top, x, pick, last))

    def heads(self, hidden: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(next-action logits, conversion logits) from hidden states [..., d] and user states [..., state_dim]."""
        if self.state is not None and state is not None:
            hidden = hidden + self.state((state - self.state_mean) / self.state_scale)
        return self.next_action(hidden), self.conversion(hidden)

    def forward(self, tokens: dict[str, torch.Tensor], padding: torch.Tensor, state: torch.Tensor | None = None):
        return self.heads(self.encode(tokens, padding), state)

    def fit_state_scaling(self, state: np.ndarray) -> None:
        """Standardize the state input with these (training) rows' mean and spread."""
        if self.state is None or not len(state):
            return
        mean, std = state.mean(axis=0), state.std(axis=0)
        self.state_mean.copy_(torch.from_numpy(mean.astype(np.float32)))
        self.state_scale.copy_(torch.from_numpy(np.where(std > 1e-6, std, 1.0).astype(np.float32)))


def event_codes(tokens: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each event's row of :meth:`NextActionTransformer.event_table`."""
    return ((tokens["action"] * GAP_BUCKETS + tokens["gap"]) * N_DEVICES + tokens["device"]) * N_DAYPARTS \
        + tokens["daypart"]


def _last_position_layer(layer: nn.TransformerEncoderLayer, x: torch.Tensor, pick: torch.Tensor,
                         last: torch.Tensor) -> torch.Tensor:
    """A pre-norm encoder layer's output at position ``last`` of each row [B, d], attending to positions up to it."""
    attention = layer.self_attn
    heads, d = attention.num_heads, x.shape[-1]
    h = layer.norm1(x)
    w, b = attention.in_proj_weight, attention.in_proj_bias
    q = nn.functional.linear(h[pick, last], w[:d], b[:d])  # [B, d]: the one query per row
    k, v = nn.functional.linear(h, w[d:], b[d:]).chunk(2, dim=-1)  # [B, L, d] each
    split = lambda t: t.reshape(t.shape[0], -1, heads, d // heads).transpose(1, 2)
    visible = (torch.arange(x.shape[1], device=x.device)[None, :] <= last[:, None])[:, None, None, :]
    attended = nn.functional.scaled_dot_product_attention(split(q[:, None]), split(k), split(v), attn_mask=visible)
    y = x[pick, last] + layer.dropout1(attention.out_proj(attended.transpose(1, 2).reshape(len(pick), d)))
    return y + layer._ff_block(layer.norm2(y))


def chunks(seq: Sequences, window: int) -> np.ndarray:
    """(first flat row, length) of each model input: users' sequences cut into pieces of ``window``."""
    pieces = []
    for start, length in zip(seq.starts, seq.lengths):
        for offset in range(0, int(length), window):
            pieces.append((start + offset, min(window, int(length) - offset)))
    return np.array(pieces, dtype=np.int64).reshape(-1, 2)


def batch_tokens(seq: Sequences, pieces: np.ndarray, n_actions: int):
    """Padded token tensors for some chunks, the padding mask, the user states [B, L, d] and the flat row of
    every position (-1: pad)."""
    longest = int(pieces[:, 1].max())
    rows = pieces[:, :1] + np.arange(longest)[None, :]
    pad = np.arange(longest)[None, :] >= pieces[:, 1:2]
    rows = np.where(pad, -1, rows)
    safe = np.maximum(rows, 0)

    def take(values, fill, dtype=torch.int64):
        return torch.from_numpy(np.where(pad, fill, values[safe])).to(dtype)

    tokens = {
        "action": take(seq.action, n_actions),
        "gap": take(seq.gap, 0),
        "device": take(seq.device, 0),
        "daypart": take(seq.daypart, 0),
        "category": take(seq.category, 0),
    }
    state = torch.from_numpy(np.where(pad[..., None], 0.0, seq.state[safe]).astype(np.float32))
    return tokens, torch.from_numpy(pad), state, rows
