"""Serving next-action models: fallback, the deployment gate (on reload and on file change), refusals, rollback,
the model history, and no failed request during a swap."""
import asyncio
import collections
import time

import numpy as np
import pytest

from model import EventBatch, TenantConfig
from model.predictor import write_checkpoint
from model.training import TrainSettings, train
from model.transformer import TransformerConfig
from server.models import model_path

NOW = time.time()
CONFIG = TenantConfig()
SMALL = TransformerConfig(n_actions=9, window=8, d_model=16, layers=1, heads=2, dropout=0.0)
_CODE = {a: i for i, a in enumerate(CONFIG.actions)}
# The action after a view depends on where the session is in its funnel: a first-order Markov chain cannot tell,
# a Transformer reading the window can.
FUNNEL = [_CODE[a] for a in ("view", "search", "view", "add_to_cart", "view", "begin_checkout", "purchase")]
OTHER = [_CODE[a] for a in ("view", "help_view", "view", "form_start", "view", "favorite", "search")]


def _sessions(seed: int, n_sessions: int, t0: float, span_s: float, pattern=FUNNEL, noise: float = 0.15):
    """(users, action codes, times), time-sorted: sessions that follow ``pattern``, an action in 1/noise random."""
    rng = np.random.default_rng(seed)
    users, actions, ts = [], [], []
    for _ in range(n_sessions):
        user, t = f"u{rng.integers(0, n_sessions // 3)}", t0 + rng.uniform(0, span_s)
        for step in range(rng.integers(3, len(pattern) + 1)):
            users.append(user)
            actions.append(pattern[step] if rng.random() > noise else int(rng.integers(0, len(CONFIG.actions))))
            ts.append(t)
            t += rng.uniform(5, 40)
    order = np.argsort(ts, kind="stable")
    return np.array(users)[order], np.array(actions)[order], np.array(ts)[order]


def _train(users, actions, ts, config: TenantConfig = CONFIG, epochs: int = 4):
    batch = EventBatch.build(users.tolist(), actions, ts)
    settings = TrainSettings(epochs=epochs, patience=2, batch_size=32, seed=0)
    return train(batch, config, settings, TransformerConfig(**{**SMALL.to_dict(), "n_actions": len(config.actions)}),
                 log=lambda line: None, show_progress=False)


def _log(seed: int = 5, n_sessions: int = 450) -> list[dict]:
    """The tenant's recent log as API events: about 5 events a session, over the last two days."""
    users, actions, ts = _sessions(seed, n_sessions, NOW - 2 * 86400, 2 * 86400 - 3600)
    return [{"user_id": str(u), "action": CONFIG.actions[a], "ts": float(t)} for u, a, t in zip(users, actions, ts)]


@pytest.fixture(scope="module")
def checkpoints():
    t0 = NOW - 6 * 86400
    good = _train(*_sessions(0, 1000, t0, 3 * 86400))
    rng = np.random.default_rng(2)
    other = TenantConfig(actions=("view", "add_to_cart", "purchase"), prior_means={"view": 0.2})
    return {
        "good": good,
        # The same weights, told apart by GET /v1/model's training_seconds: the gate finds them exactly as good.
        "good_again": {**good, "seconds": 4321.0},
        "other_pattern": _train(*_sessions(1, 1000, t0, 3 * 86400, pattern=OTHER)),
        # 400 events over 50 minutes: a validation span of a few minutes, a few dozen judged events.
        "unvalidated": _train(np.array([f"u{i}" for i in rng.integers(0, 30, 400)]), rng.choice(9, 400),
                              np.sort(NOW - 3 * 86400 + rng.uniform(0, 3000, 400)), epochs=1),
        "other_vocabulary": _train(np.array([f"u{i}" for i in rng.integers(0, 30, 400)]), rng.choice(3, 400),
                                   np.sort(NOW - 3 * 86400 + rng.uniform(0, 3000, 400)), other, epochs=1),
    }


async def _served(start, *args, log: bool = True, **settings):
    """A started server whose tenant acme has a recent log to compare on; unless a test sets ``model_poll_s``,
    checkpoints are gated on POST /v1/model/reload only, not raced by the watcher."""
    server = await start(*args, **{"model_poll_s": 3600.0, **settings})
    if log:
        assert (await server.acme.events(_log())).status == 200
    return server


async def _reload(server, checkpoint=None, body=None):
    if checkpoint is not None:
        write_checkpoint(checkpoint, model_path(server.data_dir, "acme"))
    return await server.acme.call("POST", "/v1/model/reload", body)


