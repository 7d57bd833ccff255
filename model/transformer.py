"""The next-action Transformer: a causal encoder over each user's last K events."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from .sequences import CATEGORY_BUCKETS, GAP_BUCKETS, Sequences

N_DEVICES, N_DAYPARTS = 4, 4


@dataclass(frozen=True)
class TransformerConfig:
    """Sizes of the model; ``n_actions`` is the vocabulary (the next-action head adds 'session end')."""

    n_actions: int
    window: int = 32
    d_model: int = 64
    layers: int = 2
    heads: int = 4
    dropout: float = 0.1

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
        self.score = nn.Linear(1, d)
        self.position = nn.Embedding(config.window, d)
        layer = nn.TransformerEncoderLayer(d, config.heads, 4 * d, config.dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.next_action = nn.Linear(d, config.n_actions + 1)
        self.conversion = nn.Linear(d, 2)

    def encode(self, tokens: dict[str, torch.Tensor], padding: torch.Tensor) -> torch.Tensor:
        """Hidden state per position [B, L, d]; position i sees events 0..i of its row only."""
        length = tokens["action"].shape[1]
        x = (
            self.action(tokens["action"]) + self.gap(tokens["gap"]) + self.device_embedding(tokens["device"])
            + self.daypart(tokens["daypart"]) + self.category(tokens["category"])
            + self.score(tokens["score"].unsqueeze(-1))
            + self.position(torch.arange(length, device=padding.device))[None]
        )
        causal = torch.ones(length, length, dtype=torch.bool, device=padding.device).triu(1)
        return self.norm(self.encoder(x, mask=causal, src_key_padding_mask=padding, is_causal=True))

    def forward(self, tokens: dict[str, torch.Tensor], padding: torch.Tensor):
        h = self.encode(tokens, padding)
        return self.next_action(h), self.conversion(h)


def chunks(seq: Sequences, window: int) -> np.ndarray:
    """(first flat row, length) of each model input: users' sequences cut into pieces of ``window``."""
    pieces = []
    for start, length in zip(seq.starts, seq.lengths):
        for offset in range(0, int(length), window):
            pieces.append((start + offset, min(window, int(length) - offset)))
    return np.array(pieces, dtype=np.int64).reshape(-1, 2)


def batch_tokens(seq: Sequences, pieces: np.ndarray, n_actions: int):
    """Padded token tensors for some chunks, the padding mask, and the flat row of every position (-1: pad)."""
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
        "score": take(seq.score, 0.0, torch.float32),
    }
    return tokens, torch.from_numpy(pad), rows
