import json
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pytest

from server import ServerConfig, Store, create_app

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


@pytest.fixture
def start(aiohttp_client, tmp_path):
    """Start the real app on a real socket with a real SQLite file; returns a Server."""
    keys: dict[str, str] = {}

    async def _start(data_dir: Path = tmp_path / "data", **settings) -> Server:
        keys.update(make_tenants(data_dir))
        config = ServerConfig(data_dir=data_dir, **{"backend": "numpy", **settings})
        app = create_app(config)
        client = await aiohttp_client(app)
        server = Server(app, client, Api(client, keys["acme"]), Api(client, keys["globex"]), data_dir)
        await server.runtime.wait_ready()
        return server

    return _start