async def _model(server) -> dict:
    return (await server.acme.call("GET", "/v1/model")).body


async def _history(server) -> list[dict]:
    return (await server.acme.call("GET", "/v1/model/history")).body["history"]


async def test_model_markov_answers_until_a_model_is_loaded(start):
    server = await start()
    await server.acme.events([{"user_id": "u1", "action": "view"}])
    reply = await server.acme.score("u1")
    assert reply.body["results"][0]["predicted"]["predictor"] == "markov"
    info = await server.acme.call("GET", "/v1/model")
    assert info.body == {"predictor": "markov", "model": None, "last_error": None, "gate": None, "rollback_to": None}
    missing = await server.acme.call("POST", "/v1/model/reload")
    assert missing.status == 404 and missing.body["error"]["code"] == "model_not_found"


async def test_model_good_checkpoint_is_promoted_and_serves_known_users(start, checkpoints):
    server = await _served(start)
    reply = await _reload(server, checkpoints["good"])
    assert reply.status == 200 and reply.body["predictor"] == "transformer"
    assert reply.body["model"]["vocabulary"] == list(CONFIG.actions)
    gate = reply.body["gate"]
    assert gate["promote"] and gate["serving"] == "markov" and not gate["forced"]
    assert gate["validation_events"] >= 500 and gate["compared_events"] >= 500
    assert gate["figures"]["next_action_logloss_relative_gain_ci"][0] > 0  # clearly better than the Markov chain
    assert reply.body["rollback_to"] == "markov"
    again = await _reload(server)  # the file that serves already: nothing to gate
    assert again.status == 200 and again.body["rollback_to"] == "markov"
    assert [h["event"] for h in await _history(server)] == ["promoted"]
    await server.acme.events([{"user_id": "u1", "action": "view", "ts": NOW - 60},
                              {"user_id": "u1", "action": "add_to_cart"}])
    results = (await server.acme.score("u1", "stranger")).body["results"]
    known, unknown = results[0]["predicted"], results[1]["predicted"]
    assert known["predictor"] == "transformer" and unknown["predictor"] == "markov"
    assert set(known["probs"]) == {*CONFIG.actions, "session_end"}
    assert abs(sum(known["probs"].values()) - 1.0) < 1e-4
    assert 0.0 <= known["purchase_5m"] <= 1.0 and 0.0 <= known["purchase_60m"] <= 1.0
    # Another tenant has no model of its own.
    await server.globex.events([{"user_id": "u1", "action": "view"}])
    assert (await server.globex.score("u1")).body["results"][0]["predicted"]["predictor"] == "markov"


async def test_model_with_too_little_validation_is_refused_and_the_old_one_serves(start, checkpoints):
    server = await _served(start)
    assert (await _reload(server, checkpoints["good"])).status == 200
    reply = await _reload(server, checkpoints["unvalidated"])
    assert reply.status == 409 and reply.body["error"]["code"] == "model_rejected"
    assert "validated on" in reply.body["error"]["message"] and "fewer than 500" in reply.body["error"]["message"]
    assert reply.body["error"]["message"].endswith("still serving transformer")
    info = await _model(server)
    assert info["predictor"] == "transformer" and info["model"]["training_seconds"] == checkpoints["good"]["seconds"]
    assert info["last_error"]["code"] == "model_rejected" and "fewer than 500" in info["last_error"]["message"]
    assert not info["gate"]["promote"] and info["gate"]["validation_events"] < 500
    # The validation rule holds even when the comparison is skipped.
    forced = await _reload(server, body={"force": True})
    assert forced.status == 409 and forced.body["error"]["code"] == "model_rejected"
    assert (await server.acme.score("u0")).body["results"][0]["predicted"]["predictor"] == "transformer"


async def test_model_worse_than_the_markov_chain_on_the_recent_log_is_refused(start, checkpoints):
    server = await _served(start)
    reply = await _reload(server, checkpoints["other_pattern"])
    assert reply.status == 409 and reply.body["error"]["code"] == "model_rejected"
    assert "worse than the serving markov" in reply.body["error"]["message"]
    gate = (await _model(server))["gate"]
    assert gate["validation_events"] >= 500 and gate["serving"] == "markov"
    assert gate["figures"]["next_action_logloss_relative_gain_ci"][1] < 0
    assert reply.body["error"]["details"][0]["gate"] == gate
    assert (await _model(server))["predictor"] == "markov"


