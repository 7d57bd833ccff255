"""Moving arrays between the caller's kind (NumPy, torch, CuPy) and the kind a backend computes on."""
from __future__ import annotations

from typing import Any

import numpy as np


def kind_of(x: Any) -> str:
    module = type(x).__module__
    if module.startswith("torch"):
        return "torch"
    if module.startswith("cupy"):
        return "cupy"
    return "numpy"


def torch_device() -> str:
    """Where the Triton backend computes: the GPU, or the CPU under TRITON_INTERPRET=1."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def for_backend(x: Any, backend: str) -> Any:
    """``x`` as the array kind ``backend`` computes on (no copy when it already is)."""
    kind = kind_of(x)
    if backend == "numpy":
        if kind == "torch":
            return x.detach().cpu().numpy()
        if kind == "cupy":
            import cupy

            return cupy.asnumpy(x)
        return np.asarray(x)
    if backend == "triton":
        import torch

        device = torch_device()
        if kind == "torch":
            return x.to(device)
        if kind == "cupy":
            return torch.from_dlpack(x).to(device)
        x = np.ascontiguousarray(x)
        # Broadcast views are read-only, and torch will not wrap a read-only array without a warning.
        return torch.from_numpy(x if x.flags.writeable else x.copy()).to(device)
    import cupy

    if kind == "torch":
        return cupy.from_dlpack(x.detach().cuda())
    return cupy.asarray(x)


def like(result: Any, original: Any) -> Any:
    """``result`` converted to the array kind (and torch device) of ``original``."""
    want, have = kind_of(original), kind_of(result)
    if want == have:
        return result.to(original.device) if want == "torch" else result
    if want == "numpy":
        return for_backend(result, "numpy")
    if want == "torch":
        import torch

        tensor = torch.from_dlpack(result) if have == "cupy" else torch.from_numpy(result)
        return tensor.to(original.device)
    import cupy

    return cupy.from_dlpack(result) if have == "torch" else cupy.asarray(result)
