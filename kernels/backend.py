"""The one place where the array backend is chosen."""
from __future__ import annotations

import functools
import importlib
import logging
import os
from typing import Callable

log = logging.getLogger(__name__)

KNOWN_BACKENDS = ("numpy", "triton", "cupy")
# Below this many rows a device's fixed costs (launches, the copies, one sync) exceed NumPy's whole work:
# on an H200 a 64-user score took 2.1 ms on Triton and 1.3 ms on NumPy, a 1,024-user one 5.7 and 8.4 ms.
DEVICE_MIN_ROWS = 256


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run on this machine."""


@functools.lru_cache(maxsize=None)
def _cuda_device_present() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _why_unavailable(name: str) -> str | None:
    """The reason ``name`` cannot run here, or None when it can."""
    if name == "numpy":
        return None
    if name == "triton":
        try:
            import torch  # noqa: F401
            import triton  # noqa: F401
        except ImportError as exc:
            return f"backend 'triton' needs torch and triton installed ({exc})"
        if not (_cuda_device_present() or _interpreting()):
            return "backend 'triton' needs a CUDA device (or TRITON_INTERPRET=1 to run on the CPU, slowly)"
        return None
    if name == "cupy":
        try:
            import cupy
        except ImportError as exc:
            return f"backend 'cupy' needs cupy installed (cupy-cuda13x) ({exc})"
        try:
            if cupy.cuda.runtime.getDeviceCount() < 1:
                return "backend 'cupy' needs a CUDA device and none is visible"
        except Exception as exc:  # CuPy raises its own CUDA errors when no driver is present
            return f"backend 'cupy' needs a CUDA device: {exc}"
        return None
    return f"unknown backend {name!r}; choose one of auto, {', '.join(KNOWN_BACKENDS)}"


def available_backends() -> list[str]:
    """The backends that can run on this machine (Triton under the interpreter counts)."""
    return [name for name in ("triton", "cupy", "numpy") if _why_unavailable(name) is None]


@functools.lru_cache(maxsize=None)
def _auto() -> str:
    # Automatic choice never picks the Triton interpreter: it is a correctness tool, not a backend.
    for name in ("triton", "cupy"):
        reason = _why_unavailable(name)
        if reason is None and _cuda_device_present():
            log.info("array backend: %s (automatic)", name)
            return name
        if _cuda_device_present():
            log.warning("array backend %s unavailable (%s); trying the next", name, reason)
    log.info("array backend: numpy (automatic: no CUDA device)")
    return "numpy"


def resolve_backend(name: str | None = "auto") -> str:
    """The backend to use: ``auto`` picks the best available, an explicit name must work."""
    if name is None or name == "auto":
        return _auto()
    reason = _why_unavailable(name)
    if reason is not None:
        raise BackendUnavailable(reason)
    return name


def for_rows(backend: str, rows: int) -> str:
    """The backend to compute ``rows`` rows on: small batches stay on the host, whatever the backend."""
    return backend if rows >= DEVICE_MIN_ROWS else "numpy"


@functools.lru_cache(maxsize=None)
def warm_up(backend: str, window: int, n_actions: int) -> None:
    """Compile ``backend``'s kernels for windows of ``window`` events over ``n_actions`` actions now, once per
    process and shape, so that no request waits for a compiler."""
    if backend == "numpy":
        return
    import numpy as np

    from .beta import beta_sample
    from .sequence import sequence_scores

    ones = np.ones((DEVICE_MIN_ROWS, n_actions), np.float32)
    beta_sample(ones, ones, seed=0, backend=backend, check=False)
    actions = np.zeros((DEVICE_MIN_ROWS, window), np.int32)
    sequence_scores(actions, actions.astype(np.float32), np.ones(DEVICE_MIN_ROWS, np.int32), ones,
                    np.ones((n_actions, n_actions), np.float32), half_life_s=1.0, backend=backend, check=False)


def implementation(kernel: str, backend: str) -> Callable:
    """The function computing ``kernel`` (e.g. 'beta_sample') on ``backend``."""
    if backend == "numpy":
        module = importlib.import_module(f"kernels.{kernel.split('_')[0]}")
        return getattr(module, f"{kernel}_numpy")
    module = importlib.import_module(f"kernels.{kernel.split('_')[0]}_{backend}")
    return getattr(module, f"{kernel}_{backend}")
