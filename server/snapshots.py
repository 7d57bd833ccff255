"""Engine snapshots: written atomically beside the database, read back at start-up."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

_CONFIG_KEY = "__config__"


def snapshot_path(data_dir: Path, tenant_id: int) -> Path:
    return data_dir / "snapshots" / f"tenant-{tenant_id}.npz"


def save_snapshot(path: Path, state: dict[str, np.ndarray], config: dict) -> None:
    """Write to a temporary file, fsync, then rename over the old snapshot: never a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    arrays = dict(state)
    arrays[_CONFIG_KEY] = np.frombuffer(json.dumps(config, sort_keys=True).encode(), dtype=np.uint8)
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_snapshot(path: Path) -> tuple[dict[str, np.ndarray], dict] | None:
    """(state, config) of a snapshot, or None when there is none."""
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as data:
        state = {k: data[k] for k in data.files if k != _CONFIG_KEY}
        config = json.loads(bytes(data[_CONFIG_KEY]).decode())
    return state, config


def remove_snapshot(path: Path) -> None:
    path.unlink(missing_ok=True)
