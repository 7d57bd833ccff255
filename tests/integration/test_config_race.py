"""A config change is ordered with ingest: it applies whole or is refused, and the log never outgrows it."""
import asyncio
import json
import sqlite3
import time

from model import DEFAULT_ACTIONS, TenantConfig
from server.event_log import logged_events
from model.events import ConfigChanged
from server.validation import parse_events


def logged_but_unconfigured(data_dir) -> set[str]:
    db = sqlite3.connect(data_dir / "nudge.sqlite3")
    try:
        config = json.loads(db.execute("SELECT config FROM tenants WHERE name = 'acme'").fetchone()[0])
        logged = {action for tenant, _, _, action in logged_events(db) if tenant == 1}
    finally:
        db.close()
    return logged - set(config["actions"])


def with_wishlist(on: bool) -> dict:
    return {"actions": list(DEFAULT_ACTIONS) + (["wishlist"] if on else [])}


async def test_removing_an_action_while_its_events_arrive_never_splits_log_and_config(start):
    s = await start()
    statuses = {"put": [], "ingest": []}
    for round_ in range(12):
        assert (await s.acme.call("PUT", "/v1/config", with_wishlist(True))).status == 200

        async def send(i):
            r = await s.acme.events([{"user_id": f"u{i}", "action": "wishlist", "event_id": f"r{round_}-{i}"}])
            statuses["ingest"].append((r.status, r.body))

        async def remove():
            await asyncio.sleep(0.0005 * round_)
            r = await s.acme.call("PUT", "/v1/config", with_wishlist(False))
            statuses["put"].append((r.status, r.body))

        await asyncio.gather(*(send(i) for i in range(8)), remove())
        assert logged_but_unconfigured(s.data_dir) == set(), statuses
    codes = {status for status, _ in statuses["put"]} | {status for status, _ in statuses["ingest"]}
    assert codes <= {200, 400, 409}, statuses
    refused = [body["error"]["code"] for status, body in statuses["put"] + statuses["ingest"] if status == 409]
    assert set(refused) <= {"config_conflict", "config_changed"}
    await s.client.close()
    s2 = await start()  # and the next start recovers the tenant
    assert s2.runtime.recovery.unavailable_tenants == 0
    assert (await s2.acme.score("u1")).status == 200


async def test_a_batch_validated_before_a_config_change_is_recoded_or_refused_whole(start):
    s = await start()
    runtime = s.runtime
    assert (await s.acme.call("PUT", "/v1/config", {**with_wishlist(True), "segments": ["vip"]})).status == 200
    state = runtime.tenants[1]
    old, now = state.config, time.time()
    keeps = parse_events({"events": [{"user_id": "k", "action": "purchase", "context": {"segment": "vip"}}]},
                         old, now, 100)
    loses = parse_events({"events": [{"user_id": "w", "action": "view"}, {"user_id": "w", "action": "wishlist"}]},
                         old, now, 100)
    # Reorder the vocabulary and drop 'wishlist': both batches were validated under the old codes.
    actions = ["purchase", *[a for a in DEFAULT_ACTIONS if a != "purchase"]]
    new = TenantConfig.from_dict({**old.to_dict(), "actions": actions})
    change = asyncio.ensure_future(runtime.put_config(state, new))
    await asyncio.sleep(0)  # the change is queued ahead of the two batches below
    results = await asyncio.gather(runtime.ingest(state, keeps), runtime.ingest(state, loses), change,
                                   return_exceptions=True)
    assert results[0] == (1, 0)
    assert isinstance(results[1], ConfigChanged) and "wishlist" in str(results[1])
    assert results[2] is None
    assert (await s.acme.call("GET", "/v1/config")).body["actions"] == actions
    user = (await s.acme.call("GET", "/v1/users/k")).body
    assert [a["action"] for a in user["recent_actions"]] == ["purchase"]  # re-coded, not mislabelled
    assert (await s.acme.call("GET", "/v1/users/w")).status == 404  # nothing of the refused batch
