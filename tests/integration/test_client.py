"""The Python client (client/, package nudge_client) against a real ``nudge serve`` process: the README's quick
start as written, exactly-once delivery through a SIGKILL and restart and through a storm of 503s and lost answers
(a real proxy in front of the server), the async client with long-poll pull, feedback and a verified webhook, and
a disk spool that outlives a client whose server was down.

"Exactly once" is checked where it is stored: the event log (SQLite) holds every tracked ``event_id`` once and
nothing else, and sending everything again is answered as all duplicates.
"""
import asyncio
import contextlib
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import aiohttp
import httpx
import pytest
from aiohttp import web

from loadtests._server_proc import free_port, log_tail, start_server, wait_ready
from server.event_log import logged_events
from nudge_client import ApiError, AsyncClient, Client, RetryPolicy, verify_webhook

from .conftest import make_tenants

pytestmark = pytest.mark.slow

def _readme_quick_start() -> str:
    """The README's client quick start, verbatim: its indented block that starts with the import."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    lines = text[text.index("    from nudge_client import Client\n"):].splitlines()
    block = []
    for line in lines:
        if not line.startswith("    "):
            break
        block.append(line[4:])
    return "\n".join(block) + "\n"


# The test substitutes the server's URL and defines ``key``.
QUICK_START = _readme_quick_start()
# Retries until acknowledged, never waiting long: the tests wait for the server, not for the backoff.
PATIENT = RetryPolicy(base_s=0.05, max_s=0.5, max_retries=None)
SIGNALLING = {"policy": {"cart_abandon_risk": "offer_discount", "purchase_likely": "none", "information_seeking": "none",
                         "needs_help": "none", "form_intent": "none"},
              "thresholds": {"cart_abandon_risk": 0.4}, "holdout_share": 0.0, "daily_cap": 1000,
              "cooldown_s": 3600.0,  # one signal per user: the idle-cart sweep makes no second one
              "cart_idle_s": 5.0}  # carts filled 10 s ago count as abandoned already


class Served:
    """A ``nudge serve`` process on a data dir and port; it can be killed and started again on both."""

    def __init__(self, tmp: Path, port: int | None = None, **settings):
        self.data_dir, self.log_path = tmp / "data", tmp / "server.log"
        self.keys = make_tenants(self.data_dir)
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        # No shedding of scores on a late event loop: these tests run on shared machines, and are not about it
        # (the client retries a 503 score only three times). Ingest shedding stays: the client rides it out.
        self.settings = {"max_loop_lag_ms": "0", "max_queue_delay_ms": "0", **settings}
        self.proc = None

    def start(self):
        self.proc = start_server(self.data_dir, self.port, self.log_path, **self.settings)

        async def ready():
            async with aiohttp.ClientSession() as session:
                await wait_ready(session, self.base, self.proc)

        asyncio.run(ready())

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)

    def stored(self, user_prefix: str) -> list[str]:
        """The event ids the event log holds for users whose id starts with ``user_prefix``."""
        db = sqlite3.connect(self.data_dir / "nudge.sqlite3", timeout=30)
        try:
            return [event_id for _, user_id, event_id, _ in logged_events(db) if user_id.startswith(user_prefix)]
        finally:
            db.close()


@contextlib.contextmanager
def serving(tmp: Path, **settings):
    served = Served(tmp, **settings)
    try:
        served.start()
        yield served
    except BaseException:
        print(log_tail(served.log_path))
        raise
    finally:
        served.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the tests that do not kill it; webhooks may go to local http receivers."""
    with serving(tmp_path_factory.mktemp("client"), webhooks_allow_http="1", webhooks_allow_private="1") as served:
        yield served


def assert_exactly_once(served: Served, prefix: str, tracked: list[dict]):
    """The log holds each tracked event once and nothing else of these users; sending them all again is answered
    as all duplicates."""
    stored = served.stored(prefix)
    assert len(stored) == len(tracked), f"{len(stored)} events stored for {len(tracked)} tracked"
    assert Counter(stored) == Counter(e["event_id"] for e in tracked)
    with Client(served.base, served.keys["acme"], batch_size=500, retry=PATIENT) as again:
        for e in tracked:
            again.track(**e)
        assert again.flush(timeout=60)
    assert again.stats.duplicates == len(tracked) and again.stats.sent == 0 and again.stats.failed == 0


