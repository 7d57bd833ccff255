"""The SQLite adapter implements the whole storage port, method by method and parameter by parameter, and the
port names every public method the adapter offers (nothing reaches storage around it); the same for the snapshot
files and their port."""
import inspect

import pytest

from server import ports
from server.snapshots import SnapshotFiles
from server.storage import Store

PORTS = [ports.Tenants, ports.EventLog, ports.ModelHistory, ports.SignalLog, ports.Subscriptions, ports.Storage]


def _methods(cls):
    return {name for name, _ in inspect.getmembers(cls, inspect.isfunction) if not name.startswith("_")}


@pytest.mark.parametrize("port", PORTS, ids=lambda p: p.__name__)
def test_the_sqlite_store_implements_the_port_with_the_same_parameters(port, tmp_path):
    store = Store(tmp_path)
    try:
        assert isinstance(store, port)
    finally:
        store.close()
    for name in _methods(port):
        wanted = inspect.signature(getattr(port, name))
        offered = inspect.signature(getattr(Store, name))
        assert list(offered.parameters) == list(wanted.parameters), name
        assert [p.default for p in offered.parameters.values()] == [p.default for p in wanted.parameters.values()], name


def test_every_public_method_of_the_store_is_in_the_port():
    assert _methods(Store) == _methods(ports.Storage)


def test_the_snapshot_files_implement_the_snapshot_port_and_nothing_beside_it(tmp_path):
    assert isinstance(SnapshotFiles(tmp_path), ports.Snapshots)
    assert _methods(SnapshotFiles) == _methods(ports.Snapshots)
    for name in _methods(ports.Snapshots):
        wanted = inspect.signature(getattr(ports.Snapshots, name))
        offered = inspect.signature(getattr(SnapshotFiles, name))
        assert list(offered.parameters) == list(wanted.parameters), name

