"""Nothing bricks a restart: damaged snapshots, a tenant that cannot recover, erasures racing snapshots."""
import asyncio
import json
import sqlite3
import time

from server import Store
from server.snapshots import journal_path, read_journal, snapshot_path

NOW = time.time


def view(uid, action="view", **extra):
    return {"user_id": uid, "action": action, **extra}


async def crash(server) -> None:
    """Stop the app without the final snapshot a clean stop writes: what a SIGKILL leaves on disk."""
    runtime = server.runtime

    async def no_snapshot():
        return None

    runtime.snapshot_all = no_snapshot
    await server.client.close()


async def test_a_torn_snapshot_is_set_aside_and_the_log_rebuilds_the_tenant(start):
    s = await start(snapshot_interval_s=3600.0)
    await s.acme.events([view(f"u{i}", event_id=f"e{i}") for i in range(20)])
    await s.globex.events([view("g1")])
    before = (await s.acme.call("GET", "/v1/weights")).body
    await s.client.close()  # writes both snapshots
    path = snapshot_path(s.data_dir, 1)
    path.write_bytes(path.read_bytes()[:300])  # torn in the middle of the archive

    s2 = await start()
    assert (await s2.acme.call("GET", "/v1/weights")).body == before  # rebuilt whole from the log
    assert (await s2.globex.call("GET", "/v1/users/g1")).status == 200
    ready = (await s2.acme.call("GET", "/readyz", key=None)).body
    assert ready["ready"] and ready["recovery"]["snapshots_set_aside"] == 1
    assert ready["recovery"]["from_snapshots"] == 1 and ready["recovery"]["unavailable_tenants"] == 0
    aside = list(path.parent.glob("tenant-1.npz.unreadable-*"))
    assert len(aside) == 1 and len(aside[0].read_bytes()) == 300
    assert "nudge_snapshots_unreadable_total 1.0" in (await s2.acme.call("GET", "/metrics", key=None)).body
    await s2.client.close()
    s3 = await start()  # the next start is clean again
    assert s3.runtime.recovery.snapshots_set_aside == 0 and s3.runtime.recovery.from_snapshots == 2


async def test_one_tenant_that_cannot_recover_answers_503_and_the_others_serve(start):
    s = await start()
    await s.acme.events([view("a1"), view("a2", "purchase")])
    await s.globex.events([view("g1")])
    await s.client.close()
    # A log the stored config cannot describe: what a config race used to leave behind.
    db = sqlite3.connect(s.data_dir / "nudge.sqlite3")
    config = json.loads(db.execute("SELECT config FROM tenants WHERE name = 'acme'").fetchone()[0])
    config["actions"] = [a for a in config["actions"] if a != "purchase"]
    config["conversion_action"] = "add_to_cart"
    config["prior_means"].pop("purchase", None)
    db.execute("UPDATE tenants SET config = ? WHERE name = 'acme'", (json.dumps(config),))
    db.commit()
    db.close()
    for path in (s.data_dir / "snapshots").iterdir():
        path.unlink()

    s2 = await start()
    ready = await s2.acme.call("GET", "/readyz", key=None)
    assert ready.status == 200 and ready.body["recovery"]["unavailable_tenants"] == 1
    r = await s2.acme.score("a1")
    assert r.status == 503 and r.body["error"]["code"] == "tenant_unavailable"
    assert "purchase" in r.body["error"]["message"] and r.headers["Retry-After"] == "30"
    assert (await s2.globex.score("g1")).status == 200
    assert (await s2.globex.events([view("g2")])).status == 200
    assert "nudge_tenant_recovery_failures_total 1.0" in (await s2.acme.call("GET", "/metrics", key=None)).body


async def test_erasure_journals_the_user_instead_of_rewriting_the_snapshot(start):
    s = await start(snapshot_interval_s=3600.0)
    await s.acme.events([view("gone", event_id="g1"), view("gone", "add_to_cart"), view("stay")])
    await s.runtime.snapshot_all()
    path = snapshot_path(s.data_dir, 1)
    written = path.stat()
    r = await s.acme.call("DELETE", "/v1/users/gone")
    assert r.status == 200 and r.body["erased"] and r.body["events_deleted"] == 2
    assert path.stat().st_mtime_ns == written.st_mtime_ns and path.stat().st_ino == written.st_ino
    assert read_journal(path) == ["gone"]
    await crash(s)

    s2 = await start()  # the old snapshot still holds the user; its journal drops it
    assert s2.runtime.recovery.from_snapshots == 1
    assert (await s2.acme.call("GET", "/v1/users/gone")).status == 404
    assert (await s2.acme.call("GET", "/v1/users/stay")).status == 200
    await s2.runtime.snapshot_all()  # the next snapshot no longer holds the user, and ends the journal
    assert not journal_path(path).exists()
    await crash(s2)
    s3 = await start()
    assert (await s3.acme.call("GET", "/v1/users/gone")).status == 404


async def test_erased_users_leave_no_bytes_in_the_database_or_its_write_ahead_log(start):
    s = await start()
    await s.acme.events([view(f"crowd-{i}", item_id=f"item-{i}") for i in range(300)])
    await s.acme.events([view("victim-7d1f", item_id="secret-item-9c2e") for _ in range(5)])
    # Also in one logged batch with another user, whose events stay.
    await s.acme.events([view("victim-7d1f", item_id="secret-item-9c2e", event_id="v-1"),
                         view("neighbour", event_id="n-1")])
    r = await s.acme.call("DELETE", "/v1/users/victim-7d1f")
    assert r.status == 200 and r.body["events_deleted"] == 6
    assert s.runtime.store.count_events(1, "neighbour") == 1 and s.runtime.store.count_events(1) == 301
    # Its event ids are forgotten with it: the same event sent again is new.
    assert (await s.acme.events([view("victim-7d1f", event_id="v-1")])).body["accepted"] == 1
    assert (await s.acme.call("DELETE", "/v1/users/victim-7d1f")).status == 200
    for name in ("nudge.sqlite3", "nudge.sqlite3-wal"):
        raw = (s.data_dir / name).read_bytes() if (s.data_dir / name).exists() else b""
        assert b"victim-7d1f" not in raw and b"secret-item-9c2e" not in raw, name


async def test_erasures_racing_snapshots_and_config_changes_never_tear_or_resurrect(start):
    s = await start(snapshot_interval_s=0.01)
    await s.acme.events([view(f"v{i}", event_id=f"v{i}") for i in range(60)] + [view("keep")])
    config = (await s.acme.call("GET", "/v1/config")).body

    async def erase(i):
        r = await s.acme.call("DELETE", f"/v1/users/v{i}")
        assert r.status == 200, r.body

    async def reconfigure(i):
        r = await s.acme.call("PUT", "/v1/config", {"horizon_s": config["horizon_s"] + i})
        assert r.status == 200, r.body

    snapshots = [s.runtime.snapshot(s.runtime.tenants[1]) for _ in range(10)]
    await asyncio.gather(*(erase(i) for i in range(60)), *(reconfigure(i) for i in range(1, 6)), *snapshots)
    await crash(s)

    s2 = await start()
    assert s2.runtime.recovery.snapshots_set_aside == 0 and s2.runtime.recovery.unavailable_tenants == 0
    for i in range(0, 60, 7):
        assert (await s2.acme.call("GET", f"/v1/users/v{i}")).status == 404
    assert (await s2.acme.call("GET", "/v1/users/keep")).status == 200
    store = Store(s2.data_dir)
    assert store.count_events(1) == 1
    store.close()
