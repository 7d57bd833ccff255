"""Event files in, event files out: the Taobao UserBehavior CSV, the RetailRocket events CSV, and
nudge's own export (JSON Lines of the events ``POST /v1/events`` accepts)."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import IO, Iterator

import numpy as np

from .config import TenantConfig
from .contexts import DEVICES, OTHER_DEVICE
from .events import EventBatch

TAOBAO_ACTIONS = {"pv": "view", "fav": "favorite", "cart": "add_to_cart", "buy": "purchase"}
RETAILROCKET_ACTIONS = {"view": "view", "addtocart": "add_to_cart", "transaction": "purchase"}
FORMATS = ("taobao", "retailrocket", "nudge")


def load_events(path: str | Path, fmt: str, config: TenantConfig, limit: int | None = None) -> EventBatch:
    """An event file as a batch, sorted by time (stable); actions must be in ``config``'s vocabulary."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; supported: {', '.join(FORMATS)}")
    columns = {"taobao": _taobao, "retailrocket": _retailrocket, "nudge": _nudge}[fmt](Path(path), limit)
    names = columns.pop("actions")
    vocab = {a: i for i, a in enumerate(config.actions)}
    missing = sorted(set(names) - set(vocab))
    if missing:
        raise ValueError(f"{path}: actions {missing[:5]} are not in the vocabulary {list(config.actions)}")
    segments = {s: i + 1 for i, s in enumerate(config.segments)}
    unknown_segments = sorted({s for s in columns.get("segment", ()) if s is not None and s not in segments})
    if unknown_segments:
        raise ValueError(f"{path}: segments {unknown_segments[:5]} are not in the config's {list(config.segments)}")
    if "segment" in columns:
        columns["segment"] = [segments.get(s, 0) for s in columns["segment"]]
    ts = np.asarray(columns.pop("ts"), dtype=np.float64)
    order = np.argsort(ts, kind="stable")
    batch = EventBatch.build(actions=[vocab[n] for n in names], ts=ts, **columns)
    return batch.take(order)


def _taobao(path: Path, limit: int | None) -> dict[str, list]:
    raw = np.loadtxt(path, delimiter=",", dtype=str, max_rows=limit, ndmin=2)
    if raw.shape[1] != 5:
        raise ValueError(f"{path}: expected 5 columns user,item,category,behavior,timestamp; got {raw.shape[1]}")
    unknown = sorted(set(raw[:, 3]) - set(TAOBAO_ACTIONS))
    if unknown:
        raise ValueError(f"{path}: unknown behaviors {unknown[:5]}; expected {sorted(TAOBAO_ACTIONS)}")
    return {
        "user_ids": raw[:, 0].tolist(), "actions": [TAOBAO_ACTIONS[b] for b in raw[:, 3]],
        "ts": raw[:, 4].astype(np.float64), "item_ids": raw[:, 1].tolist(), "categories": raw[:, 2].tolist(),
    }


def _retailrocket(path: Path, limit: int | None) -> dict[str, list]:
    out: dict[str, list] = {"user_ids": [], "actions": [], "ts": [], "item_ids": []}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        need = {"timestamp", "visitorid", "event", "itemid"}
        if not need <= set(reader.fieldnames or ()):
            raise ValueError(f"{path}: expected the RetailRocket columns {sorted(need)}; got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            if limit is not None and len(out["ts"]) >= limit:
                break
            action = RETAILROCKET_ACTIONS.get(row["event"])
            if action is None:
                raise ValueError(f"{path}:{line}: unknown event {row['event']!r}; expected {sorted(RETAILROCKET_ACTIONS)}")
            out["user_ids"].append(row["visitorid"])
            out["actions"].append(action)
            out["ts"].append(float(row["timestamp"]) / 1000.0)  # milliseconds
            out["item_ids"].append(row["itemid"] or None)
    return out


def _nudge(path: Path, limit: int | None) -> dict[str, list]:
    out: dict[str, list] = {k: [] for k in ("user_ids", "actions", "ts", "item_ids", "categories", "queries",
                                            "device", "segment", "tz_offset_min")}
    devices = {d: i for i, d in enumerate(DEVICES)}
    with open(path) as fh:
        for line, text in enumerate(fh, start=1):
            if limit is not None and len(out["ts"]) >= limit:
                break
            if not text.strip():
                continue
            try:
                event = json.loads(text)
                context = event.get("context") or {}
                out["user_ids"].append(str(event["user_id"]))
                out["actions"].append(event["action"])
                out["ts"].append(float(event["ts"]))
                out["device"].append(devices[context.get("device", "other")])
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ValueError(f"{path}:{line}: not a nudge event ({type(exc).__name__}: {exc})") from None
            out["item_ids"].append(event.get("item_id"))
            out["categories"].append(event.get("category"))
            out["queries"].append(event.get("query"))
            out["segment"].append(context.get("segment"))
            out["tz_offset_min"].append(int(context.get("tz_offset_min", 0)))
    return out


def export_events(batches: Iterator[EventBatch], config: TenantConfig, out: IO[str]) -> int:
    """Write events as JSON Lines in the ``nudge`` format (what ``POST /v1/events`` takes); returns how many."""
    n = 0
    for batch in batches:
        for i in range(len(batch)):
            event = {"user_id": batch.user_ids[i], "action": config.actions[batch.actions[i]], "ts": float(batch.ts[i])}
            for key, column in (("event_id", batch.event_ids), ("item_id", batch.item_ids),
                                ("category", batch.categories), ("query", batch.queries)):
                if column[i] is not None:
                    event[key] = column[i]
            context = {"tz_offset_min": int(batch.tz_offset_min[i])}
            if batch.device[i] != OTHER_DEVICE:
                context["device"] = DEVICES[batch.device[i]]
            if batch.segment[i]:
                context["segment"] = config.segments[batch.segment[i] - 1]
            event["context"] = context
            out.write(json.dumps(event) + "\n")
            n += 1
    return n
