"""A tenant's engine rebuilt from its log in a process of its own, for a config change.

Replaying a large log is seconds of Python and NumPy. Run in the serving process, it would hold the GIL that the
event loop and every tenant's scoring share, however low its thread's priority. In a child process it takes its
own core; the server only loads the finished state (NumPy arrays) and catches up what came meanwhile.
"""
from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from model import Engine, TenantConfig

from .ports import EventLog
from .storage import Store

# Logs shorter than this replay in the serving process (milliseconds): a child's start costs more.
CHILD_PROCESS_EVENTS = 50_000
MAX_PASSES = 4


def replay(engine: Engine, log: EventLog, tenant_id: int, until_seq: int | None = None) -> int:
    """Apply the tenant's log after what ``engine`` has applied (up to the batch holding ``until_seq``); returns
    how many events that was."""
    replayed = 0
    for batch, seqs in log.read_events(tenant_id, engine.config, after_seq=engine.applied_seq, until_seq=until_seq):
        replayed += engine.apply(batch, seqs)
    return replayed


def replay_state(data_dir: str, tenant_id: int, config: dict[str, Any], settle_events: int) -> dict[str, np.ndarray]:
    """The state of an engine under ``config`` that has applied the tenant's whole log (in the child), read again
    until a pass finds fewer than ``settle_events`` new events, or for ``MAX_PASSES`` passes: the events the
    tenant sends meanwhile are caught up here too, on the child's core. A tenant that sends as fast as a replay
    reads would keep the child reading for ever; the server catches up the rest, holding that tenant's ingest
    back while it is far behind."""
    store = Store(Path(data_dir))
    try:
        engine = Engine(TenantConfig.from_dict(config), backend="numpy")
        for _ in range(MAX_PASSES):
            if replay(engine, store, tenant_id) < settle_events:
                break
        return engine.state_dict()
    finally:
        store.close()


def child_pool() -> concurrent.futures.ProcessPoolExecutor:
    """One child, started fresh (spawn: nothing of the server's threads or sockets is inherited). It ends itself
    when the server's process dies: killed mid-build, the server would otherwise leave it blocked for ever on
    sending its result, holding a whole engine in memory."""
    return concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=exit_with_parent, initargs=(os.getpid(),))


def exit_with_parent(parent_pid: int, every_s: float = 0.5) -> None:
    """In a child process: end it once ``parent_pid`` is no longer its parent (the parent died, and the child
    was handed to another process)."""
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(every_s)
        os._exit(1)

    threading.Thread(target=watch, name="nudge-exit-with-parent", daemon=True).start()
