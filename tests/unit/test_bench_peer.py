"""The LitServe peer of the benchmark: its engine, its batching of requests of many users, its msgpack codec."""
from __future__ import annotations

import asyncio
import json
import random

import msgpack
import pytest

pytest.importorskip("litserve", reason="the bench extra (LitServe) is not installed")

from loadtests.bodies import events_body, score_body  # noqa: E402
from loadtests.litserve_peer import MsgpackToJson, ScoreAPI  # noqa: E402


@pytest.fixture(scope="module")
def api(tmp_path_factory) -> ScoreAPI:
    rng = random.Random(0)
    preload = tmp_path_factory.mktemp("peer") / "preload.msgpack"
    preload.write_bytes(msgpack.packb([events_body(rng, 1000, False) for _ in range(3)]))
    api = ScoreAPI(str(preload), "numpy", max_batch_size=64, batch_timeout=0.002, api_path="/v1/score")
    api.setup("cpu")
    return api


def test_setup_replays_the_preloaded_events(api: ScoreAPI):
    assert api.preloaded_events == 3000
    assert len(api.engine.windows.index) > 0


def test_a_batch_of_requests_answers_each_request_its_own_users(api: ScoreAPI):
    rng = random.Random(1)
    requests = [msgpack.unpackb(score_body(rng, n)) for n in (1, 100, 3)]
    inputs = [api.decode_request(r) for r in requests]
    answers = api.unbatch(api.predict(api.batch(inputs)))
    assert [len(a) for a in answers] == [1, 100, 3]
    for request, answer in zip(requests, answers):
        assert [row["user_id"] for row in answer] == [u["user_id"] for u in request["users"]]
        assert all(0.0 <= row["score"] <= 1.0 and row["signal"] is None for row in answer)
    # Batching changes no score: the same user alone scores the same.
    alone = api.predict(api.batch([inputs[1][:1]]))[0][0]
    assert alone["score"] == pytest.approx(answers[1][0]["score"])


def test_the_answer_is_msgpack(api: ScoreAPI):
    response = api.encode_response([{"user_id": "u1", "score": 0.5}])
    assert response.media_type == "application/msgpack"
    assert msgpack.unpackb(response.body) == {"results": [{"user_id": "u1", "score": 0.5}]}


def test_the_middleware_hands_litserve_json():
    seen = {}

    async def app(scope, receive, send):
        seen["headers"] = dict(scope["headers"])
        seen["body"] = (await receive())["body"]

    body = score_body(random.Random(2), 5)
    chunks = [{"type": "http.request", "body": body[:10], "more_body": True},
              {"type": "http.request", "body": body[10:], "more_body": False}]

    async def receive():
        return chunks.pop(0)

    scope = {"type": "http", "method": "POST", "headers": [(b"content-type", b"application/msgpack")]}
    asyncio.run(MsgpackToJson(app)(scope, receive, None))
    assert json.loads(seen["body"]) == msgpack.unpackb(body)
    assert seen["headers"][b"content-type"] == b"application/json"
    assert int(seen["headers"][b"content-length"]) == len(seen["body"])
