"""Triton: the engagement score of each row's action window, fused (gather, decay, product, reduce)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_ROWS = 32


@triton.jit
def _multiply(a, b):
    return a * b


@triton.jit
def _sequence_scores_kernel(
    actions_ptr, ages_ptr, lengths_ptr, theta_ptr, lift_ptr, out_ptr,
    n_rows, n_actions, window, half_life_s,
    BLOCK_ROWS: tl.constexpr, WINDOW: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = tl.arange(0, WINDOW)
    row_ok = rows < n_rows
    length = tl.load(lengths_ptr + rows, mask=row_ok, other=0)
    valid = row_ok[:, None] & (cols[None, :] < length[:, None])
    has_prev = valid & (cols[None, :] > 0)
    cell = rows[:, None] * window + cols[None, :]
    action = tl.load(actions_ptr + cell, mask=valid, other=0).to(tl.int64)
    prev = tl.load(actions_ptr + cell - 1, mask=has_prev, other=0).to(tl.int64)
    age = tl.load(ages_ptr + cell, mask=valid, other=0.0)
    theta = tl.load(theta_ptr + rows[:, None] * n_actions + action, mask=valid, other=0.0)
    lift = tl.load(lift_ptr + prev * n_actions + action, mask=has_prev, other=1.0)
    p = tl.minimum(theta * lift * tl.exp2(-age / half_life_s), 1.0)
    keep = tl.where(valid, 1.0 - p, 1.0)
    tl.store(out_ptr + rows, 1.0 - tl.reduce(keep, 1, _multiply), mask=row_ok)


def sequence_scores_triton(
    actions: torch.Tensor, ages_s: torch.Tensor, lengths: torch.Tensor, theta: torch.Tensor, lift: torch.Tensor,
    *, half_life_s: float,
) -> torch.Tensor:
    """Score per row as float32 on the inputs' device (shapes checked by the caller)."""
    n_rows, window = actions.shape
    out = torch.empty(n_rows, dtype=torch.float32, device=actions.device)
    if n_rows:
        grid = (triton.cdiv(n_rows, BLOCK_ROWS),)
        _sequence_scores_kernel[grid](
            actions.to(torch.int32).contiguous(), ages_s.to(torch.float32).contiguous(),
            lengths.to(torch.int32).contiguous(), theta.to(torch.float32).contiguous(),
            lift.to(torch.float32).contiguous(), out,
            n_rows, theta.shape[1], window, float(half_life_s),
            BLOCK_ROWS=BLOCK_ROWS, WINDOW=triton.next_power_of_2(max(window, 1)),
        )
    return out
