"""nudge_client's disk spool: crash-safe batch files, read back oldest first, one owner at a time, and a spool
that outlives its client: the next client on the directory sends what the last could not."""
import httpx
import msgpack
import pytest

from nudge_client import Client, RetryPolicy, SpoolLocked
from nudge_client.spool import Spool

FAST = RetryPolicy(base_s=0.01, max_s=0.02, max_retries=None)


def events(prefix, n):
    return [{"user_id": f"{prefix}{i}", "action": "view", "ts": 1.0, "event_id": f"{prefix}-{i}"} for i in range(n)]


def test_write_pending_remove(tmp_path):
    spool = Spool(tmp_path)
    first, second = spool.write(events("a", 3)), spool.write(events("b", 2))
    assert not list(tmp_path.glob("*.tmp"))
    assert spool.pending() == [(first, events("a", 3)), (second, events("b", 2))]
    spool.remove(first)
    assert spool.pending() == [(second, events("b", 2))]
    spool.remove(first)  # twice is harmless
    spool.close()


def test_a_new_spool_on_the_directory_finds_the_batches_and_numbers_after_them(tmp_path):
    spool = Spool(tmp_path)
    kept = spool.write(events("a", 2))
    spool.close()
    again = Spool(tmp_path)
    assert again.pending() == [(kept, events("a", 2))]
    later = again.write(events("b", 1))
    assert later.name > kept.name
    again.close()


def test_half_written_and_unreadable_files_never_come_back_as_events(tmp_path):
    spool = Spool(tmp_path)
    good = spool.write(events("a", 1))
    spool.close()
    (tmp_path / "000000000099.tmp").write_bytes(b"\x93half")  # a write cut short by a crash
    (tmp_path / "000000000098.batch").write_bytes(b"\xc1 not msgpack")
    (tmp_path / "000000000097.batch").write_bytes(msgpack.packb({"not": "a list"}))
    spool = Spool(tmp_path)
    assert spool.pending() == [(good, events("a", 1))]
    assert not list(tmp_path.glob("*.tmp"))
    assert sorted(p.name for p in tmp_path.glob("*.corrupt")) == ["000000000097.corrupt", "000000000098.corrupt"]
    spool.close()


def test_one_client_at_a_time_owns_a_spool(tmp_path):
    spool = Spool(tmp_path)
    with pytest.raises(SpoolLocked):
        Spool(tmp_path)
    spool.close()
    Spool(tmp_path).close()  # released


def test_the_spool_outlives_its_client(tmp_path):
    def down(request):
        raise httpx.ConnectError("refused", request=request)

    c = Client("http://nudge.test", "k", batch_size=10, spool_dir=tmp_path, retry=FAST,
               transport=httpx.MockTransport(down))
    tracked = [c.track(f"u{n}", "view") for n in range(25)]
    assert not c.flush(timeout=0.3)
    c.close(timeout=0.2)
    assert c.stats.sent == 0 and c.stats.dropped == 0 and c.stats.pending == 25 and c.stats.spooled == 3
    assert len(list(tmp_path.glob("*.batch"))) == 3

    received = []

    def up(request):
        batch = msgpack.unpackb(request.content)["events"]
        received.extend(e["event_id"] for e in batch)
        return httpx.Response(200, content=msgpack.packb({"accepted": len(batch), "duplicates": 0}),
                              headers={"content-type": "application/msgpack"})

    with Client("http://nudge.test", "k", spool_dir=tmp_path, transport=httpx.MockTransport(up)) as c:
        assert c.stats.restored == 25
        assert c.flush(timeout=5)
    assert received == tracked  # in order, each once
    assert c.stats.sent == 25 and c.stats.pending == 0
    assert not list(tmp_path.glob("*.batch"))


def test_with_a_spool_every_batch_is_on_disk_before_it_is_sent(tmp_path):
    seen_on_disk = []

    def up(request):
        batch = msgpack.unpackb(request.content)["events"]
        seen_on_disk.append(sorted(e["event_id"] for p in tmp_path.glob("*.batch") for e in msgpack.unpackb(p.read_bytes())))
        return httpx.Response(200, content=msgpack.packb({"accepted": len(batch), "duplicates": 0}),
                              headers={"content-type": "application/msgpack"})

    with Client("http://nudge.test", "k", spool_dir=tmp_path, transport=httpx.MockTransport(up)) as c:
        event_id = c.track("u1", "view")
        assert c.flush(timeout=5)
    assert seen_on_disk == [[event_id]]
    assert not list(tmp_path.glob("*.batch"))