async def test_model_worse_than_the_served_transformer_is_refused(start, checkpoints):
    server = await _served(start)
    assert (await _reload(server, checkpoints["good"])).status == 200
    reply = await _reload(server, checkpoints["other_pattern"])
    assert reply.status == 409 and "worse than the serving transformer" in reply.body["error"]["message"]
    info = await _model(server)
    assert info["predictor"] == "transformer" and info["gate"]["serving"] == "transformer"


async def test_model_needs_a_recent_log_to_compare_on_unless_forced(start, checkpoints):
    server = await _served(start, log=False)
    await server.acme.events([{"user_id": "u1", "action": "view"}, {"user_id": "u1", "action": "search"}])
    reply = await _reload(server, checkpoints["good"])
    assert reply.status == 409 and reply.body["error"]["code"] == "model_rejected"
    assert "fewer than 500" in reply.body["error"]["message"] and '"force": true' in reply.body["error"]["message"]
    forced = await _reload(server, body={"force": True})
    assert forced.status == 200 and forced.body["predictor"] == "transformer"
    assert forced.body["gate"]["forced"] and forced.body["gate"]["figures"] == {}
    bad_body = await _reload(server, body={"force": "yes"})
    assert bad_body.status == 400


async def test_model_rollback_returns_to_the_previous_predictor_then_to_markov(start, checkpoints):
    server = await _served(start, model_poll_s=0.05)
    nothing = await server.acme.call("POST", "/v1/model/rollback")
    assert nothing.status == 409 and nothing.body["error"]["code"] == "nothing_to_roll_back"
    assert (await _reload(server, checkpoints["good"])).status == 200
    promoted = await _reload(server, checkpoints["good_again"])  # the same weights: not worse
    assert promoted.status == 200 and promoted.body["gate"]["serving"] == "transformer"
    assert promoted.body["model"]["training_seconds"] == 4321.0 and promoted.body["rollback_to"] == "transformer"
    back = await server.acme.call("POST", "/v1/model/rollback")
    assert back.status == 200 and back.body["predictor"] == "transformer"
    assert back.body["model"]["training_seconds"] == checkpoints["good"]["seconds"]
    back = await server.acme.call("POST", "/v1/model/rollback")
    assert back.status == 200 and back.body["predictor"] == "markov" and back.body["rollback_to"] is None
    assert (await server.acme.score("u0")).body["results"][0]["predicted"]["predictor"] == "markov"
    # The rolled-back file is still on disk; the watcher acts on changes only.
    await asyncio.sleep(0.5)
    assert (await _model(server))["predictor"] == "markov"
    nothing = await server.acme.call("POST", "/v1/model/rollback")
    assert nothing.status == 409 and nothing.body["error"]["message"].endswith("still serving markov")


async def test_model_history_lists_events_newest_first_and_survives_a_restart(start, checkpoints, tmp_path):
    data_dir = tmp_path / "data"
    server = await _served(start, data_dir)
    assert (await _reload(server, checkpoints["good"])).status == 200
    assert (await _reload(server, checkpoints["other_pattern"])).status == 409
    assert (await server.acme.call("POST", "/v1/model/rollback")).status == 200
    assert (await _reload(server, checkpoints["other_vocabulary"])).status == 409
    history = await _history(server)
    assert [h["event"] for h in history] == ["load_failed", "rolled_back", "rejected", "promoted"]
    assert [h["at"] for h in history] == sorted((h["at"] for h in history), reverse=True)
    promoted, rejected, rolled_back = history[3], history[2], history[1]
    assert promoted["gate"]["promote"] and promoted["predictor"] == "transformer" and promoted["stamp"]["size"] > 0
    assert not rejected["gate"]["promote"] and rejected["predictor"] == "transformer"
    assert rolled_back["stamp"] == promoted["stamp"] and rolled_back["predictor"] == "markov"
    assert (await server.globex.call("GET", "/v1/model/history")).body == {"history": []}
    await server.client.close()

    again = await start(data_dir, model_poll_s=0.05)
    assert await _history(again) == history
    await asyncio.sleep(0.3)  # the refused file on disk is not gated again after the restart
    assert await _history(again) == history and (await _model(again))["predictor"] == "markov"


async def test_model_promoted_before_a_restart_serves_at_start(start, checkpoints, tmp_path):
    data_dir = tmp_path / "data"
    server = await _served(start, data_dir)
    assert (await _reload(server, checkpoints["good"])).status == 200
    await server.client.close()
    again = await start(data_dir)
    info = await _model(again)
    assert info["predictor"] == "transformer" and info["model"]["training_seconds"] == checkpoints["good"]["seconds"]


