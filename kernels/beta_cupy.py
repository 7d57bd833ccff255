"""CuPy: batched Beta draws with a Philox4x32-10 counter-based generator, one thread per draw."""
from __future__ import annotations

from typing import Any

from ._cupy import raw_kernel

from ._keys import stream_key

THREADS = 256

SOURCE = r"""
__device__ __forceinline__ uint4 _philox4x32_10(uint4 c, uint2 k) {
    #pragma unroll
    for (int round = 0; round < 10; ++round) {
        unsigned int hi0 = __umulhi(0xD2511F53u, c.x), lo0 = 0xD2511F53u * c.x;
        unsigned int hi1 = __umulhi(0xCD9E8D57u, c.z), lo1 = 0xCD9E8D57u * c.z;
        c = make_uint4(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
        k.x += 0x9E3779B9u;
        k.y += 0xBB67AE85u;
    }
    return c;
}

__device__ __forceinline__ float _uniform(unsigned int bits) {
    return (bits >> 8) * (1.0f / 16777216.0f);  /* [0, 1) */
}

/* log of a Gamma(shape, 1) draw (Marsaglia-Tsang); shape < 1 is boosted, in log space. */
__device__ float _log_gamma(float shape, uint2 key, long long i, unsigned int which) {
    const bool boost = shape < 1.0f;
    const float k = boost ? shape + 1.0f : shape;
    const float d = k - 1.0f / 3.0f;
    const float c = rsqrtf(9.0f * d);
    float boost_u = 0.0f;
    for (unsigned int t = 0;; ++t) {
        uint4 r = _philox4x32_10(make_uint4((unsigned int)i, (unsigned int)(i >> 32), which, t), key);
        if (t == 0) boost_u = _uniform(r.w);
        const float x = sqrtf(-2.0f * logf(1.0f - _uniform(r.x))) * cospif(2.0f * _uniform(r.y));
        const float s = 1.0f + c * x;
        const float v = s * s * s;
        if (v <= 0.0f) continue;
        const float lv = logf(v);
        if (logf(1.0f - _uniform(r.z)) < 0.5f * x * x + d - d * v + d * lv) {
            const float lg = logf(d) + lv;
            return boost ? lg + logf(1.0f - boost_u) / shape : lg;
        }
    }
}

extern "C" __global__ void beta_sample_kernel(
    const float* alpha, const float* beta, float* out, long long n, unsigned long long key64) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const uint2 key = make_uint2((unsigned int)key64, (unsigned int)(key64 >> 32));
    const float diff = _log_gamma(alpha[i], key, i, 0u) - _log_gamma(beta[i], key, i, 1u);
    const float e = expf(-fabsf(diff));
    out[i] = diff >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
}
"""


def beta_sample_cupy(alpha: Any, beta: Any, *, seed: int, offset: int = 0) -> Any:
    """Beta(alpha, beta) draws as a float32 CuPy array; one Philox stream per (seed, offset)."""
    import cupy

    a = cupy.ascontiguousarray(alpha, dtype=cupy.float32).reshape(-1)
    b = cupy.ascontiguousarray(beta, dtype=cupy.float32).reshape(-1)
    out = cupy.empty_like(a)
    n = a.size
    if n:
        blocks = (n + THREADS - 1) // THREADS
        args = (a, b, out, cupy.int64(n), cupy.uint64(stream_key(seed, offset)))
        raw_kernel(SOURCE, "beta_sample_kernel")((blocks,), (THREADS,), args)
    return out.reshape(alpha.shape)
