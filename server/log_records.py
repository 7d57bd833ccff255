"""One record per logged batch: an :class:`~model.events.EventBatch`'s columns, encoded for the event log.

A record holds the batch's user ids apart (what erasure and per-user lookups scan, without decoding the rest)
and every other column of ``model.schema.EVENT_FIELDS``, with the events' log sequence numbers:

- coded columns (action, device, segment) as the names of their vocabulary and one small integer per event, so
  the log reads back under any later vocabulary;
- numeric columns as raw little-endian arrays;
- text columns (event, item, category and query ids) as msgpack lists, None where absent.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import msgpack
import numpy as np

from model import DEVICES, EventBatch, TenantConfig
from model.schema import EVENT_FIELDS

_CODED = ("actions", "device", "segment")  # the columns vocabularies() names
_TEXT = tuple(f.batch for f in EVENT_FIELDS
              if f.json_schema["type"] == "string" and f.batch not in (*_CODED, "user_ids"))
_NUMERIC = tuple(f.batch for f in EVENT_FIELDS if f.json_schema["type"] in ("number", "integer"))


def vocabularies(config: TenantConfig) -> dict[str, tuple]:
    """The names each coded column's codes stand for under ``config`` (segment code 0 is 'none')."""
    return {"actions": tuple(config.actions), "device": tuple(DEVICES), "segment": (None, *config.segments)}


@dataclass(frozen=True)
class Record:
    """A batch as the log stores it."""

    n: int
    first_seq: int
    last_seq: int
    min_ts: float
    max_ts: float
    users: bytes
    columns: bytes


def encode(batch: EventBatch, seqs: np.ndarray, names: dict[str, tuple]) -> Record:
    """The record of ``batch``, whose coded columns index ``names`` (see :func:`vocabularies`)."""
    columns: dict[str, object] = {"seqs": np.ascontiguousarray(seqs, "<i8").tobytes()}
    for name in _CODED:
        codes = getattr(batch, name)
        columns[name] = [list(names[name]), np.ascontiguousarray(codes, "<i2").tobytes()]
    for name in _NUMERIC:
        values = getattr(batch, name)
        columns[name] = [values.dtype.str, np.ascontiguousarray(values).tobytes()]
    for name in _TEXT:
        values = getattr(batch, name)
        columns[name] = values.tolist() if (values != None).any() else None  # noqa: E711 - all None is common
    return Record(
        n=len(batch), first_seq=int(seqs[0]), last_seq=int(seqs[-1]),
        min_ts=float(batch.ts.min()), max_ts=float(batch.ts.max()),
        users=msgpack.packb(batch.user_ids.tolist()), columns=msgpack.packb(columns),
    )


def decode_users(users: bytes) -> np.ndarray:
    return _objects(msgpack.unpackb(users))


def user_needle(user_id: str) -> bytes:
    """The bytes ``user_id`` takes in a record's users: a record without them cannot hold the user."""
    return msgpack.packb(user_id)


def decode_logged(users: bytes, columns: bytes) -> tuple[EventBatch, np.ndarray, dict[str, tuple]]:
    """(batch, seqs, vocabularies): the record as logged, its coded columns indexing its own vocabularies."""
    cols = msgpack.unpackb(columns)
    out: dict[str, np.ndarray] = {"user_ids": decode_users(users)}
    n = len(out["user_ids"])
    names = {}
    for name in _CODED:
        logged, raw = cols[name]
        names[name] = tuple(logged)
        out[name] = np.frombuffer(raw, "<i2")
    for name in _NUMERIC:
        dtype, raw = cols[name]
        out[name] = np.frombuffer(raw, dtype)
    for name in _TEXT:
        out[name] = _objects(cols[name]) if cols[name] is not None else np.full(n, None, object)
    return EventBatch.build(**out), np.frombuffer(cols["seqs"], "<i8").copy(), names


def decode(users: bytes, columns: bytes, config: TenantConfig) -> tuple[EventBatch, np.ndarray]:
    """(batch in ``config``'s codes, seqs); ValueError when the record holds an action ``config`` lacks (a
    segment the config no longer names reads as 'none')."""
    batch, seqs, names = decode_logged(users, columns)
    current = vocabularies(config)
    coded = {}
    for name in _CODED:
        table = {v: i for i, v in enumerate(current[name])}
        codes = getattr(batch, name)
        if name == "actions":
            used = {names[name][c] for c in np.unique(codes)}
            if used - table.keys():
                raise ValueError(f"the event log holds action {sorted(used - table.keys())[0]!r}, "
                                 "which the config lacks")
        remap = np.array([table.get(v, 0) for v in names[name]], np.int64)
        coded[name] = remap[codes].astype(codes.dtype)
    return dataclasses.replace(batch, **coded), seqs


def logged_names(batch: EventBatch, names: dict[str, tuple]) -> list[tuple[str, str]]:
    """(column, name) of every action and segment the batch uses: what a config change must keep."""
    out = [("action", names["actions"][c]) for c in np.unique(batch.actions)]
    return out + [("segment", names["segment"][c]) for c in np.unique(batch.segment) if c > 0]


def from_rows(rows: list[tuple]) -> tuple[EventBatch, np.ndarray, dict[str, tuple]]:
    """(batch, seqs, vocabularies) of rows of (seq, *the log columns of EVENT_FIELDS), as the per-event log of
    schema versions 1 and 2 stored them: coded columns by name."""
    cols = list(zip(*rows))
    values = {f.batch: list(cols[i + 1]) for i, f in enumerate(EVENT_FIELDS)}
    names = {"actions": tuple(dict.fromkeys(values["actions"])), "device": tuple(DEVICES),
             "segment": (None, *(s for s in dict.fromkeys(values["segment"]) if s is not None))}
    for name in _CODED:
        index = {v: i for i, v in enumerate(names[name])}
        values[name] = [index[v] for v in values[name]]
    return EventBatch.build(**values), np.asarray(cols[0], np.int64), names


def _objects(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out
