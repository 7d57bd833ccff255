"""Webhook delivery and pull, against real local HTTP receivers (the reference receiver in examples/)."""
import asyncio
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from server.delivery import NO_ANSWER

from .conftest import make_tenants
from .test_crash import free_port, start_server, wait_ready

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from webhook_receiver import Receiver  # noqa: E402

LOCAL = {"webhooks_allow_http": 1, "webhooks_allow_private": 1, "webhook_backoff_base_s": 0.05,
         "webhook_backoff_max_s": 0.2}
SIGNALLING = {"policy": {"cart_abandon_risk": "offer_discount", "purchase_likely": "none", "information_seeking": "none",
                         "needs_help": "none", "form_intent": "none"},
              "thresholds": {"cart_abandon_risk": 0.4}, "holdout_share": 0.0, "cooldown_s": 0.0, "daily_cap": 1000,
              "cart_idle_s": 5.0}  # the carts below were filled 10 s ago: abandoned already


async def make_signals(api, users):
    """One signal per user: each puts something in the cart."""
    now = time.time()
    events = [{"user_id": u, "action": a, "ts": now - 10 + i} for u in users for i, a in enumerate(["view", "add_to_cart"])]
    assert (await api.events(events)).status == 200


async def pull_all(api):
    reply = await api.call("GET", "/v1/signals?limit=1000")
    return reply.body["signals"]


class Scripted:
    """A receiver endpoint that misbehaves as told before handing over to the reference receiver."""

    def __init__(self, secret, failures=0, status=500, hang=False, delay_s=0.0):
        self.receiver = Receiver(secret)
        self.failures, self.status, self.hang, self.delay_s = failures, status, hang, delay_s
        self.requests = 0
        self.release = asyncio.Event()  # ends a hang

    async def handle(self, request):
        self.requests += 1
        await request.read()
        if self.hang:
            await self.release.wait()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.failures > 0:
            self.failures -= 1
            return web.Response(status=self.status, headers={"Retry-After": "0"})
        return await self.receiver.handle(request)


async def serve_receiver(aiohttp_server, endpoint):
    app = web.Application()
    app.router.add_post("/hook", endpoint.handle)
    server = await aiohttp_server(app)
    return str(server.make_url("/hook"))


async def subscribe(api, url, **extra):
    reply = await api.call("POST", "/v1/subscriptions", {"url": url, **extra})
    assert reply.status == 201, reply.body
    return reply.body


