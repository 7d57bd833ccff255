"""Kernel throughput: Beta draws and sequence scores per backend, beside the libraries a user would call.

    python -m loadtests.bench_kernels [--sizes 1e3,1e4,1e5,1e6,1e7] [--repeats 5] [--sweep]

For each size: samples/s (or rows/s) and the achieved memory bandwidth (bytes the kernel must read
and write / time). On a GPU, the device's measured copy bandwidth is printed and each figure is
also given as a fraction of it. The Triton interpreter is never benchmarked: it is a test tool.
"nudge" rows call the public function with its input checks (one device sync); "unchecked" rows
call it as the engine does. ``--sweep`` also times the Triton kernels' other block sizes and warp
counts at 1e6 and above, which is how their defaults were chosen.
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np

import kernels

WINDOW, ACTIONS = 32, 9


def _sync(kind: str) -> None:
    if kind == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
    elif kind == "cupy":
        import cupy

        cupy.cuda.Device().synchronize()


def _time(fn, kind: str, repeats: int) -> float:
    fn()
    _sync(kind)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        _sync(kind)
        best = min(best, time.perf_counter() - started)
    return best


def _copy_bandwidth() -> float | None:
    """Device-to-device copy GB/s (read + write), or None without a GPU."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    seconds = _time(lambda: dst.copy_(src), "torch", 10)
    return 2 * src.numel() / seconds / 1e9


def _arrays(backend: str, host: list[np.ndarray]):
    """Inputs resident where the backend computes, so the benchmark measures the kernel, not transfers."""
    if backend == "numpy":
        return host, "numpy"
    if backend == "triton":
        import torch

        return [torch.from_numpy(a).cuda() for a in host], "torch"
    import cupy

    return [cupy.asarray(a) for a in host], "cupy"


BETA_SWEEP = [(64, 1), (128, 1), (128, 2), (256, 1), (256, 2), (256, 4), (512, 4)]
SEQUENCE_SWEEP = [(8, 1), (8, 2), (16, 1), (16, 2), (16, 4), (32, 1), (32, 2), (32, 4), (64, 4)]
# The NumPy reference takes seconds per call above this size.
NUMPY_MAX = 10**6


def _on_gpu_triton(backends) -> bool:
    return "triton" in backends and kernels.compute_device() == "cuda"


def beta_rows(sizes, repeats, sweep=False):
    rng = np.random.default_rng(0)
    backends = [b for b in kernels.available_backends() if b == "numpy" or kernels.compute_device() == "cuda"]
    for n in sizes:
        alpha = rng.uniform(0.5, 50, n).astype(np.float32)
        beta = rng.uniform(0.5, 500, n).astype(np.float32)
        moved = n * 12  # read alpha and beta, write the sample: 4 bytes each
        for backend in backends:
            if backend == "numpy" and n > NUMPY_MAX:
                continue
            (a, b), kind = _arrays(backend, [alpha, beta])
            s = _time(lambda: kernels.beta_sample(a, b, seed=1, offset=2, backend=backend), kind, repeats)
            yield "beta_sample", f"nudge {backend}", n, n / s, moved / s / 1e9
            if backend != "numpy":
                s = _time(lambda: kernels.beta_sample(a, b, seed=1, offset=2, backend=backend, check=False), kind,
                          repeats)
                yield "beta_sample", f"nudge {backend}, unchecked", n, n / s, moved / s / 1e9
        if sweep and n >= 10**6 and _on_gpu_triton(backends):
            from kernels.beta_triton import beta_sample_triton

            (a, b), kind = _arrays("triton", [alpha, beta])
            for block, warps in BETA_SWEEP:
                s = _time(lambda: beta_sample_triton(a, b, seed=1, offset=2, check=False, block=block,
                                                     num_warps=warps), kind, repeats)
                yield "beta_sample", f"triton block {block}, {warps} warps", n, n / s, moved / s / 1e9
        if n <= NUMPY_MAX:
            gen = np.random.default_rng(1)
            s = _time(lambda: gen.beta(alpha, beta), "numpy", repeats)
            yield "beta_sample", "numpy Generator.beta (float64)", n, n / s, moved / s / 1e9
        try:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
            ta, tb = torch.from_numpy(alpha).to(device), torch.from_numpy(beta).to(device)
            dist = torch.distributions.Beta(ta, tb)
            s = _time(lambda: dist.sample(), "torch", repeats)
            yield "beta_sample", f"torch.distributions.Beta ({device})", n, n / s, moved / s / 1e9
        except ImportError:
            pass
        if "cupy" in backends:
            import cupy

            ca, cb = cupy.asarray(alpha), cupy.asarray(beta)
            s = _time(lambda: cupy.random.beta(ca, cb), "cupy", repeats)
            yield "beta_sample", "cupy.random.beta", n, n / s, moved / s / 1e9


