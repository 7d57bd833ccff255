"""The benchmark's yardstick serves one port from as many processes as it is told to; the scaling part serves every
tenant with each worker count."""
from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path

import msgpack
import pytest

from loadtests import bench
from loadtests.bench import Bare

pytestmark = pytest.mark.slow


def _children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(c) for c in (task / "children").read_text().split()}
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie has exited too
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("processes", [1, 3])
def test_bare_server_runs_the_processes_asked_and_stops_them(processes: int):
    bare = Bare(processes=processes)
    try:
        children = _children(bare.proc.pid)
        assert len(children) == processes - 1
        for _ in range(8):  # new connections: the kernel spreads them over the listening processes
            request = urllib.request.Request(bare.base + "/v1/score", data=msgpack.packb({"users": []}), method="POST")
            with urllib.request.urlopen(request, timeout=10) as r:
                assert r.status == 200 and msgpack.unpackb(r.read()) == {"accepted": 1, "duplicates": 0}
    finally:
        bare.stop()
    deadline = time.monotonic() + 10
    while any(_alive(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(c) for c in children)


def test_the_bare_server_follows_nudge_process_count(monkeypatch):
    monkeypatch.setattr(bench, "NUDGE_PROCESSES", 2)  # what --workers 1 sets: the server and one worker
    bare = Bare()
    try:
        assert len(_children(bare.proc.pid)) == 1
    finally:
        bare.stop()


def test_the_scaling_part_serves_every_tenant_with_each_worker_count():
    import argparse
    import concurrent.futures
    import random

    args = argparse.Namespace(backend="numpy", model=None, scaling_workers="1,2", scaling_tenants=2,
                              scaling_concurrency=2, scaling_preload=1, seconds=1.0)
    with concurrent.futures.ProcessPoolExecutor(2) as pool:
        rows = bench.run_scaling(pool, args, random.Random(0))
    assert [row["workers"] for row in rows] == [1, 2]
    for row in rows:
        assert set(row) == {"workers", "score 100 users", "ingest rows, 1000 events"}
        score, ingest = row["score 100 users"], row["ingest rows, 1000 events"]
        assert score["errors"] == 0 and score["items_per_s"] > 0 and ingest["items_per_s"] > 0
