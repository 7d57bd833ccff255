"""A ``nudge serve`` subprocess for crash and chaos tests: start it, wait for it, read its log."""
from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]


class StartFailed(RuntimeError):
    """The server exited, reported a failed recovery, or was not ready in time."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, port: int, log_path: Path, **settings: str) -> subprocess.Popen:
    """``nudge serve`` on the numpy backend; ``settings`` become ``NUDGE_<NAME>`` variables; output appends to the log.
    No worker process unless ``workers`` is given: the same server on every machine, whatever its cores."""
    env = {**os.environ, "NUDGE_SNAPSHOT_INTERVAL_S": "0.3", "NUDGE_RATE_LIMIT_PER_S": "0", "PYTHONUNBUFFERED": "1",
           "NUDGE_WORKERS": "0",
           **{f"NUDGE_{k.upper()}": v for k, v in settings.items()}}
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--data-dir", str(data_dir), "--port", str(port),
             "--backend", "numpy"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )


async def wait_ready(session: aiohttp.ClientSession, base: str, proc: subprocess.Popen, timeout_s: float = 60.0) -> dict:
    """The /readyz body once it answers 200; StartFailed as soon as the server cannot get there."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StartFailed(f"the server exited during start-up with code {proc.returncode}")
        try:
            async with session.get(f"{base}/readyz") as r:
                body = await r.json(content_type=None)
                if r.status == 200:
                    return body
                # A failed recovery never turns ready by itself: waiting out the deadline would only hide it.
                if isinstance(body, dict) and body.get("recovery", {}).get("state") == "failed":
                    raise StartFailed(f"recovery failed: {body['recovery'].get('error')}")
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            pass
        await asyncio.sleep(0.1)
    raise StartFailed(f"the server was not ready within {timeout_s:g} s")


def log_tail(log_path: Path, chars: int = 3000) -> str:
    """The end of a server log, for failure messages."""
    try:
        return log_path.read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return "(no server log)"