# ---- a) the quick start ---------------------------------------------------------------------------------------

def test_the_readme_quick_start_runs_as_written(server, tmp_path):
    code = f"key = {server.keys['acme']!r}\n" + QUICK_START.replace('"http://localhost:8080"', repr(server.base))
    assert code.count(server.base) == 1
    # A fresh interpreter outside the repository: the installed package, its import path and its exit hook.
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    score = float(out.stdout.strip())
    assert 0.0 <= score <= 1.0
    with Client(server.base, server.keys["acme"]) as nudge:
        view = nudge.user("u-42")
    assert [a.action for a in view.recent_actions] == ["add_to_cart"]


# ---- b) SIGKILL and restart mid-stream --------------------------------------------------------------------------

def test_a_server_killed_and_restarted_mid_stream_gets_every_event_once(tmp_path):
    with serving(tmp_path) as served:
        nudge = Client(served.base, served.keys["acme"], retry=PATIENT)
        outage = {}

        def kill_and_restart():
            try:
                deadline = time.monotonic() + 60
                while nudge.stats.sent < 1000:  # requests are on their way all the time: the kill lands mid-stream
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"only {nudge.stats.sent} events sent in 60 s")
                    time.sleep(0.002)
                outage["sent_before"] = nudge.stats.sent
                served.kill()
                served.start()  # the same port and data dir
            except BaseException as exc:
                outage["error"] = exc

        killer = threading.Thread(target=kill_and_restart)
        killer.start()
        tracked = []
        now = time.time()
        try:
            for i in range(5000):
                e = {"user_id": f"crash-{i % 97}", "action": ("view", "search", "add_to_cart")[i % 3],
                     "ts": now - 60 + i * 0.01}
                e["event_id"] = nudge.track(**e)
                tracked.append(e)
                if i % 50 == 49:
                    time.sleep(0.01)  # a steady stream while the server goes down and comes back
            killer.join(120)
            assert "error" not in outage, f"the kill and restart failed: {outage.get('error')!r}"
            assert nudge.flush(timeout=120)
        finally:
            killer.join(120)
            nudge.close(timeout=1)
        stats = nudge.stats
        assert outage["sent_before"] < 5000 and stats.retries > 0
        assert stats.failed == 0 and stats.dropped == 0 and stats.pending == 0
        assert stats.sent + stats.duplicates == 5000
        assert_exactly_once(served, "crash-", tracked)


# ---- c) a storm of 503s, lost answers and resets ------------------------------------------------------------------

