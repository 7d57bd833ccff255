"""Thirty restarts after SIGKILLs (some mid-snapshot) under ingest, erasure and config changes."""
import os
import time

import pytest

from loadtests.chaos import run_chaos


@pytest.mark.slow
async def test_restarts_under_chaos_serve_both_tenants_and_lose_no_acknowledged_event(tmp_path):
    seed = int(os.environ.get("CHAOS_SEED", time.time_ns() % 2**32))
    tally = await run_chaos(tmp_path, trials=30, seed=seed)
    report = tally.report()  # names the seed: CHAOS_SEED=<seed> replays the same choices
    assert tally.restart_failures == [], report
    assert tally.kills == 30 and tally.graceful_exit == 0, report
    assert tally.lost == 0, report
    assert tally.problems() == [], report
