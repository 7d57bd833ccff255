import os

# Without a GPU the Triton kernels run under Triton's interpreter; the variable must be set before
# any kernel module is imported. With a GPU they run for real.
try:
    import torch

    _CUDA = torch.cuda.is_available()
except ImportError:
    _CUDA = False
if not _CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if _CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