class StormProxy:
    """A real HTTP proxy in front of nudge that turns event batches away, or loses the answer after the server
    stored them. Each ``POST /v1/events`` draws a card from a shuffled deck of 20, dealt again when it runs out:
    4 answer 503 with ``Retry-After: 1`` (not forwarded), 3 forward and then answer 503 (the answer is lost), 2
    forward and then drop the connection, 11 pass through. Nearly half the requests fail, every kind in each deck."""

    DECK = ["retry_after"] * 4 + ["lost"] * 3 + ["reset"] * 2 + ["passed"] * 11

    def __init__(self, upstream: str, seed: int = 11):
        self.upstream, self.rng, self.cards = upstream, random.Random(seed), []
        self.log: list[tuple[float, str]] = []  # (when, what) per events request: arrivals and answers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.path != "/v1/events":
            return await self.forward(request, body)
        self.log.append((time.monotonic(), "arrived"))
        if not self.cards:
            self.cards = self.rng.sample(self.DECK, len(self.DECK))
        card = self.cards.pop()
        if card == "retry_after":
            self.log.append((time.monotonic(), "retry_after"))
            return web.json_response({"error": {"code": "overloaded", "message": "storm", "details": []}},
                                     status=503, headers={"Retry-After": "1"})
        answer = await self.forward(request, body)
        if answer.status != 200:  # the server's own refusal (say, ingest shed on a busy machine): passed on as is
            self.log.append((time.monotonic(), "upstream"))
            return answer
        if card == "lost":
            self.log.append((time.monotonic(), "lost"))
            return web.Response(status=503, text="upstream answer lost")
        if card == "reset":
            self.log.append((time.monotonic(), "reset"))
            request.transport.abort()  # the client sees the connection close with no answer
            return web.Response(status=204)
        self.log.append((time.monotonic(), "passed"))
        return answer

    async def forward(self, request: web.Request, body: bytes) -> web.Response:
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("authorization", "content-type", "accept", "content-encoding")}
        async with self.session.request(request.method, self.upstream + request.path_qs, data=body,
                                        headers=headers) as r:
            return web.Response(status=r.status, body=await r.read(),
                                headers={k: v for k, v in r.headers.items()
                                         if k.lower() in ("content-type", "retry-after", "x-request-id")})

    @contextlib.contextmanager
    def running(self):
        loop = asyncio.new_event_loop()
        started = threading.Event()
        runner_box = {}

        async def setup():
            self.session = aiohttp.ClientSession()
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self.handle)
            runner = runner_box["runner"] = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()

        def serve():
            asyncio.set_event_loop(loop)
            loop.run_until_complete(setup())
            started.set()
            loop.run_forever()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        assert started.wait(30)
        try:
            yield self
        finally:
            async def cleanup():
                await runner_box["runner"].cleanup()
                await self.session.close()

            asyncio.run_coroutine_threadsafe(cleanup(), loop).result(30)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(30)
            loop.close()


def test_a_storm_of_503s_and_lost_answers_still_delivers_every_event_once(server):
    proxy = StormProxy(server.base)
    tracked = []
    with proxy.running():
        with Client(proxy.url, server.keys["acme"], retry=PATIENT) as nudge:
            now = time.time()
            for i in range(1500):
                e = {"user_id": f"storm-{i % 31}", "action": "view", "ts": now - 30 + i * 0.01, "item_id": f"i{i % 7}"}
                e["event_id"] = nudge.track(**e)
                tracked.append(e)
            assert nudge.flush(timeout=120)
            # The typed calls go through the same proxy (only event batches are turned away).
            assert nudge.score(["storm-1"])[0].user_id == "storm-1"
    stats = nudge.stats
    kinds = Counter(what for _, what in proxy.log)
    assert kinds["arrived"] >= 20  # at least one whole deck: every kind of trouble came
    assert kinds["retry_after"] and kinds["lost"] and kinds["reset"]
    assert stats.retries == kinds["arrived"] - kinds["passed"]  # every request that did not pass was sent again
    assert stats.failed == 0 and stats.dropped == 0 and stats.sent + stats.duplicates == 1500
    assert stats.duplicates > 0  # lost answers were sent again, and the server knew them
    # Retry-After was honoured: after each such answer, the next batch came no sooner than 1 s later.
    for (answered, what), (arrived, _) in zip(proxy.log, proxy.log[1:]):
        if what == "retry_after":
            assert arrived - answered >= 1.0, f"came back after {arrived - answered:.3f} s"
    assert_exactly_once(server, "storm-", tracked)


# ---- d) the async client: events, scores, long-poll pull, feedback, a verified webhook ----------------------------

class Hook:
    """A webhook receiver that keeps what verify_webhook accepts and the reason of what it refuses."""

    def __init__(self):
        self.secret, self.signals, self.refused = None, [], []

    async def handle(self, request: web.Request) -> web.Response:
        try:
            body = verify_webhook(self.secret, request.headers, await request.read())
        except Exception as exc:
            self.refused.append(repr(exc))
            return web.Response(status=400)
        self.signals += body["signals"]
        return web.Response(status=204)


