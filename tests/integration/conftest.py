import asyncio
import contextlib
import http.client
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from server import ServerConfig, Store, create_app
from server.app import SERVER_KWARGS

JSON, MSGPACK = "application/json", "application/msgpack"


@dataclass
class Reply:
    status: int
    body: object
    headers: dict


class Api:
    """A tenant's view of a running app, over a real socket."""

    def __init__(self, client, key):
        self.client, self.key = client, key

    async def call(self, method, path, body=None, *, fmt=JSON, key=..., accept=None, raw=None, headers=None):
        sent = dict(headers or {})
        key = self.key if key is ... else key
        if key is not None:
            sent["Authorization"] = f"Bearer {key}"
        if accept:
            sent["Accept"] = accept
        data = raw
        if body is not None:
            data = msgpack.packb(body) if fmt == MSGPACK else json.dumps(body).encode()
        if data is not None:
            sent.setdefault("Content-Type", fmt)
        async with self.client.request(method, path, data=data, headers=sent) as resp:
            payload = await resp.read()
            kind = resp.headers.get("Content-Type", "")
            if kind.startswith(MSGPACK):
                decoded = msgpack.unpackb(payload)
            elif kind.startswith(JSON):
                decoded = json.loads(payload)
            else:
                decoded = payload.decode()
            return Reply(resp.status, decoded, resp.headers.copy())

    async def events(self, events, **kw):
        return await self.call("POST", "/v1/events", {"events": events}, **kw)

    async def score(self, *user_ids, **kw):
        return await self.call("POST", "/v1/score", {"users": [{"user_id": u} for u in user_ids]}, **kw)


@dataclass
class Server:
    app: object
    client: object
    acme: Api
    globex: Api
    data_dir: Path

    @property
    def runtime(self):
        from server.keys import RUNTIME

        return self.app[RUNTIME]


def make_tenants(data_dir: Path) -> dict[str, str]:
    store = Store(data_dir)
    try:
        existing = {t.name for t in store.tenants()}
        return {name: store.create_tenant(name)[1] for name in ("acme", "globex") if name not in existing}
    finally:
        store.close()


class NudgeTestServer(TestServer):
    """aiohttp's test server, run with the settings ``nudge serve`` uses (its own kwargs never reach the runner).

    ``run_app`` lets a handler finish when its client goes away; the test server would cancel it.
    """

    async def _make_runner(self, **kwargs):
        return await super()._make_runner(**{**kwargs, "handler_cancellation": False, **SERVER_KWARGS})


@pytest.fixture
def start(aiohttp_client, tmp_path):
    """Start the real app on a real socket with a real SQLite file; returns a Server."""
    keys: dict[str, str] = {}

    async def _start(data_dir: Path = tmp_path / "data", **settings) -> Server:
        keys.update(make_tenants(data_dir))
        config = ServerConfig(data_dir=data_dir, **{"backend": "numpy", **settings})
        app = create_app(config)
        client = await aiohttp_client(NudgeTestServer(app))
        server = Server(app, client, Api(client, keys["acme"]), Api(client, keys["globex"]), data_dir)
        await server.runtime.wait_ready()
        return server

    return _start


@contextlib.contextmanager
def served_in_thread(config: ServerConfig):
    """The real app on a real socket, served from a thread (for synchronous clients); yields its port once ready."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    state = {}

    def serve():
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(create_app(config), **SERVER_KWARGS)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
        state["port"] = runner.addresses[0][1]
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", state["port"], timeout=30)
        try:
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                break
        finally:
            conn.close()
        time.sleep(0.05)
    try:
        yield state["port"]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
