import json
import logging
import sys

import pytest

from model import ConfigError, TenantConfig
from server.config import ServerConfig
from server.logs import JsonFormatter


def test_tenant_config_round_trips_through_a_dict():
    cfg = TenantConfig(segments=("a",), horizon_s=600.0)
    assert TenantConfig.from_dict(cfg.to_dict()) == cfg


def test_tenant_config_names_every_bad_field():
    with pytest.raises(ConfigError) as info:
        TenantConfig.from_dict({"horizon_s": -1, "window_size": "big", "colour": "red", "conversion_action": "x"})
    fields = {f for f, _ in info.value.problems}
    assert fields == {"colour", "window_size"}  # type errors are reported before range checks
    with pytest.raises(ConfigError) as info:
        TenantConfig.from_dict({"horizon_s": -1, "conversion_action": "x", "prior_means": {"view": 2.0}})
    assert {f for f, _ in info.value.problems} == {"horizon_s", "conversion_action", "prior_means"}


@pytest.mark.parametrize("field, value", [
    ("holdout_share", 10**400), ("horizon_s", -(10**400)), ("discount_tiers_pct", [10**400]),
    ("prior_means", {"view": 10**400}), ("thresholds", {"needs_help": 10**400}),
])
def test_tenant_config_refuses_integers_too_large_for_a_float(field, value):
    with pytest.raises(ConfigError) as info:
        TenantConfig.from_dict({**TenantConfig().to_dict(), field: value})
    assert [f for f, _ in info.value.problems] == [field]


def test_tenant_config_clips_a_certain_prior():
    assert TenantConfig().prior_mean("purchase") == 0.99
    assert TenantConfig(prior_means={}).prior_mean("view") == 0.1


def test_server_config_layers_file_env_and_overrides(tmp_path):
    path = tmp_path / "nudge.toml"
    path.write_text('port = 9000\nmax_wait_ms = 5.0\nhost = "0.0.0.0"\n')
    cfg = ServerConfig.load(path, env={"NUDGE_PORT": "9100", "NUDGE_MAX_BATCH_SIZE": "64", "OTHER": "x"}, host=None, max_wait_ms=1.0)
    assert (cfg.port, cfg.max_batch_size, cfg.max_wait_ms, cfg.host) == (9100, 64, 1.0, "0.0.0.0")


def test_server_config_defaults_give_way_to_file_env_and_overrides(tmp_path):
    assert ServerConfig.load(env={}, defaults={"workers": 3}).workers == 3
    assert ServerConfig.load(env={"NUDGE_WORKERS": "0"}, defaults={"workers": 3}).workers == 0
    assert ServerConfig.load(env={}, defaults={"workers": 3}, workers=1).workers == 1
    path = tmp_path / "nudge.toml"
    path.write_text("workers = 2\n")
    assert ServerConfig.load(path, env={}, defaults={"workers": 3}).workers == 2
    assert ServerConfig.load(env={}).workers == 0  # built without defaults: no worker process


def test_serve_fits_its_worker_processes_to_the_machine():
    from server.config import workers_for

    assert [workers_for(cores) for cores in (1, 2, 4, 16, 64)] == [0, 1, 3, 8, 8]
    assert workers_for(16, gpu=True) == 1


def test_server_config_rejects_unknown_and_bad_values():
    with pytest.raises(ValueError, match="unknown server settings: colour"):
        ServerConfig.from_dict({"colour": "red"})
    with pytest.raises(ValueError, match="backend"):
        ServerConfig(backend="abacus")
    with pytest.raises(ValueError, match="port must be int"):
        ServerConfig.load(env={"NUDGE_PORT": "eighty"})


def test_json_log_lines_carry_level_logger_and_exception():
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("server.x", logging.ERROR, __file__, 1, "failed %s", ("here",), sys.exc_info())
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "ERROR" and line["logger"] == "server.x" and line["message"] == "failed here"
    assert "ValueError: boom" in line["exception"]
    with pytest.raises(ValueError, match="log_format"):
        ServerConfig(log_format="xml")
