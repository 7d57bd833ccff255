"""The one place where the array backend is chosen."""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)

KNOWN_BACKENDS = ("numpy", "triton", "cupy")


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run on this machine."""


def _cuda_device_present() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _why_unavailable(name: str) -> str | None:
    """Return the reason ``name`` cannot run here, or None when it can."""
    if name == "numpy":
        return None
    if name in ("triton", "cupy"):
        # The GPU implementations land with the kernels issue; until then the
        # resolver says so instead of pretending.
        if not _cuda_device_present():
            return f"backend {name!r} needs a CUDA device and none is visible"
        return f"backend {name!r} is not part of this build yet; use 'numpy'"
    return f"unknown backend {name!r}; choose one of auto, {', '.join(KNOWN_BACKENDS)}"


def available_backends() -> list[str]:
    """The backends that can run on this machine, best first."""
    return [name for name in ("triton", "cupy", "numpy") if _why_unavailable(name) is None]


def resolve_backend(name: str | None = "auto") -> str:
    """Return the backend to use: ``auto`` picks the best available, an explicit name must work."""
    if name is None or name == "auto":
        chosen = available_backends()[0]
        for better in ("triton", "cupy"):
            if better != chosen and _cuda_device_present():
                log.info("backend %s unavailable (%s); falling back", better, _why_unavailable(better))
        log.info("array backend: %s", chosen)
        return chosen
    reason = _why_unavailable(name)
    if reason is not None:
        raise BackendUnavailable(reason)
    return name
