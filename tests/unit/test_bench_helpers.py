"""Small parts of the benchmark: its error counts, its config changes, its JSON figures."""
from __future__ import annotations

import json
import math

import msgpack
import numpy as np

from loadtests.bench import _error_code, _errors, _jsonable, config_changes
from model.config import ENGINE_FIELDS, TenantConfig


def test_errors_count_answers_and_cut_connections_not_annotations():
    statuses = {200: 10, 503: 3, 429: 2, "with Retry-After": 5, "connection error": 1, "not sent (4096 outstanding)": 4}
    assert _errors(statuses) == 6


def test_error_codes_come_from_msgpack_or_json_bodies():
    assert _error_code(429, msgpack.packb({"error": {"code": "tenant_over_share"}})) == "429 tenant_over_share"
    assert _error_code(503, json.dumps({"error": {"code": "overloaded"}}).encode()) == "503 overloaded"
    assert _error_code(502, b"<html>bad gateway</html>") == "502 ?"


def test_config_changes_alternate_an_engine_setting_the_config_accepts():
    changes = config_changes(3)
    assert len(changes) == 3 and all(set(c) <= set(ENGINE_FIELDS) for c in changes)
    before = TenantConfig()
    for change in changes:  # each one changes the engine's settings: a rebuild beside the live engine
        after = TenantConfig.from_dict({**before.to_dict(), **change})
        assert after.engine_dict() != before.engine_dict()
        before = after
    assert config_changes(0) == []


def test_figures_become_json():
    figures = {1.0: ({"p99_ms": float("nan"), "n": np.int64(3)}, {200: 2}), "rows": [np.float64(1.5)]}
    out = json.loads(json.dumps(_jsonable(figures)))
    assert out == {"1.0": [{"p99_ms": None, "n": 3}, {"200": 2}], "rows": [1.5]}
    assert not math.isnan(out["rows"][0])
