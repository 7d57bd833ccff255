"""A reference receiver for nudge webhooks: checks the signature, refuses stale or replayed messages,
and hands each signal to you once.

    python examples/webhook_receiver.py --secret whsec_... [--port 9000]

It needs only aiohttp. The checks, in order (Standard Webhooks):
1. ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` are present;
2. the timestamp is within 5 minutes of now (a captured message cannot be replayed later);
3. one of the ``v1,<base64>`` signatures equals base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")), where key is
   the base64 after ``whsec_`` in the subscription's secret; compared in constant time;
4. a ``webhook-id`` already processed is acknowledged again but not processed again: nudge delivers at least
   once, and retries a message under the same id.
"""
from __future__ import annotations

import argparse
import base64
import collections
import hashlib
import hmac
import json
import time
from typing import Callable

from aiohttp import web

TOLERANCE_S = 300


class Receiver:
    """Verifies and dedupes deliveries; ``signals`` holds every signal received, once each, in arrival order."""

    def __init__(self, secret: str, tolerance_s: float = TOLERANCE_S, clock: Callable[[], float] = time.time,
                 remember: int = 100_000):
        self.key = base64.b64decode(secret.removeprefix("whsec_"))
        self.tolerance_s = tolerance_s
        self.clock = clock
        self.seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.remember = remember
        self.signals: list[dict] = []
        self.duplicates = 0

    def problem(self, headers, body: bytes) -> str | None:
        """Why a delivery must be refused, or None when it is genuine and fresh."""
        msg_id = headers.get("webhook-id")
        timestamp = headers.get("webhook-timestamp")
        signatures = headers.get("webhook-signature")
        if not (msg_id and timestamp and signatures):
            return "missing webhook-id, webhook-timestamp or webhook-signature"
        try:
            sent_at = int(timestamp)
        except ValueError:
            return "webhook-timestamp is not an integer"
        if abs(self.clock() - sent_at) > self.tolerance_s:
            return "webhook-timestamp is more than 5 minutes away from now (a replay?)"
        expected = base64.b64encode(
            hmac.new(self.key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
        ).decode()
        for candidate in signatures.split():
            version, _, value = candidate.partition(",")
            if version == "v1" and hmac.compare_digest(value, expected):
                return None
        return "no valid v1 signature"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        problem = self.problem(request.headers, body)
        if problem:
            return web.json_response({"error": problem}, status=401)
        msg_id = request.headers["webhook-id"]
        if msg_id in self.seen:
            self.duplicates += 1
            return web.Response(status=204)
        self.signals.extend(json.loads(body)["signals"])
        self.seen[msg_id] = None
        if len(self.seen) > self.remember:
            self.seen.popitem(last=False)
        return web.Response(status=204)

    def app(self, path: str = "/nudge") -> web.Application:
        app = web.Application()
        app.router.add_post(path, self.handle)
        return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--secret", required=True, help="the secret POST /v1/subscriptions returned")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    receiver = Receiver(args.secret)

    async def show(request: web.Request) -> web.Response:
        before = len(receiver.signals)
        response = await receiver.handle(request)
        for signal in receiver.signals[before:]:
            print(json.dumps(signal), flush=True)
        return response

    app = web.Application()
    app.router.add_post("/nudge", show)
    web.run_app(app, port=args.port)


if __name__ == "__main__":
    main()
