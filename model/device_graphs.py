"""Scoring batches replayed as CUDA graphs: a device pass is a few hundred small kernels, and launching them one
by one from Python costs more than running them.

A pass is captured once per batch size (padded with unknown users to a power of two, at least
``kernels.DEVICE_MIN_ROWS``) and per Transformer, and replayed with the batch's users, time and default
context written into its input buffers. A graph reads the tensors it was captured with: the device state
writes its rows and tables in place, and counts in ``generation`` every time it has to replace one, which
makes the graphs of the older generation be captured again. A pass with a Thompson draw is not captured (its
generator's key changes per batch); neither is one on CuPy (its kernels run on CuPy's stream, not torch's).
"""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import numpy as np
import torch

import kernels

from .device_scoring import GRAPH_MAX_USERS, GRAPH_MIN_USERS, device_pass

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger(__name__)

# NUDGE_CUDA_GRAPHS=0 runs every pass eagerly (benchmarks also switch this to compare both ways).
ENABLED = os.environ.get("NUDGE_CUDA_GRAPHS", "1") != "0"


class CapturedPass:
    """One batch size's device pass, captured."""

    def __init__(self, engine: Engine, predictor, size: int):
        ds = engine.device_state
        self.state, self.size, self.predictor, self.generation = ds, size, predictor, ds.generation
        self.users = torch.full((size,), -1, dtype=torch.int64, device=ds.device)
        self.now = torch.zeros((), dtype=torch.float64, device=ds.device)
        self.default_ctx = torch.zeros((), dtype=torch.int64, device=ds.device)

        def run():
            return device_pass(engine, predictor, self.users, self.now, self.default_ctx, draw=False)

        with torch.no_grad():
            # Warm up on a side stream (as torch.cuda.graphs asks), so that lazy initialisation is not captured.
            side = torch.cuda.Stream(ds.device)
            side.wait_stream(torch.cuda.current_stream(ds.device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    run()
            torch.cuda.current_stream(ds.device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            # Thread-local: a rebuild may be applying events to another engine on this device meanwhile.
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                self.packed, self.features = run()

    def run(self, users: np.ndarray, now_s: float, default_ctx: int) -> tuple[np.ndarray, torch.Tensor]:
        """The pass's results for ``users`` (host, one copy each way) and their features (on the device)."""
        n = len(users)
        padded = np.full(self.size, -1, np.int64)
        padded[:n] = users
        self.state.to_device(padded, out=self.users)
        self.now.fill_(now_s)
        self.default_ctx.fill_(default_ctx)
        self.graph.replay()
        # The features are the graph's output buffer, which the next replay overwrites.
        return self.packed[:n].cpu().numpy(), self.features[:n].clone()


def replays(engine: Engine, users: int, draw: bool, predictor=None) -> bool:
    """Whether a batch of ``users`` would replay as a graph: then the device pays from ``GRAPH_MIN_USERS`` up."""
    ds = engine.device_state
    return (ENABLED and not draw and engine.backend == "triton" and ds.device.type == "cuda"
            and GRAPH_MIN_USERS <= users <= GRAPH_MAX_USERS and id(predictor) not in ds.graphs_failed)


def captured_pass(engine: Engine, predictor, users: int) -> CapturedPass | None:
    """The captured pass for a batch of ``users`` (captured now if it is not yet), or None where passes are not
    captured: switched off, not Triton, or capturing failed once on this engine with this model (its passes then
    run eagerly)."""
    ds = engine.device_state
    if not ENABLED or engine.backend != "triton" or id(predictor) in ds.graphs_failed:
        return None
    size = max(kernels.DEVICE_MIN_ROWS, 1 << (users - 1).bit_length())
    key = (size, id(predictor))
    found = ds.graphs.get(key)
    if found is not None and found.generation == ds.generation and found.predictor is predictor:
        return found
    if predictor is not None:  # another model now serves: the old one's graphs would keep it in memory
        for other in [k for k, g in ds.graphs.items() if g.predictor is not None and g.predictor is not predictor]:
            del ds.graphs[other]
    try:
        ds.graphs[key] = CapturedPass(engine, predictor, size)
    except Exception:
        log.warning("capturing a scoring pass as a CUDA graph failed; this tenant's passes with this model run "
                    "eagerly", exc_info=True)
        ds.graphs_failed[id(predictor)] = predictor  # kept, so that its id is not another model's
        return None
    return ds.graphs[key]
