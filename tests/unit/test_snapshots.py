"""Snapshot files: concurrent writers never publish a torn file, damage is detected, erasures are journalled."""
import threading

import numpy as np
import pytest

from server.snapshots import (
    MAGIC,
    SnapshotUnreadable,
    clear_journal,
    journal_erasure,
    journal_path,
    load_snapshot,
    read_journal,
    remove_temporaries,
    save_snapshot,
    set_aside,
)


def state(value: float, n: int = 200_000) -> dict[str, np.ndarray]:
    return {"a": np.full(n, value), "b": np.arange(n) * value}


def test_snapshot_round_trip_with_checksum(tmp_path):
    path = tmp_path / "snapshots" / "tenant-1.npz"
    save_snapshot(path, state(2.0, 10), {"horizon_s": 5})
    loaded, config = load_snapshot(path)
    assert config == {"horizon_s": 5}
    np.testing.assert_array_equal(loaded["b"], np.arange(10) * 2.0)
    assert path.read_bytes().startswith(MAGIC)
    assert load_snapshot(tmp_path / "snapshots" / "tenant-2.npz") is None


def test_snapshot_concurrent_writers_of_one_tenant_never_tear(tmp_path):
    path = tmp_path / "tenant-1.npz"
    errors = []

    def writer(value: float) -> None:
        try:
            for _ in range(8):
                save_snapshot(path, state(value), {"v": value})
        except Exception as exc:  # a shared temporary file made writers trip over each other
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(float(v),)) for v in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    loaded, config = load_snapshot(path)  # whole: one writer's state, never a mix
    assert np.all(loaded["a"] == config["v"])
    assert list(tmp_path.glob("*.tmp")) == []


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_snapshot_damage_is_detected(tmp_path, damage):
    path = tmp_path / "tenant-1.npz"
    save_snapshot(path, state(1.0, 1000), {})
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "flip":
        raw[len(raw) // 2] ^= 0xFF
    elif damage == "garbage":
        raw = bytearray(b"PK\x03\x04 not really a zip")
    else:
        raw = bytearray()
    path.write_bytes(bytes(raw))
    with pytest.raises(SnapshotUnreadable):
        load_snapshot(path)


def test_snapshot_written_before_checksums_still_loads(tmp_path):
    path = tmp_path / "tenant-1.npz"
    with open(path, "wb") as fh:
        np.savez(fh, a=np.arange(3.0), __config__=np.frombuffer(b'{"x": 1}', dtype=np.uint8))
    loaded, config = load_snapshot(path)
    assert config == {"x": 1} and loaded["a"].tolist() == [0.0, 1.0, 2.0]


def test_set_aside_keeps_the_file_for_a_post_mortem_and_drops_its_journal(tmp_path):
    path = tmp_path / "tenant-1.npz"
    path.write_bytes(b"torn")
    journal_erasure(path, "u-1")
    aside = set_aside(path)
    assert not path.exists() and aside.read_bytes() == b"torn" and aside.name.startswith("tenant-1.npz.unreadable-")
    assert not journal_path(path).exists()


def test_erasure_journal_survives_a_torn_line(tmp_path):
    path = tmp_path / "tenant-1.npz"
    journal_erasure(path, "u-1")
    with open(journal_path(path), "ab") as fh:
        fh.write(b'"u-tor')  # a crash in the middle of an append that was never acknowledged
    journal_erasure(path, "u-2")
    journal_erasure(path, 'quote"and\nnewline')
    assert read_journal(path) == ["u-1", "u-2", 'quote"and\nnewline']
    clear_journal(path)
    assert read_journal(path) == []


def test_remove_temporaries_leaves_snapshots(tmp_path):
    (tmp_path / "tenant-1.npz.abc123.tmp").write_bytes(b"half")
    (tmp_path / "tenant-1.npz").write_bytes(b"whole")
    assert remove_temporaries(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["tenant-1.npz"]


def test_an_engine_capture_written_later_holds_the_state_of_its_moment(tmp_path):
    # The device thread only captures; the writer assembles the arrays later, while the engine goes on applying.
    from model import Engine, EventBatch, TenantConfig
    from model.combiner import Deferred

    engine, rng, t = Engine(TenantConfig()), np.random.default_rng(5), 1.7e9
    seq = 0

    def apply(n):
        nonlocal seq, t
        t += 400.0  # past a tick: example queues resolve and drop rows
        batch = EventBatch.build([f"u{x}" for x in rng.integers(0, 40, n)], rng.integers(0, 5, n),
                                 np.sort(t + rng.uniform(0, 300, n)))
        engine.apply(batch, np.arange(seq + 1, seq + 1 + n))
        seq += n

    for _ in range(12):
        apply(300)
    then = engine.state_dict()
    captured = engine.capture()
    assert any(isinstance(v, Deferred) for v in captured.values())
    for _ in range(12):
        apply(300)
    save_snapshot(tmp_path / "tenant-1.npz", captured, {})
    written, _ = load_snapshot(tmp_path / "tenant-1.npz")
    assert set(written) == set(then)
    for key, value in then.items():
        np.testing.assert_array_equal(written[key], value, err_msg=key)


def test_the_snapshot_port_over_files_keeps_each_tenant_and_its_erasures(tmp_path):
    from server.snapshots import SnapshotFiles

    snapshots = SnapshotFiles(tmp_path / "snapshots")
    assert snapshots.load_snapshot(1) is None and snapshots.erased_since_snapshot(1) == []
    snapshots.save_snapshot(1, state(1.0, 5), {"k": 1})
    snapshots.save_snapshot(2, state(2.0, 5), {"k": 2})
    snapshots.journal_erasure(1, "alice")
    snapshots.journal_erasure(1, "bob")
    assert snapshots.erased_since_snapshot(1) == ["alice", "bob"] and snapshots.erased_since_snapshot(2) == []
    loaded, config = snapshots.load_snapshot(2)
    assert config == {"k": 2}
    np.testing.assert_array_equal(loaded["a"], np.full(5, 2.0))
    # A new snapshot was captured after the journalled erasures: saving it forgets them.
    snapshots.save_snapshot(1, state(3.0, 5), {"k": 1})
    assert snapshots.erased_since_snapshot(1) == []
    # Damage is reported, and the damaged file is kept aside under the name returned.
    path = tmp_path / "snapshots" / "tenant-2.npz"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(SnapshotUnreadable):
        snapshots.load_snapshot(2)
    kept = snapshots.set_aside_snapshot(2)
    assert (tmp_path / "snapshots" / kept).exists() and snapshots.load_snapshot(2) is None
    (tmp_path / "snapshots" / "tenant-1.abc.tmp").write_bytes(b"half")
    assert snapshots.remove_interrupted_writes() == 1
    assert snapshots.load_snapshot(1)[1] == {"k": 1}
