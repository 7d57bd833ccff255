"""Triton: batched Beta draws, each the ratio of two gamma draws (Marsaglia-Tsang, in log space).

Both gammas of a draw advance together, and one Philox call feeds a round of both: its four words
give two normals (Box-Muller's pair) and the two acceptance uniforms. The parameters are checked in
the kernel, where they are read anyway: a bad one sets a flag instead of costing a pass of its own.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._keys import stream_key

# Chosen by bench_kernels --sweep on an H200 (3.3e10 draws/s at 1e7, against 2.8e10 with 256 lanes and 4 warps):
# in a smaller block fewer lanes wait for the slowest to accept.
BLOCK = 64
NUM_WARPS = 1
# Rounds tried per draw. Each proposal is accepted with probability > 0.95, so all 64 failing
# (1e-83) never happens; the loop stops as soon as every lane of the block has accepted both.
MAX_TRIES = 64


@triton.jit
def _proposal(x, u, d, c):
    """log V of a Marsaglia-Tsang proposal from the normal x, and whether the uniform u accepts it."""
    t = 1.0 + c * x
    v = t * t * t
    positive = v > 0.0
    lv = tl.log(tl.where(positive, v, 1.0))
    return lv, positive & (tl.log(1.0 - u) < 0.5 * x * x + d - d * v + d * lv)


# Integers that change per call are not specialized on (a key divisible by 16 would compile a second kernel,
# mid-serving).
@triton.jit(do_not_specialize=["n", "key"])
def _beta_sample_kernel(alpha_ptr, beta_ptr, out_ptr, flag_ptr, n, key,
                        BLOCK: tl.constexpr, MAX_TRIES: tl.constexpr):
    pid = tl.program_id(0)
    idx = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < n
    a = tl.load(alpha_ptr + idx, mask=mask, other=1.0)
    b = tl.load(beta_ptr + idx, mask=mask, other=1.0)
    usable = (a > 0.0) & (b > 0.0)  # NaN compares false: it is not usable either
    bad = mask & (usable == 0)
    any_bad = tl.max(bad.to(tl.int32), axis=0)
    if any_bad > 0:
        tl.atomic_max(flag_ptr, any_bad)
    # Shapes below 1 are boosted: G(k) = G(k + 1) * U^(1/k), kept in log space.
    ka = tl.where(a < 1.0, a + 1.0, a)
    kb = tl.where(b < 1.0, b + 1.0, b)
    da = ka - 1.0 / 3.0
    db = kb - 1.0 / 3.0
    ca = 1.0 / tl.sqrt(9.0 * da)
    cb = 1.0 / tl.sqrt(9.0 * db)
    log_va = tl.zeros_like(a)
    log_vb = tl.zeros_like(b)
    done_a = bad
    done_b = bad
    base = idx * (MAX_TRIES + 1)
    tries = 0
    while (tl.sum(tl.where(done_a & done_b, 0, 1), axis=0) > 0) & (tries < MAX_TRIES):
        u1, u2, u3, u4 = tl.rand4x(key, base + tries)
        xa, xb = tl.pair_uniform_to_normal(u1, u2)
        lva, ok_a = _proposal(xa, u3, da, ca)
        lvb, ok_b = _proposal(xb, u4, db, cb)
        log_va = tl.where(ok_a & (done_a == 0), lva, log_va)
        log_vb = tl.where(ok_b & (done_b == 0), lvb, log_vb)
        done_a = done_a | ok_a
        done_b = done_b | ok_b
        tries += 1
    ua, ub, _, _ = tl.rand4x(key, base + MAX_TRIES)
    # 1 - u lies in (0, 1]: the log is finite even when 1 / shape is 1000.
    log_x = tl.log(da) + log_va + tl.where(a < 1.0, tl.log(1.0 - ua) / a, 0.0)
    log_y = tl.log(db) + log_vb + tl.where(b < 1.0, tl.log(1.0 - ub) / b, 0.0)
    diff = log_x - log_y
    e = tl.exp(-tl.abs(diff))
    out = tl.where(diff >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    tl.store(out_ptr + idx, out, mask=mask)


def beta_sample_triton(alpha: torch.Tensor, beta: torch.Tensor, *, seed: int, offset: int = 0, check: bool = True,
                       block: int = BLOCK, num_warps: int = NUM_WARPS) -> torch.Tensor:
    """Beta(alpha, beta) draws as float32 on alpha's device; one Philox stream per (seed, offset).

    With ``check``, a parameter that is not > 0 raises ValueError after the launch (one device sync);
    without it (the engine's own tables) nothing waits for the device.
    """
    a = alpha.to(torch.float32).contiguous().reshape(-1)
    b = beta.to(torch.float32).contiguous().reshape(-1)
    out = torch.empty_like(a)
    n = a.numel()
    if n:
        flag = torch.zeros(1, dtype=torch.int32, device=a.device)
        _beta_sample_kernel[(triton.cdiv(n, block),)](
            a, b, out, flag, n, stream_key(seed, offset), BLOCK=block, MAX_TRIES=MAX_TRIES, num_warps=num_warps,
        )
        if check and flag.item():
            raise ValueError("alpha and beta must be > 0 everywhere (and not NaN)")
    return out.reshape(alpha.shape)
