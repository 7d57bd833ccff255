"""The README's locust command, for a few seconds against a freshly started server: it must not rot."""
import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from .conftest import make_tenants
from .test_crash import free_port, start_server, wait_ready

ROOT = Path(__file__).resolve().parents[2]
LOCUST = shutil.which("locust") or str(Path(sys.executable).with_name("locust"))


@pytest.mark.slow
@pytest.mark.skipif(not Path(LOCUST).exists(), reason="locust is not installed (pip install -e '.[test]')")
async def test_locust_profiles_run_against_a_real_server_without_failures(tmp_path):
    data_dir = tmp_path / "data"
    key = make_tenants(data_dir)["acme"]
    port = free_port()
    proc = start_server(data_dir, port, tmp_path / "server.log")
    try:
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, f"http://127.0.0.1:{port}", proc)
        run = await asyncio.to_thread(
            subprocess.run,
            [LOCUST, "-f", "loadtests/locustfile.py", "--headless", "-u", "6", "-r", "6", "-t", "5s",
             "--host", f"http://127.0.0.1:{port}", "--api-key", key, "--json", "--only-summary",
             "IngestHeavyUser", "ScoreHeavyUser", "MixedUser"],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )
    finally:
        proc.terminate()
        proc.wait(30)
    assert run.returncode == 0, run.stderr[-3000:]
    stats = {row["name"]: row for row in json.loads(run.stdout)}
    assert {"events rows 100-1000", "score 1 user", "score 1-10 users"} <= set(stats), sorted(stats)
    assert sum(row["num_requests"] for row in stats.values()) > 20
    assert all(row["num_failures"] == 0 for row in stats.values()), {n: r["num_failures"] for n, r in stats.items()}
