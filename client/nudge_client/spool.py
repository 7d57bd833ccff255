"""The disk spool: one file per batch, written crash-safe, removed once the server has settled the batch.

A batch file is written whole to a temporary name, fsynced, renamed into place and the directory fsynced, so
a crash leaves either no file or a complete one, never half of one. A client opening the spool sends the files
it finds, oldest first. An event sent again after a crash is harmless: the server stores each ``event_id`` once.
One client at a time owns a spool (an advisory lock the OS releases when the process dies).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import msgpack

from .errors import SpoolLocked

try:
    import fcntl
except ImportError:  # not POSIX: no lock; keep to one client per spool by hand
    fcntl = None

log = logging.getLogger("nudge_client")

SUFFIX = ".batch"


class Spool:
    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.dir / "lock", "a+b")
        if fcntl is not None:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._lock.close()
                raise SpoolLocked(f"another client is using the spool {self.dir}") from None
        for leftover in self.dir.glob("*.tmp"):  # a write the previous owner did not finish: never acknowledged
            leftover.unlink()
        names = [p.stem for p in self.dir.glob(f"*{SUFFIX}") if p.stem.isdigit()]
        self._next = max(map(int, names), default=0) + 1

    def pending(self) -> list[tuple[Path, list[dict[str, Any]]]]:
        """The batches left here, oldest first. A file that cannot be read is set aside (``.corrupt``) and logged."""
        batches = []
        for path in sorted(self.dir.glob(f"*{SUFFIX}")):
            try:
                events = msgpack.unpackb(path.read_bytes(), raw=False)
                if not (isinstance(events, list) and all(isinstance(e, dict) for e in events)):
                    raise ValueError("not a list of events")
            except (OSError, ValueError, msgpack.UnpackException) as exc:
                log.error("nudge client spool file %s is unreadable (%s); set aside as .corrupt", path, exc)
                path.rename(path.with_suffix(".corrupt"))
                continue
            batches.append((path, events))
        return batches

    def write(self, events: list[dict[str, Any]]) -> Path:
        """Store a batch durably; returns its file."""
        path = self.dir / f"{self._next:012d}{SUFFIX}"
        self._next += 1
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(msgpack.packb(events, use_bin_type=True))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self._sync_dir()
        return path

    def remove(self, path: Path) -> None:
        # No directory fsync: if a crash undoes the removal, the batch is sent again and counted as duplicates.
        path.unlink(missing_ok=True)

    def close(self) -> None:
        self._lock.close()  # releases the lock

    def _sync_dir(self) -> None:
        if os.name != "posix":
            return
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