async def test_async_client_tracks_scores_pulls_a_long_polled_signal_and_reports_feedback(server, aiohttp_server):
    key = server.keys["globex"]
    auth = {"Authorization": f"Bearer {key}"}
    hook = Hook()
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    receiver = await aiohttp_server(app)
    async with httpx.AsyncClient(base_url=server.base, headers=auth) as admin:
        assert (await admin.put("/v1/config", json=SIGNALLING)).status_code == 200
        created = await admin.post("/v1/subscriptions", json={"url": str(receiver.make_url("/hook"))})
        assert created.status_code == 201, created.text
        hook.secret = created.json()["secret"]

    async with AsyncClient(server.base, key) as nudge:
        # The basic flow.
        ids = [await nudge.track(f"async-{n}", "view", item_id=f"sku-{n}") for n in range(120)]
        assert await nudge.flush(timeout=30)
        assert nudge.stats.sent == 120 and len(set(ids)) == 120
        [result] = await nudge.score(["async-3"])
        assert result.user_id == "async-3" and 0.0 <= result.score <= 1.0
        assert (await nudge.user("async-3")).recent_actions[0].action == "view"

        # Long poll: it waits, and the signal the server makes meanwhile wakes it.
        start = await nudge.signals()
        started = time.monotonic()
        poll = asyncio.create_task(nudge.signals(after=start.next, wait_s=20))
        await asyncio.sleep(0.5)
        assert not poll.done()
        now = time.time()
        await nudge.track("carter", "view", ts=now - 10)
        await nudge.track("carter", "add_to_cart", ts=now - 9, item_id="sku-9")
        await nudge.flush(timeout=30)
        page = await asyncio.wait_for(poll, 25)
        assert time.monotonic() - started < 15
        [sig] = page.signals
        assert sig.user_id == "carter" and sig.type == "offer_discount" and sig.intent == "cart_abandon_risk"
        assert page.next != start.next
        # Nothing new after the cursor: a short poll waits its time and comes back empty, the cursor unchanged.
        empty = await nudge.signals(after=page.next, wait_s=0.3)
        assert empty.signals == [] and empty.next == page.next

        # Feedback on it is accepted; on a signal that does not exist it is refused.
        assert (await nudge.feedback(sig.signal_id, "received")).accepted == 1
        assert (await nudge.feedback(sig.signal_id, "clicked")).accepted == 1
        with pytest.raises(ApiError) as refused:
            await nudge.feedback("sig_does_not_exist", "shown")
        assert refused.value.status == 400 and refused.value.code == "invalid_feedback"

        # The same signal came by webhook, and verify_webhook accepted the server's signature.
        deadline = time.monotonic() + 20
        while not hook.signals and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert [s["signal_id"] for s in hook.signals] == [sig.signal_id] and not hook.refused


# ---- e) the disk spool outlives a client whose server was down ----------------------------------------------------

def test_events_spooled_while_the_server_was_down_are_delivered_by_the_next_client(tmp_path):
    served = Served(tmp_path)  # not started yet: nothing listens on its port
    spool = tmp_path / "spool"
    nudge = Client(served.base, served.keys["acme"], spool_dir=spool, retry=PATIENT)
    tracked = []
    now = time.time()
    for i in range(250):
        e = {"user_id": f"spool-{i % 13}", "action": "search", "ts": now - 5 + i * 0.01, "query": f"q{i}"}
        e["event_id"] = nudge.track(**e)
        tracked.append(e)
    assert not nudge.flush(timeout=1.0)
    nudge.close(timeout=0.5)
    assert nudge.stats.sent == 0 and nudge.stats.dropped == 0 and nudge.stats.pending == 250
    assert nudge.stats.spooled == 3 and len(list(spool.glob("*.batch"))) == 3

    try:
        served.start()
        with Client(served.base, served.keys["acme"], spool_dir=spool, retry=PATIENT) as later:
            assert later.stats.restored == 250
            assert later.flush(timeout=60)
        assert later.stats.sent == 250 and later.stats.pending == 0 and later.stats.failed == 0
        assert not list(spool.glob("*.batch"))
        assert_exactly_once(served, "spool-", tracked)
    except BaseException:
        print(log_tail(served.log_path))
        raise
    finally:
        served.stop()
