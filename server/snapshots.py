"""Engine snapshots beside the database: checksummed, written atomically, set aside when unreadable.

A snapshot is only a shortcut: the event log rebuilds everything it holds. So a snapshot that cannot
be read is renamed out of the way (kept for a post-mortem) and the tenant replays its whole log.

File layout: ``MAGIC``, the SHA-256 of the payload, then the payload (an ``.npz`` archive whose
``__config__`` member holds the engine settings the state was made under).

Erasures do not rewrite the snapshot. The erased user ids are appended to a journal beside it, the
restore applies them to the loaded state, and the next snapshot (which no longer holds those users)
empties the journal.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from model.combiner import resolve

log = logging.getLogger(__name__)

MAGIC = b"NUDGESNAP2\n"
_DIGEST_BYTES = 32
_CONFIG_KEY = "__config__"


class SnapshotUnreadable(Exception):
    """A snapshot file exists but is torn, corrupt or not a snapshot."""


def snapshots_folder(data_dir: Path) -> Path:
    return Path(data_dir) / "snapshots"


def _tenant_file(folder: Path, tenant_id: int) -> Path:
    return Path(folder) / f"tenant-{tenant_id}.npz"


def snapshot_path(data_dir: Path, tenant_id: int) -> Path:
    return _tenant_file(snapshots_folder(data_dir), tenant_id)


def journal_path(snapshot: Path) -> Path:
    """The erasure journal that goes with a snapshot."""
    return snapshot.with_suffix(".erased")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_snapshot(path: Path, state: dict, config: dict) -> None:
    """Write a checksummed snapshot to a temporary file of its own, fsync it, rename it over the old one.

    Each call has its own temporary file, so two writers can never publish each other's half-written
    bytes; the last rename wins whole. Callers that need the newest state to win serialise their calls.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = resolve(state)  # what the capture left to assemble here, off the device thread
    arrays[_CONFIG_KEY] = np.frombuffer(json.dumps(config, sort_keys=True).encode(), dtype=np.uint8)
    payload = io.BytesIO()
    np.savez(payload, **arrays)
    body = payload.getbuffer()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(MAGIC)
            fh.write(hashlib.sha256(body).digest())
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def load_snapshot(path: Path) -> tuple[dict[str, np.ndarray], dict] | None:
    """(state, config) of a snapshot, None when there is none, :class:`SnapshotUnreadable` when it is damaged."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    if raw.startswith(MAGIC):
        digest = raw[len(MAGIC):len(MAGIC) + _DIGEST_BYTES]
        body = memoryview(raw)[len(MAGIC) + _DIGEST_BYTES:]
        if len(digest) < _DIGEST_BYTES or hashlib.sha256(body).digest() != digest:
            raise SnapshotUnreadable(f"{path.name}: checksum mismatch (torn or corrupted write)")
    else:
        body = memoryview(raw)  # written by nudge before checksums: a bare .npz
    try:
        with np.load(io.BytesIO(body), allow_pickle=False) as data:
            state = {k: data[k] for k in data.files if k != _CONFIG_KEY}
            config = json.loads(bytes(data[_CONFIG_KEY]).decode())
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise SnapshotUnreadable(f"{path.name}: {type(exc).__name__}: {exc}") from None
    return state, config


def set_aside(path: Path) -> Path:
    """Rename an unreadable snapshot (and its journal) out of the way; returns the new name."""
    aside = path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
    os.replace(path, aside)
    journal_path(path).unlink(missing_ok=True)  # it only narrows a snapshot that is gone
    _fsync_dir(path.parent)
    return aside


def remove_temporaries(folder: Path) -> int:
    """Delete temporary files that writers killed mid-write left behind (at start-up, before any writer)."""
    if not folder.is_dir():
        return 0
    stale = list(folder.glob("*.tmp"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return len(stale)


def journal_erasure(snapshot: Path, user_id: str) -> None:
    """Record, durably, that ``user_id`` must not come back from the current snapshot."""
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    created = not journal_path(snapshot).exists()
    with open(journal_path(snapshot), "ab") as fh:
        # The leading newline ends a line torn by a crash, so it cannot swallow this one.
        fh.write(b"\n" + json.dumps(user_id).encode() + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
    if created:
        _fsync_dir(snapshot.parent)


def read_journal(snapshot: Path) -> list[str]:
    """The user ids erased since the snapshot was written (a torn last line was never acknowledged)."""
    try:
        lines = journal_path(snapshot).read_bytes().splitlines()
    except FileNotFoundError:
        return []
    users = []
    for line in filter(None, lines):
        try:
            users.append(json.loads(line))
        except ValueError:
            log.warning("skipping a torn line in the erasure journal %s", journal_path(snapshot))
    return users


def clear_journal(snapshot: Path) -> None:
    """After a snapshot that no longer holds the journalled users has replaced the old one."""
    journal_path(snapshot).unlink(missing_ok=True)


class SnapshotFiles:
    """The embedded :class:`server.ports.Snapshots` adapter: one checksummed file per tenant in ``folder``, with
    its erasure journal beside it. Its methods share no state, so the snapshot writer thread and the thread that
    recovers tenants may use one instance."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def _path(self, tenant_id: int) -> Path:
        return _tenant_file(self.folder, tenant_id)

    def save_snapshot(self, tenant_id: int, state: dict, config: dict) -> None:
        path = self._path(tenant_id)
        save_snapshot(path, state, config)
        clear_journal(path)  # the new snapshot was captured after every journalled erasure

    def load_snapshot(self, tenant_id: int) -> tuple[dict, dict] | None:
        return load_snapshot(self._path(tenant_id))

    def set_aside_snapshot(self, tenant_id: int) -> str:
        return set_aside(self._path(tenant_id)).name

    def journal_erasure(self, tenant_id: int, user_id: str) -> None:
        journal_erasure(self._path(tenant_id), user_id)

    def erased_since_snapshot(self, tenant_id: int) -> list[str]:
        return read_journal(self._path(tenant_id))

    def remove_interrupted_writes(self) -> int:
        return remove_temporaries(self.folder)

