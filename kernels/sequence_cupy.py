"""CuPy: the engagement score of each row's action window, one thread per row."""
from __future__ import annotations

from typing import Any

from ._cupy import raw_kernel

THREADS = 128

SOURCE = r"""
extern "C" __global__ void sequence_scores_kernel(
    const int* actions, const float* ages, const int* lengths, const float* theta, const float* lift,
    float* out, long long n_rows, int n_actions, int window, float half_life_s) {
    const long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= n_rows) return;
    const int* row = actions + r * window;
    /* Unchecked calls are safe: a bad length is clamped and a bad code is never an address. */
    const int length = min(max(lengths[r], 0), window);
    float keep = 1.0f;
    for (int k = 0; k < length; ++k) {
        const int a = row[k];
        if (a < 0 || a >= n_actions) continue;
        const int p = k > 0 ? row[k - 1] : -1;
        const float step_lift = (p >= 0 && p < n_actions) ? lift[p * n_actions + a] : 1.0f;
        const float decay = exp2f(-ages[r * window + k] / half_life_s);
        keep *= 1.0f - fminf(theta[r * n_actions + a] * step_lift * decay, 1.0f);
    }
    out[r] = 1.0f - keep;
}
"""


def sequence_scores_cupy(actions: Any, ages_s: Any, lengths: Any, theta: Any, lift: Any, *, half_life_s: float) -> Any:
    """Score per row as a float32 CuPy array (shapes checked by the caller)."""
    import cupy

    n_rows, window = actions.shape
    out = cupy.empty(n_rows, dtype=cupy.float32)
    if n_rows:
        args = (
            cupy.ascontiguousarray(actions, dtype=cupy.int32),
            cupy.ascontiguousarray(ages_s, dtype=cupy.float32),
            cupy.ascontiguousarray(lengths, dtype=cupy.int32),
            cupy.ascontiguousarray(theta, dtype=cupy.float32),
            cupy.ascontiguousarray(lift, dtype=cupy.float32),
            out,
            cupy.int64(n_rows),
            cupy.int32(theta.shape[1]),
            cupy.int32(window),
            cupy.float32(half_life_s),
        )
        raw_kernel(SOURCE, "sequence_scores_kernel")(((n_rows + THREADS - 1) // THREADS,), (THREADS,), args)
    return out