async def test_model_written_while_the_server_was_down_is_gated_by_the_watcher(start, checkpoints, tmp_path):
    data_dir = tmp_path / "data"
    server = await _served(start, data_dir)
    await server.client.close()
    write_checkpoint(checkpoints["other_pattern"], model_path(data_dir, "acme"))
    again = await start(data_dir, model_poll_s=0.05)
    deadline = time.monotonic() + 30
    while not await _history(again) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert [h["event"] for h in await _history(again)] == ["rejected"]
    assert (await _model(again))["predictor"] == "markov"


async def test_model_with_another_vocabulary_is_refused_and_the_old_one_serves(start, checkpoints):
    server = await _served(start)
    path = model_path(server.data_dir, "acme")
    assert (await _reload(server, checkpoints["good"])).status == 200
    reply = await _reload(server, checkpoints["other_vocabulary"])
    assert reply.status == 409 and reply.body["error"]["code"] == "model_mismatch"
    assert "vocabulary" in reply.body["error"]["message"]
    info = await _model(server)
    assert info["predictor"] == "transformer" and info["last_error"]["code"] == "model_mismatch"
    await server.acme.events([{"user_id": "u1", "action": "view"}])
    assert (await server.acme.score("u1")).body["results"][0]["predicted"]["predictor"] == "transformer"
    path.write_bytes(b"half a file")
    reply = await server.acme.call("POST", "/v1/model/reload")
    assert reply.status == 422 and reply.body["error"]["code"] == "invalid_model"


async def test_model_hot_reload_under_concurrent_scoring_fails_no_request(start, checkpoints):
    server = await _served(start, model_poll_s=0.05, rate_limit_per_s=0)
    path = model_path(server.data_dir, "acme")
    users = [f"u{i}" for i in range(20)]
    loads = server.runtime.metrics.model_loads.labels("1", "loaded")  # tenants are labelled by id
    statuses, predictors = [], set()

    async def score_loop(stop):
        while not stop.is_set():
            reply = await server.acme.score(*users[:5])
            statuses.append((reply.status, reply.body["error"]["code"] if reply.status != 200 else None))
            predictors.update(r["predicted"]["predictor"] for r in reply.body.get("results", []))

    stop = asyncio.Event()
    scorers = [asyncio.create_task(score_loop(stop)) for _ in range(8)]
    for round_ in range(6):
        # Each one passes the gate: the first beats the Markov chain, the next ones equal the one they replace.
        write_checkpoint(checkpoints["good" if round_ % 2 else "good_again"], path)
        deadline = time.monotonic() + 30
        while loads._value.get() < round_ + 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    stop.set()
    await asyncio.gather(*scorers)
    assert loads._value.get() == 6, "the watcher should gate and promote every new checkpoint"
    assert statuses and {s for s, _ in statuses} == {200}, collections.Counter(statuses)
    assert predictors == {"markov", "transformer"}


async def test_model_is_dropped_when_the_vocabulary_changes(start, checkpoints):
    server = await _served(start)
    assert (await _reload(server, checkpoints["good"])).status == 200
    actions = [*CONFIG.actions, "share"]
    assert (await server.acme.call("PUT", "/v1/config", {"actions": actions})).status == 200
    info = await _model(server)
    assert info["predictor"] == "markov" and info["last_error"]["code"] == "model_mismatch"
    # What served before was trained on the old vocabulary: nothing to roll back to but the Markov chain.
    assert (await server.acme.call("POST", "/v1/model/rollback")).body["predictor"] == "markov"
    assert (await server.acme.call("POST", "/v1/model/rollback")).status == 409


async def test_model_promoted_and_rolled_back_in_a_worker_process(start, checkpoints):
    """With the engines in a worker process, the gate runs in the server and the promoted predictor travels to the
    worker that owns the tenant: its scores come from it, and a rollback takes it back."""
    server = await _served(start, workers=1)
    assert (await _reload(server, checkpoints["good"])).status == 200
    await server.acme.events([{"user_id": "u1", "action": "view", "ts": NOW - 60},
                              {"user_id": "u1", "action": "add_to_cart"}])
    assert (await server.acme.score("u1")).body["results"][0]["predicted"]["predictor"] == "transformer"
    assert (await server.acme.call("POST", "/v1/model/rollback")).status == 200
    assert (await server.acme.score("u1")).body["results"][0]["predicted"]["predictor"] == "markov"
