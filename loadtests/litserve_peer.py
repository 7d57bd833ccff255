"""The peer in ``loadtests.bench --peers``: nudge's scoring work served by LitServe, the batching inference server a
Python user would pick instead of writing one.

    python -m loadtests.litserve_peer --port 9200 --preload BODIES.msgpack [--backend numpy] [--workers 1]
                                      [--max-batch-size 1024] [--batch-timeout-ms 2]

Each worker builds the engine nudge serves (``model.Engine`` under the default ``TenantConfig``, on ``--backend``)
and replays into it the ingest bodies in ``--preload`` (a msgpack list of the very bodies the benchmark sent to
nudge), through nudge's own validation. ``POST /v1/score`` takes nudge's msgpack body ``{"users": [{"user_id":
...}]}`` and answers ``{"results": [...]}`` in msgpack: per user the engine's score and next-action prediction
(``model.decisions.predict``, in ``core.score_rows.result_rows``' shape), with no signal decision: less work than
nudge does, which decides signals and writes them to its log.

LitServe batches requests, not users: ``batch`` joins the user lists of up to ``--max-batch-size`` requests that
arrived within ``--batch-timeout-ms`` into one engine call, and ``unbatch`` splits the answer back per request.
LitServe reads request bodies as JSON: a small ASGI middleware turns the msgpack body into JSON first (tens of
microseconds for 100 users). ZeroMQ carries requests between LitServe's processes (``fast_queue``, its setting
for high request rates). Needs the ``bench`` extra (``pip install -e .[bench]``).
"""
from __future__ import annotations

import argparse
import json
import time

import msgpack
import numpy as np

import litserve as ls
from fastapi import Response

MSGPACK = "application/msgpack"


class MsgpackToJson:
    """ASGI middleware: a msgpack POST body reaches LitServe as the equivalent JSON."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return await self.app(scope, receive, send)
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        try:
            body = json.dumps(msgpack.unpackb(b"".join(chunks))).encode()
        except (ValueError, TypeError, msgpack.UnpackException):
            await send({"type": "http.response.start", "status": 400,
                        "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"the body must be msgpack"})
            return
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app({**scope, "headers": headers}, replay, send)


class ScoreAPI(ls.LitAPI):
    """nudge's engine behind LitServe: one engine call per batch of requests."""

    def __init__(self, preload: str, backend: str, **kwargs):
        super().__init__(**kwargs)
        self.preload = preload
        self.backend = backend

    def setup(self, device) -> None:
        from model import Engine, TenantConfig
        from model.decisions import predict
        from core.score_rows import result_rows
        from server.validation import parse_events

        self._predict, self._rows = predict, result_rows
        config = TenantConfig()
        self.engine = Engine(config, backend=self.backend)
        with open(self.preload, "rb") as fh:
            bodies = msgpack.unpackb(fh.read())
        seq = 0
        for body in bodies:  # as nudge applies them: validated, in order, with increasing log sequence numbers
            batch = parse_events(msgpack.unpackb(body), config, time.time(), max_items=10_000)
            self.engine.apply(batch, np.arange(seq + 1, seq + 1 + len(batch)))
            seq += len(batch)
        self.preloaded_events = seq

    def decode_request(self, request, **kwargs) -> list[str]:
        return [str(u["user_id"]) for u in request["users"]]

    def batch(self, inputs: list[list[str]]) -> list[list[str]]:
        return inputs  # predict joins them: one engine call for all the users of the batch's requests

    def predict(self, x: list[list[str]], **kwargs) -> list[list[dict]]:
        user_ids = [uid for ids in x for uid in ids]
        prediction = self._predict(self.engine, None, user_ids, time.time())
        none = [None] * len(user_ids)
        rows = self._rows(self.engine.config.actions, user_ids, prediction, none)
        out, start = [], 0
        for ids in x:
            out.append(rows[start:start + len(ids)])
            start += len(ids)
        return out

    def unbatch(self, output: list[list[dict]]) -> list[list[dict]]:
        return output

    def encode_response(self, output: list[dict], **kwargs) -> Response:
        return Response(content=msgpack.packb({"results": output}), media_type=MSGPACK)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--preload", required=True, help="a msgpack list of ingest bodies to replay into the engine")
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--workers", type=int, default=1, help="inference workers (LitServe's workers_per_device)")
    parser.add_argument("--max-batch-size", type=int, default=1024, help="most requests in one batch")
    parser.add_argument("--batch-timeout-ms", type=float, default=2.0, help="longest a batch waits to fill")
    parser.add_argument("--no-fast-queue", action="store_true", help="LitServe's multiprocessing queues, not ZeroMQ")
    args = parser.parse_args()
    api = ScoreAPI(args.preload, args.backend, max_batch_size=args.max_batch_size,
                   batch_timeout=args.batch_timeout_ms / 1000, api_path="/v1/score")
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=args.workers, timeout=30,
                          middlewares=[MsgpackToJson], fast_queue=not args.no_fast_queue)
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
