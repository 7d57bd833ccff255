"""One tenant's ingest flood leaves the others their room: beyond its share of the commit backlog it gets 429
``tenant_over_share``, while another tenant's ingest and scores are answered. The commit is held open by the
test (the storage thread waits on an event), so the backlog is exact whatever the machine's speed."""
import asyncio
import threading
import time

HELD_S = 30


def views(prefix, n):
    return [{"user_id": f"{prefix}{i % 20}", "action": "view", "ts": time.time() - 10} for i in range(n)]


async def test_a_flooding_tenant_is_refused_beyond_its_share_and_the_other_is_served(start, monkeypatch):
    s = await start(max_pending_events=1000, tenant_share=0.5)
    assert (await s.globex.events(views("g", 10))).status == 200  # globex is active
    release = threading.Event()
    append = s.runtime.store.append

    def held_append(*args):
        assert release.wait(HELD_S)
        return append(*args)

    monkeypatch.setattr(s.runtime.store, "append", held_append)
    # The first batch is taken by the committer (held in its commit); the next ones wait in the queue.
    first = asyncio.ensure_future(s.acme.events(views("a", 300)))
    await asyncio.sleep(0.2)
    queued = [asyncio.ensure_future(s.acme.events(views("a", 200)))]  # 500 pending: its half exactly
    await asyncio.sleep(0.2)
    refused = await s.acme.events(views("a", 200))
    assert refused.status == 429, refused.body
    assert refused.body["error"]["code"] == "tenant_over_share" and refused.headers["Retry-After"] == "1"

    # Globex still has room in the commit queue, and is scored meanwhile.
    other = asyncio.ensure_future(s.globex.events(views("g", 200)))
    scored = await s.globex.score("g1")
    assert scored.status == 200
    release.set()
    answers = await asyncio.wait_for(asyncio.gather(first, *queued, other), HELD_S)
    assert [a.status for a in answers] == [200] * 3
    assert answers[-1].body["accepted"] == 200


async def test_a_tenant_alone_may_fill_the_whole_backlog(start, monkeypatch):
    s = await start(max_pending_events=1000, tenant_share=0.5)
    release = threading.Event()
    append = s.runtime.store.append

    def held_append(*args):
        assert release.wait(HELD_S)
        return append(*args)

    monkeypatch.setattr(s.runtime.store, "append", held_append)
    first = asyncio.ensure_future(s.acme.events(views("a", 300)))
    await asyncio.sleep(0.2)
    queued = [asyncio.ensure_future(s.acme.events(views("a", 200))) for _ in range(3)]
    await asyncio.sleep(0.2)
    release.set()
    answers = await asyncio.wait_for(asyncio.gather(first, *queued), HELD_S)
    assert [a.status for a in answers] == [200] * 4  # 900 of 1000 pending at most: nobody else was active