def sequence_rows(sizes, repeats, sweep=False):
    rng = np.random.default_rng(0)
    backends = [b for b in kernels.available_backends() if b == "numpy" or kernels.compute_device() == "cuda"]
    for n in sizes:
        if n * WINDOW * 8 > 8e9:
            continue
        host = [
            rng.integers(0, ACTIONS, (n, WINDOW)).astype(np.int32),
            rng.exponential(600, (n, WINDOW)).astype(np.float32),
            rng.integers(0, WINDOW + 1, n).astype(np.int32),
            rng.beta(1, 20, (n, ACTIONS)).astype(np.float32),
            rng.uniform(0.25, 4, (ACTIONS, ACTIONS)).astype(np.float32),
        ]
        moved = n * (WINDOW * 8 + 4 + ACTIONS * 4 + 4)
        for backend in backends:
            if backend == "numpy" and n > NUMPY_MAX:
                continue
            arrays, kind = _arrays(backend, host)
            s = _time(lambda: kernels.sequence_scores(*arrays, half_life_s=1800.0, backend=backend), kind, repeats)
            yield "sequence_scores", f"nudge {backend}", n, n / s, moved / s / 1e9
            s = _time(lambda: kernels.sequence_scores(*arrays, half_life_s=1800.0, backend=backend, check=False),
                      kind, repeats)
            yield "sequence_scores", f"nudge {backend}, unchecked", n, n / s, moved / s / 1e9
        if sweep and n >= 10**6 and _on_gpu_triton(backends):
            from kernels.sequence_triton import sequence_scores_triton

            arrays, kind = _arrays("triton", host)
            for block, warps in SEQUENCE_SWEEP:
                s = _time(lambda: sequence_scores_triton(*arrays, half_life_s=1800.0, check=False, block_rows=block,
                                                         num_warps=warps), kind, repeats)
                yield "sequence_scores", f"triton {block} rows, {warps} warps", n, n / s, moved / s / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1e3,1e4,1e5,1e6,1e7")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sweep", action="store_true", help="also time the Triton kernels' other launch shapes")
    args = parser.parse_args()
    sizes = [int(float(x)) for x in args.sizes.split(",")]
    copy = _copy_bandwidth()
    device = "CPU only"
    if copy:
        import torch

        device = f"{torch.cuda.get_device_name()}, measured copy bandwidth {copy:.0f} GB/s"
    print(f"machine: {platform.machine()}, {device}; backends here: {', '.join(kernels.available_backends())}")
    print("| kernel | implementation | size | items/s | GB/s" + (" | of copy bandwidth |" if copy else " |"))
    print("|---|---|---|---|---" + ("|---|" if copy else "|"))
    for rows in (beta_rows(sizes, args.repeats, args.sweep), sequence_rows(sizes, args.repeats, args.sweep)):
        for kernel, impl, n, rate, gbs in rows:
            tail = f" | {gbs / copy:.1%} |" if copy else " |"
            print(f"| {kernel} | {impl} | {n:.0e} | {rate:.3g} | {gbs:.3g}{tail}", flush=True)


if __name__ == "__main__":
    main()
