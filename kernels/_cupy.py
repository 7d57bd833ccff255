"""CuPy kernels are compiled (by NVRTC) on first use, once per process."""
from __future__ import annotations

import functools


@functools.lru_cache(maxsize=None)
def raw_kernel(source: str, name: str):
    import cupy

    return cupy.RawKernel(source, name)
