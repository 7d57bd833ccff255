"""`nudge serve` tunes the garbage collector for ingest and freezes what recovery built; /metrics shows both."""
import re

import aiohttp
import msgpack

from loadtests._server_proc import free_port, start_server, wait_ready
from model import TenantConfig
from server import Store


def _gauge(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{name}{re.escape(labels)} (\S+)$", text, re.M)
    assert match, f"{name}{labels} not in /metrics"
    return float(match.group(1))


async def test_serve_freezes_the_recovered_state_and_counts_collection_time(tmp_path):
    data_dir, port, log_path = tmp_path / "data", free_port(), tmp_path / "server.log"
    store = Store(data_dir)
    _, key = store.create_tenant("acme", TenantConfig())
    store.close()
    proc = start_server(data_dir, port, log_path)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, base, proc)
            headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/msgpack"}
            for b in range(5):
                body = msgpack.packb({"events": [{"user_id": f"u{i}", "action": "view", "item_id": f"i{i % 97}"}
                                                 for i in range(b * 1000, (b + 1) * 1000)]})
                async with session.post(f"{base}/v1/events", data=body, headers=headers) as r:
                    assert r.status == 200, await r.text()
            async with session.get(f"{base}/metrics") as r:
                text = await r.text()
        assert _gauge(text, "nudge_gc_frozen_objects") > 10_000  # the interpreter, the libraries and the app
        spent = [_gauge(text, "nudge_gc_collection_seconds", f'{{generation="{g}"}}') for g in range(3)]
        assert all(s >= 0 for s in spent) and sum(spent) > 0  # 5,000 events allocate enough for a collection
        assert "objects frozen out of the garbage collector" in log_path.read_text()
    finally:
        proc.terminate()
        proc.wait(30)