async def eventually(check, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_delivery_signatures_verify_with_the_documented_recipe(start, aiohttp_server):
    server = await start(**LOCAL)
    await server.acme.call("PUT", "/v1/config", SIGNALLING)
    holder = {}

    async def handle(request):
        return await holder["endpoint"].handle(request)

    app = web.Application()
    app.router.add_post("/hook", handle)
    receiver_server = await aiohttp_server(app)
    created = await subscribe(server.acme, str(receiver_server.make_url("/hook")))
    assert created["secret"].startswith("whsec_") and created["id"].startswith("sub_")
    endpoint = holder["endpoint"] = Scripted(created["secret"])
    test = await server.acme.call("POST", f"/v1/subscriptions/{created['id']}/test")
    assert test.status == 200 and test.body["delivered"] is True and test.body["status"] == 204
    assert endpoint.receiver.signals[0]["type"] == "test"
    await make_signals(server.acme, ["a", "b", "c"])
    await eventually(lambda: _has(endpoint.receiver, 4))
    sent = await pull_all(server.acme)
    assert [s["signal_id"] for s in endpoint.receiver.signals[1:]] == [s["signal_id"] for s in sent]
    # A receiver with another secret refuses every delivery: the signature really depends on the secret.
    stranger = Receiver("whsec_" + "A" * 44)
    body = json.dumps({"signals": sent}).encode()
    headers = {"webhook-id": "msg_x", "webhook-timestamp": str(int(time.time())), "webhook-signature": "v1,AAAA"}
    assert stranger.problem(headers, body) == "no valid v1 signature"
    stale = {**headers, "webhook-timestamp": str(int(time.time()) - 301)}
    assert "5 minutes" in endpoint.receiver.problem(stale, body)


async def _has(receiver, n):
    return len(receiver.signals) >= n


async def test_delivery_retries_a_failing_receiver_until_it_recovers(start, aiohttp_server):
    server = await start(**LOCAL)
    await server.acme.call("PUT", "/v1/config", SIGNALLING)
    holder = {}
    url = await serve_receiver(aiohttp_server, _Proxy(holder))
    created = await subscribe(server.acme, url)
    endpoint = holder["endpoint"] = Scripted(created["secret"], failures=4, status=500)
    await make_signals(server.acme, [f"u{i}" for i in range(5)])
    await make_signals(server.acme, [f"v{i}" for i in range(5)])
    await eventually(lambda: _has(endpoint.receiver, 10))
    assert endpoint.requests >= 5
    assert sorted(s["signal_id"] for s in endpoint.receiver.signals) == sorted(s["signal_id"] for s in await pull_all(server.acme))
    stats = (await server.acme.call("GET", "/v1/subscriptions")).body["subscriptions"][0]
    assert stats["delivery"]["delivered"] == 10 and stats["delivery"]["last_error"] == "HTTP 500"
    assert "secret" not in stats


class _Proxy:
    def __init__(self, holder):
        self.holder = holder

    async def handle(self, request):
        return await self.holder["endpoint"].handle(request)


async def test_delivery_dead_letters_after_the_retry_period_and_redelivers(start, aiohttp_server):
    server = await start(**LOCAL, webhook_retry_period_s=0.5, webhook_timeout_s=0.3)
    await server.acme.call("PUT", "/v1/config", SIGNALLING)
    holder = {}
    url = await serve_receiver(aiohttp_server, _Proxy(holder))
    created = await subscribe(server.acme, url)
    endpoint = holder["endpoint"] = Scripted(created["secret"], failures=10**6, status=503)
    await make_signals(server.acme, ["a", "b"])
    path = f"/v1/subscriptions/{created['id']}/dead-letters"

    async def dead():
        return (await server.acme.call("GET", path)).body["dead_letters"]

    await eventually(dead)
    letter = (await dead())[0]
    assert letter["signals"] == 2 and letter["state"] == "dead" and letter["last_error"] == "HTTP 503"
    assert letter["webhook_id"].startswith("msg_")
    endpoint.failures = 0
    reply = await server.acme.call("POST", f"{path}/{letter['id']}/redeliver")
    assert reply.status == 202
    await eventually(lambda: _has(endpoint.receiver, 2))
    assert (await dead())[0]["state"] == "delivered"
    again = await server.acme.call("POST", f"{path}/{letter['id']}/redeliver")
    assert again.status == 404
    report = (await server.acme.call("GET", "/v1/subscriptions")).body["subscriptions"][0]["delivery"]
    assert report["dead_lettered"] == 2 and report["dead_letters_open"] == 0


async def test_a_hanging_receiver_does_not_delay_another_tenants_deliveries(start, aiohttp_server):
    server = await start(**LOCAL, webhook_timeout_s=30.0)
    for api in (server.acme, server.globex):
        await api.call("PUT", "/v1/config", SIGNALLING)
    slow, fast = {}, {}
    slow_sub = await subscribe(server.globex, await serve_receiver(aiohttp_server, _Proxy(slow)))
    fast_sub = await subscribe(server.acme, await serve_receiver(aiohttp_server, _Proxy(fast)))
    slow["endpoint"] = Scripted(slow_sub["secret"], hang=True)
    fast["endpoint"] = Scripted(fast_sub["secret"])
    await make_signals(server.globex, [f"g{i}" for i in range(20)])
    await eventually(lambda: _positive(slow["endpoint"].requests))
    started = time.monotonic()
    await make_signals(server.acme, ["a1", "a2"])
    await eventually(lambda: _has(fast["endpoint"].receiver, 2), timeout_s=5.0)
    assert time.monotonic() - started < 5.0
    assert slow["endpoint"].receiver.signals == []  # still hanging
    slow["endpoint"].release.set()


async def _positive(n):
    return n > 0


async def test_one_tenants_hanging_subscriptions_do_not_delay_another_tenant_on_the_same_host(start, aiohttp_server):
    server = await start(**LOCAL, webhook_timeout_s=30.0)
    for api in (server.acme, server.globex):
        await api.call("PUT", "/v1/config", SIGNALLING)
    hanging, release, fast = [], asyncio.Event(), {}

    async def hang(request):
        hanging.append(request.match_info["n"])
        await release.wait()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hang/{n}", hang)
    app.router.add_post("/hook", _Proxy(fast).handle)
    receiver = await aiohttp_server(app)
    try:
        for n in range(12):
            await subscribe(server.acme, str(receiver.make_url(f"/hang/{n}")))
        fast_sub = await subscribe(server.globex, str(receiver.make_url("/hook")))
        fast["endpoint"] = Scripted(fast_sub["secret"])
        await make_signals(server.acme, ["a1"])
        await eventually(lambda: _at_least(hanging, 8))  # as many as one shared pool let through
        started = time.monotonic()
        await make_signals(server.globex, ["g1"])
        await eventually(lambda: _has(fast["endpoint"].receiver, 1), timeout_s=5.0)
        assert time.monotonic() - started < 5.0
        await eventually(lambda: _at_least(hanging, 12))  # every subscription has a connection of its own
    finally:
        release.set()


async def _at_least(items, n):
    return len(items) >= n


async def test_subscription_test_reports_no_network_detail(start, aiohttp_server, caplog):
    caplog.set_level(logging.INFO, logger="server.delivery")
    server = await start(**LOCAL, webhook_timeout_s=0.3, webhook_retry_period_s=0.5, webhook_test_interval_s=0.5)
    holder = {}
    url = await serve_receiver(aiohttp_server, _Proxy(holder))
    closed_port = free_port()
    refused = await subscribe(server.acme, f"http://127.0.0.1:{closed_port}/hook")
    hanging = await subscribe(server.acme, url)
    endpoint = holder["endpoint"] = Scripted(hanging["secret"], hang=True)
    try:
        answers = [(await server.acme.call("POST", f"/v1/subscriptions/{sub['id']}/test")).body
                   for sub in (refused, hanging)]
        # Refused and timed out read the same: the answer does not tell open, closed and filtered ports apart.
        assert [{k: v for k, v in a.items() if k != "webhook_id"} for a in answers] == [
            {"delivered": False, "status": None, "error": NO_ANSWER}] * 2
        assert any(refused["id"] in r.getMessage() and str(closed_port) in r.getMessage() for r in caplog.records)
        endpoint.hang = False
        endpoint.failures, endpoint.status = 1, 503
        await asyncio.sleep(1.0)  # past the per-subscription limit on tests
        answer = (await server.acme.call("POST", f"/v1/subscriptions/{hanging['id']}/test")).body
        assert answer["delivered"] is False and answer["status"] == 503 and answer["error"] == "HTTP 503"
        # What regular deliveries record, where the tenant can read it, is just as coarse.
        await server.acme.call("PUT", "/v1/config", SIGNALLING)
        await make_signals(server.acme, ["a"])
        letters = f"/v1/subscriptions/{refused['id']}/dead-letters"

        async def dead():
            return (await server.acme.call("GET", letters)).body["dead_letters"]

        await eventually(dead)
        assert (await dead())[0]["last_error"] == NO_ANSWER
        listed = (await server.acme.call("GET", "/v1/subscriptions")).body["subscriptions"]
        assert next(s for s in listed if s["id"] == refused["id"])["delivery"]["last_error"] == NO_ANSWER
    finally:
        endpoint.release.set()


async def test_subscription_test_is_rate_limited_per_subscription(start, aiohttp_server):
    server = await start(**LOCAL, webhook_test_interval_s=0.5)
    holder = {}
    url = await serve_receiver(aiohttp_server, _Proxy(holder))
    first, second = await subscribe(server.acme, url), await subscribe(server.acme, url)
    holder["endpoint"] = Scripted(first["secret"])
    path = "/v1/subscriptions/{}/test"
    replies = await asyncio.gather(*(server.acme.call("POST", path.format(first["id"])) for _ in range(3)))
    assert sorted(r.status for r in replies) == [200, 429, 429]
    limited = next(r for r in replies if r.status == 429)
    assert limited.body["error"]["code"] == "rate_limited" and limited.headers["Retry-After"] == "1"
    assert (await server.acme.call("POST", path.format(second["id"]))).status == 200  # its own limit
    await asyncio.sleep(0.6)
    again = await server.acme.call("POST", path.format(first["id"]))
    assert again.status == 200 and again.body["delivered"] is True


async def test_webhook_urls_to_private_addresses_are_refused_unless_allowed(start):
    server = await start()
    cases = {
        "http://example.com/hook": "https",
        "https://user:secret@example.com/hook": "credentials",
        "https://127.0.0.1/hook": "loopback",
        "https://10.0.0.8/hook": "private",
        "https://169.254.169.254/latest/meta-data": "link-local",
        "https://[::1]/hook": "loopback",
        "https://localhost:8443/hook": "loopback",
        "ftp://example.com/x": "https",
    }
    for url, reason in cases.items():
        reply = await server.acme.call("POST", "/v1/subscriptions", {"url": url})
        assert reply.status == 400 and reply.body["error"]["code"] == "invalid_url", url
        assert reason in reply.body["error"]["message"], (url, reply.body["error"]["message"])
    bad = await server.acme.call("POST", "/v1/subscriptions", {"url": "https://example.com", "types": ["spam"]})
    assert bad.status == 400 and bad.body["error"]["details"][0]["field"] == "types"
    assert (await server.acme.call("GET", "/v1/subscriptions")).body == {"subscriptions": []}


async def test_subscriptions_are_per_tenant_filtered_by_type_and_deletable(start, aiohttp_server):
    server = await start(**LOCAL)
    await server.acme.call("PUT", "/v1/config", SIGNALLING)
    holder = {}
    url = await serve_receiver(aiohttp_server, _Proxy(holder))
    only_support = await subscribe(server.acme, url, types=["proactive_support"])
    holder["endpoint"] = Scripted(only_support["secret"])
    await make_signals(server.acme, ["a"])
    assert len(await pull_all(server.acme)) == 1
    await asyncio.sleep(0.3)
    assert holder["endpoint"].receiver.signals == []  # discounts are not what it asked for
    assert (await server.globex.call("DELETE", f"/v1/subscriptions/{only_support['id']}")).status == 404
    assert (await server.acme.call("DELETE", f"/v1/subscriptions/{only_support['id']}")).status == 200
    assert (await server.acme.call("POST", f"/v1/subscriptions/{only_support['id']}/test")).status == 404


async def test_pull_two_consumers_see_every_signal_once_in_order(start):
    server = await start()
    await server.acme.call("PUT", "/v1/config", SIGNALLING)

    async def consume(seen, stop):
        cursor = ""
        while True:
            reply = await server.acme.call("GET", f"/v1/signals?after={cursor}&limit=3&wait_s=0.2")
            assert reply.status == 200
            seen.extend(s["signal_id"] for s in reply.body["signals"])
            cursor = reply.body["next"]
            if stop.is_set() and not reply.body["signals"]:
                return

    stop = asyncio.Event()
    first, second = [], []
    consumers = [asyncio.create_task(consume(first, stop)), asyncio.create_task(consume(second, stop))]
    for round_ in range(6):
        await make_signals(server.acme, [f"r{round_}-{i}" for i in range(5)])
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.gather(*consumers)
    everything = [s["signal_id"] for s in await pull_all(server.acme)]
    assert len(everything) == 30 and first == everything and second == everything


async def test_pull_long_poll_returns_when_a_signal_arrives_or_after_wait_s(start):
    server = await start()
    await server.acme.call("PUT", "/v1/config", SIGNALLING)
    head = (await server.acme.call("GET", "/v1/signals")).body["next"]
    started = time.monotonic()
    empty = await server.acme.call("GET", f"/v1/signals?after={head}&wait_s=0.4")
    assert empty.body["signals"] == [] and 0.35 <= time.monotonic() - started < 3.0
    assert empty.body["next"] == head
    poll = asyncio.create_task(server.acme.call("GET", f"/v1/signals?after={head}&wait_s=20"))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await make_signals(server.acme, ["x"])
    reply = await poll
    assert len(reply.body["signals"]) == 1 and time.monotonic() - started < 5.0
    bad = await server.acme.call("GET", "/v1/signals?after=not-a-cursor")
    assert bad.status == 400 and bad.body["error"]["details"][0]["field"] == "after"
    assert (await server.globex.call("GET", "/v1/signals")).body["signals"] == []


@pytest.mark.slow
async def test_delivery_survives_sigkill_mid_delivery_without_losing_a_signal(tmp_path, aiohttp_server):
    data_dir = tmp_path / "data"
    keys = make_tenants(data_dir)
    holder = {}
    url = await serve_receiver(aiohttp_server, _Proxy(holder))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = {k: str(v) for k, v in {**LOCAL, "webhook_batch_size": 2}.items()}
    headers = {"Authorization": f"Bearer {keys['acme']}"}
    proc = start_server(data_dir, port, tmp_path / "server.log", **settings)
    async with aiohttp.ClientSession() as session:
        try:
            await wait_ready(session, base, proc)
            async with session.put(f"{base}/v1/config", json=SIGNALLING, headers=headers) as r:
                assert r.status == 200
            async with session.post(f"{base}/v1/subscriptions", json={"url": url}, headers=headers) as r:
                secret = (await r.json())["secret"]
            holder["endpoint"] = Scripted(secret, delay_s=0.05)
            now = time.time()
            events = [{"user_id": f"k{i}", "action": a, "ts": now - 10 + j}
                      for i in range(40) for j, a in enumerate(["view", "add_to_cart"])]
            async with session.post(f"{base}/v1/events", json={"events": events}, headers=headers) as r:
                assert r.status == 200
            await eventually(lambda: _has(holder["endpoint"].receiver, 6))
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        delivered_before = len(holder["endpoint"].receiver.signals)
        proc = start_server(data_dir, port, tmp_path / "server.log", **settings)
        try:
            await wait_ready(session, base, proc)
            async with session.get(f"{base}/v1/signals?limit=1000", headers=headers) as r:
                logged = [s["signal_id"] for s in (await r.json())["signals"]]
            assert len(logged) == 40 and delivered_before < 40
            await eventually(lambda: _has(holder["endpoint"].receiver, 40), timeout_s=30.0)
            received = [s["signal_id"] for s in holder["endpoint"].receiver.signals]
            assert sorted(received) == sorted(logged)  # every one, and once each after dedupe on webhook-id
        finally:
            proc.terminate()
            proc.wait(30)
