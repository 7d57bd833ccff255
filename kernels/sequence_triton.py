"""Triton: the engagement score of each row's action window, fused (gather, decay, product, reduce).

The kernel checks what it reads: a length outside [0, window] or a code outside [0, A) within a
row's length sets a bit of a flag and is never used as an address, so unchecked calls are safe too.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# Chosen by bench_kernels --sweep on an H200 (34 % of copy bandwidth at 1e6 rows, against 28 % with 32 rows and
# 4 warps): many small blocks keep more loads in flight behind the dependent gathers of theta and lift.
BLOCK_ROWS = 8
NUM_WARPS = 1
BAD_LENGTH, BAD_CODE = 1, 2  # the flag's bits, as the kernel writes them


@triton.jit
def _multiply(a, b):
    return a * b


# The batch size changes per call: specializing on it (divisible by 16 or not) would compile mid-serving.
@triton.jit(do_not_specialize=["n_rows"])
def _sequence_scores_kernel(
    actions_ptr, ages_ptr, lengths_ptr, theta_ptr, lift_ptr, out_ptr, flag_ptr,
    n_rows, n_actions, window, inv_half_life_s,
    BLOCK_ROWS: tl.constexpr, WINDOW: tl.constexpr,
):
    # 64-bit only for each block's first row: offsets within the block stay 32-bit (fewer registers).
    first = tl.program_id(0).to(tl.int64) * BLOCK_ROWS
    rows = tl.arange(0, BLOCK_ROWS)
    cols = tl.arange(0, WINDOW)
    row_ok = rows < n_rows - first
    length = tl.load(lengths_ptr + first + rows, mask=row_ok, other=0)
    bad_length = row_ok & ((length < 0) | (length > window))
    length = tl.minimum(tl.maximum(length, 0), window)
    valid = row_ok[:, None] & (cols[None, :] < length[:, None])
    cell = rows[:, None] * window + cols[None, :]
    actions_ptr += first * window
    action = tl.load(actions_ptr + cell, mask=valid, other=0)
    prev = tl.load(actions_ptr + cell - 1, mask=valid & (cols[None, :] > 0), other=-1)
    age = tl.load(ages_ptr + first * window + cell, mask=valid, other=0.0)
    code_ok = (action >= 0) & (action < n_actions)
    usable = valid & code_ok
    prev_ok = (prev >= 0) & (prev < n_actions)
    theta = tl.load(theta_ptr + first * n_actions + rows[:, None] * n_actions + action, mask=usable, other=0.0)
    lift = tl.load(lift_ptr + prev * n_actions + action, mask=usable & prev_ok, other=1.0)
    p = tl.minimum(theta * lift * tl.exp2(-age * inv_half_life_s), 1.0)
    keep = tl.where(usable, 1.0 - p, 1.0)
    tl.store(out_ptr + first + rows, 1.0 - tl.reduce(keep, 1, _multiply), mask=row_ok)
    flags = tl.where(bad_length, 1, 0) | tl.max(tl.where(valid & (code_ok == 0), 2, 0), axis=1)
    any_bad = tl.max(flags, axis=0)
    if any_bad > 0:
        tl.atomic_or(flag_ptr, any_bad)


def sequence_scores_triton(
    actions: torch.Tensor, ages_s: torch.Tensor, lengths: torch.Tensor, theta: torch.Tensor, lift: torch.Tensor,
    *, half_life_s: float, check: bool = True, block_rows: int = BLOCK_ROWS, num_warps: int = NUM_WARPS,
) -> torch.Tensor:
    """Score per row as float32 on the inputs' device (shapes checked by the caller).

    With ``check``, a bad length or code raises ValueError after the launch (one device sync);
    without it (the engine's own windows) nothing waits for the device.
    """
    n_rows, window = actions.shape
    out = torch.empty(n_rows, dtype=torch.float32, device=actions.device)
    if n_rows:
        flag = torch.zeros(1, dtype=torch.int32, device=actions.device)
        _sequence_scores_kernel[(triton.cdiv(n_rows, block_rows),)](
            actions.to(torch.int32).contiguous(), ages_s.to(torch.float32).contiguous(),
            lengths.to(torch.int32).contiguous(), theta.to(torch.float32).contiguous(),
            lift.to(torch.float32).contiguous(), out, flag,
            n_rows, theta.shape[1], window, 1.0 / float(half_life_s),
            BLOCK_ROWS=block_rows, WINDOW=triton.next_power_of_2(max(window, 1)), num_warps=num_warps,
        )
        if check:
            bits = int(flag.item())
            if bits & BAD_LENGTH:
                raise ValueError(f"lengths must lie in [0, {window}]")
            if bits & BAD_CODE:
                raise ValueError(f"action codes must lie in [0, {theta.shape[1]}) within each row's length")
    return out
