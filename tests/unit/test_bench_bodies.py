"""The benchmark's request bodies: built without locust, and what nudge accepts."""
from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest

from loadtests.bodies import ACTIONS, USERS, events_body, score_body
from model.config import TenantConfig
from server.validation import parse_events, parse_score_request

ROOT = Path(__file__).resolve().parents[2]


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_importing_the_benchmark_imports_neither_locust_nor_litserve():
    done = _python(
        "import sys\n"
        "import loadtests.bench\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('locust', 'litserve')))\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_benchmark_imports_where_locust_is_missing():
    done = _python("import sys\nsys.modules['locust'] = None\nimport loadtests.bench\nimport loadtests.bodies\n")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("columns", [False, True])
@pytest.mark.parametrize("n", [1, 100, 1000])
def test_events_bodies_are_valid_ingest_requests(columns: bool, n: int):
    config = TenantConfig()
    assert set(ACTIONS) <= set(config.actions)
    body = msgpack.unpackb(events_body(random.Random(n), n, columns))
    assert ("columns" in body) == columns
    batch = parse_events(body, config, time.time(), max_items=10_000)
    assert len(batch) == n


@pytest.mark.parametrize("n", [1, 100])
def test_score_bodies_are_valid_score_requests(n: int):
    user_ids, explain, _ = parse_score_request(msgpack.unpackb(score_body(random.Random(n), n)), max_items=10_000)
    assert len(user_ids) == n and not explain
    assert all(0 <= int(uid[1:]) < USERS for uid in user_ids)


def test_bodies_follow_the_generator_seed():
    assert events_body(random.Random(3), 10, False) != events_body(random.Random(4), 10, False)
    assert score_body(random.Random(3), 10) == score_body(random.Random(3), 10)
