"""Triton: batched Beta draws, each the ratio of two gamma draws (Marsaglia-Tsang, in log space)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._keys import stream_key

BLOCK = 1024
# Proposals tried per gamma draw. Each is accepted with probability > 0.95, so all 64 failing
# (1e-83) never happens; the loop stops as soon as every lane of the block has accepted.
MAX_TRIES = 64


@triton.jit
def _log_gamma(shape, key, counter, MAX_TRIES: tl.constexpr):
    """log of a Gamma(shape, 1) draw; shape < 1 is boosted: G(k) = G(k + 1) * U^(1/k), kept in log space."""
    boost = shape < 1.0
    k = tl.where(boost, shape + 1.0, shape)
    d = k - 1.0 / 3.0
    c = 1.0 / tl.sqrt(9.0 * d)
    log_v = tl.zeros_like(shape)
    done = shape < 0.0
    tries = 0
    while (tl.sum(tl.where(done, 0, 1), axis=0) > 0) & (tries < MAX_TRIES):
        x = tl.randn(key, counter + 2 * tries)
        u = tl.rand(key, counter + 2 * tries + 1)
        t = 1.0 + c * x
        v = t * t * t
        positive = v > 0.0
        lv = tl.log(tl.where(positive, v, 1.0))
        accept = positive & (tl.log(1.0 - u) < 0.5 * x * x + d - d * v + d * lv)
        log_v = tl.where(accept & (done == 0), lv, log_v)
        done = done | accept
        tries += 1
    log_g = tl.log(d) + log_v
    u = tl.rand(key, counter + 2 * MAX_TRIES)
    # 1 - u lies in (0, 1]: the log is finite even when 1 / shape is 1000.
    return tl.where(boost, log_g + tl.log(1.0 - u) / shape, log_g)


@triton.jit
def _beta_sample_kernel(alpha_ptr, beta_ptr, out_ptr, n, key, BLOCK: tl.constexpr, MAX_TRIES: tl.constexpr):
    pid = tl.program_id(0)
    idx = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < n
    a = tl.load(alpha_ptr + idx, mask=mask, other=1.0)
    b = tl.load(beta_ptr + idx, mask=mask, other=1.0)
    per_draw = 2 * MAX_TRIES + 1
    base = idx * (2 * per_draw)
    log_x = _log_gamma(a, key, base, MAX_TRIES)
    log_y = _log_gamma(b, key, base + per_draw, MAX_TRIES)
    diff = log_x - log_y
    e = tl.exp(-tl.abs(diff))
    out = tl.where(diff >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    tl.store(out_ptr + idx, out, mask=mask)


def beta_sample_triton(alpha: torch.Tensor, beta: torch.Tensor, *, seed: int, offset: int = 0) -> torch.Tensor:
    """Beta(alpha, beta) draws as float32 on alpha's device; one Philox stream per (seed, offset)."""
    a = alpha.to(torch.float32).contiguous().reshape(-1)
    b = beta.to(torch.float32).contiguous().reshape(-1)
    out = torch.empty_like(a)
    n = a.numel()
    if n:
        grid = (triton.cdiv(n, BLOCK),)
        _beta_sample_kernel[grid](a, b, out, n, stream_key(seed, offset), BLOCK=BLOCK, MAX_TRIES=MAX_TRIES)
    return out.reshape(alpha.shape)
