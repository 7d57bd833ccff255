"""Serving next-action models: fallback, reload on request and on file change, refusals, no failed request."""
import asyncio
import time

import numpy as np
import pytest

from model import EventBatch, TenantConfig
from model.predictor import write_checkpoint
from model.training import TrainSettings, train
from model.transformer import TransformerConfig
from server.models import model_path

T0 = time.time() - 1800
SMALL = TransformerConfig(n_actions=9, window=8, d_model=16, layers=1, heads=2, dropout=0.0)


def _checkpoint(config: TenantConfig, seed: int):
    rng = np.random.default_rng(seed)
    n = 400
    actions = rng.choice(len(config.actions), n)
    batch = EventBatch.build([f"u{i}" for i in rng.integers(0, 30, n)], actions, np.sort(T0 + rng.uniform(0, 3000, n)))
    settings = TrainSettings(epochs=1, patience=1, batch_size=8, seed=seed)
    return train(batch, config, settings, TransformerConfig(**{**SMALL.to_dict(), "n_actions": len(config.actions)}),
                 log=lambda line: None, show_progress=False)


@pytest.fixture(scope="module")
def checkpoints():
    other = TenantConfig(actions=("view", "add_to_cart", "purchase"), prior_means={"view": 0.2})
    return [_checkpoint(TenantConfig(), 0), _checkpoint(TenantConfig(), 1), _checkpoint(other, 2)]


async def test_model_markov_answers_until_a_model_is_loaded(start):
    server = await start()
    await server.acme.events([{"user_id": "u1", "action": "view"}])
    reply = await server.acme.score("u1")
    assert reply.body["results"][0]["predicted"]["predictor"] == "markov"
    info = await server.acme.call("GET", "/v1/model")
    assert info.body == {"predictor": "markov", "model": None, "last_error": None}
    missing = await server.acme.call("POST", "/v1/model/reload")
    assert missing.status == 404 and missing.body["error"]["code"] == "model_not_found"


async def test_model_reload_serves_the_transformer_for_known_users(start, checkpoints):
    server = await start()
    write_checkpoint(checkpoints[0], model_path(server.data_dir, "acme"))
    await server.acme.events([{"user_id": "u1", "action": "view", "ts": T0}, {"user_id": "u1", "action": "add_to_cart"}])
    reply = await server.acme.call("POST", "/v1/model/reload")
    assert reply.status == 200 and reply.body["predictor"] == "transformer"
    assert reply.body["model"]["vocabulary"] == list(TenantConfig().actions)
    results = (await server.acme.score("u1", "stranger")).body["results"]
    known, unknown = results[0]["predicted"], results[1]["predicted"]
    assert known["predictor"] == "transformer" and unknown["predictor"] == "markov"
    assert set(known["probs"]) == {*TenantConfig().actions, "session_end"}
    assert abs(sum(known["probs"].values()) - 1.0) < 1e-4
    assert 0.0 <= known["purchase_5m"] <= 1.0 and 0.0 <= known["purchase_60m"] <= 1.0
    # Another tenant has no model of its own.
    await server.globex.events([{"user_id": "u1", "action": "view"}])
    assert (await server.globex.score("u1")).body["results"][0]["predicted"]["predictor"] == "markov"


async def test_model_with_another_vocabulary_is_refused_and_the_old_one_serves(start, checkpoints):
    server = await start()
    path = model_path(server.data_dir, "acme")
    write_checkpoint(checkpoints[0], path)
    assert (await server.acme.call("POST", "/v1/model/reload")).status == 200
    write_checkpoint(checkpoints[2], path)
    reply = await server.acme.call("POST", "/v1/model/reload")
    assert reply.status == 409 and reply.body["error"]["code"] == "model_mismatch"
    assert "vocabulary" in reply.body["error"]["message"]
    info = (await server.acme.call("GET", "/v1/model")).body
    assert info["predictor"] == "transformer" and info["last_error"]["code"] == "model_mismatch"
    await server.acme.events([{"user_id": "u1", "action": "view"}])
    assert (await server.acme.score("u1")).body["results"][0]["predicted"]["predictor"] == "transformer"
    path.write_bytes(b"half a file")
    reply = await server.acme.call("POST", "/v1/model/reload")
    assert reply.status == 422 and reply.body["error"]["code"] == "invalid_model"


async def test_model_hot_reload_under_concurrent_scoring_fails_no_request(start, checkpoints):
    server = await start(model_poll_s=0.05, rate_limit_per_s=0)
    path = model_path(server.data_dir, "acme")
    users = [f"u{i}" for i in range(20)]
    await server.acme.events([{"user_id": u, "action": "view"} for u in users])
    loads = server.runtime.metrics.model_loads.labels("1", "loaded")  # tenants are labelled by id
    statuses, predictors = [], set()

    async def score_loop(stop):
        while not stop.is_set():
            reply = await server.acme.score(*users[:5])
            statuses.append(reply.status)
            predictors.update(r["predicted"]["predictor"] for r in reply.body.get("results", []))

    stop = asyncio.Event()
    scorers = [asyncio.create_task(score_loop(stop)) for _ in range(8)]
    for round_ in range(6):
        write_checkpoint(checkpoints[round_ % 2], path)
        deadline = time.monotonic() + 10
        while loads._value.get() < round_ + 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    stop.set()
    await asyncio.gather(*scorers)
    assert loads._value.get() == 6, "the watcher should load every new checkpoint"
    assert statuses and set(statuses) == {200}
    assert predictors == {"markov", "transformer"}


async def test_model_is_dropped_when_the_vocabulary_changes(start, checkpoints):
    server = await start()
    write_checkpoint(checkpoints[0], model_path(server.data_dir, "acme"))
    assert (await server.acme.call("POST", "/v1/model/reload")).status == 200
    actions = [*TenantConfig().actions, "share"]
    assert (await server.acme.call("PUT", "/v1/config", {"actions": actions})).status == 200
    info = (await server.acme.call("GET", "/v1/model")).body
    assert info["predictor"] == "markov" and info["last_error"]["code"] == "model_mismatch"


async def test_model_is_loaded_at_start(start, checkpoints, tmp_path):
    data_dir = tmp_path / "data"
    write_checkpoint(checkpoints[1], model_path(data_dir, "acme"))
    server = await start(data_dir)
    assert (await server.acme.call("GET", "/v1/model")).body["predictor"] == "transformer"
