"""Event files in, event files out: public e-commerce logs (Taobao UserBehavior, RetailRocket, YooChoose,
JD JData, REES46, OTTO) and nudge's own export (JSON Lines of the events ``POST /v1/events`` accepts)."""
from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path
from typing import IO, Iterator

import numpy as np

from .config import DEFAULT_ACTIONS, TenantConfig
from .contexts import DEVICES, OTHER_DEVICE
from .events import EventBatch

TAOBAO_ACTIONS = {"pv": "view", "fav": "favorite", "cart": "add_to_cart", "buy": "purchase"}
RETAILROCKET_ACTIONS = {"view": "view", "addtocart": "add_to_cart", "transaction": "purchase"}
# JD's "click" is a click on a page element, not a product view: it keeps its own action.
JDATA_ACTIONS = {"1": "view", "2": "add_to_cart", "3": "remove_from_cart", "4": "purchase", "5": "favorite",
                 "6": "click"}
REES46_ACTIONS = {"view": "view", "cart": "add_to_cart", "remove_from_cart": "remove_from_cart",
                  "purchase": "purchase"}
OTTO_ACTIONS = {"clicks": "view", "carts": "add_to_cart", "orders": "purchase"}
FORMATS = ("taobao", "retailrocket", "yoochoose", "jdata", "rees46", "otto", "nudge")
# Actions a format emits beyond the default vocabulary: a tenant replaying it needs them.
EXTRA_ACTIONS = {"jdata": ("click",)}
JDATA_TZ_OFFSET_MIN = 8 * 60  # JD logs Beijing time without saying so


def format_actions(fmt: str, path: str | Path | None = None) -> tuple[str, ...]:
    """The vocabulary a tenant needs to take a format's events: the default one, what the format adds and, for a
    ``nudge`` file at ``path``, every other action it holds (a tenant's own names), in order of first appearance."""
    actions = DEFAULT_ACTIONS + EXTRA_ACTIONS.get(fmt, ())
    if fmt != "nudge" or path is None:
        return actions
    found = _nudge_actions(Path(path))
    if "purchase" not in found:
        raise ValueError(f"{path}: no event has the action 'purchase', the conversion that replay and training "
                         f"predict; the file's actions are {found[:10]}. Export a tenant whose conversions are "
                         "logged as 'purchase'")
    return actions + tuple(a for a in found if a not in actions)


def load_events(path: str | Path, fmt: str, config: TenantConfig, limit: int | None = None) -> EventBatch:
    """An event file as a batch, sorted by time (stable); actions must be in ``config``'s vocabulary.

    ``limit`` keeps at most that many events: the earliest of those in the first ``limit`` rows of each file.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; supported: {', '.join(FORMATS)}")
    readers = {"taobao": _taobao, "retailrocket": _retailrocket, "yoochoose": _yoochoose, "jdata": _jdata,
               "rees46": _rees46, "otto": _otto, "nudge": _nudge}
    columns = readers[fmt](Path(path), limit)
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
    return batch.take(order[:limit])


def _not_taobao(path: Path, problem: str) -> ValueError:
    """The error for a file that is not Taobao UserBehavior: what one looks like, and how to name another format."""
    return ValueError(f"{path}: {problem}. A Taobao UserBehavior file (the default format) has rows of "
                      "user,item,category,behavior,timestamp with no header, behavior one of "
                      f"{', '.join(TAOBAO_ACTIONS)} and timestamp in Unix seconds; for another kind of file "
                      f"pick its format with --format ({', '.join(FORMATS)})")


def _taobao(path: Path, limit: int | None) -> dict[str, list]:
    if path.is_dir():
        raise _not_taobao(path, "is a folder, not a file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # an empty file: said below, as an error
        try:
            raw = np.loadtxt(path, delimiter=",", dtype=str, max_rows=limit, ndmin=2)
        except ValueError as exc:  # rows of differing lengths; numpy's advice after the ';' does not apply
            raise _not_taobao(path, str(exc).split(";")[0]) from None
    if not raw.size:
        raise ValueError(f"{path} holds no events")
    if raw.shape[1] != 5:
        raise _not_taobao(path, f"expected 5 columns, got {raw.shape[1]}")
    unknown = sorted(str(b) for b in set(raw[:, 3]) - set(TAOBAO_ACTIONS))
    if unknown:
        raise _not_taobao(path, f"unknown behaviors {unknown[:5]}")
    try:
        ts = raw[:, 4].astype(np.float64)
    except ValueError as exc:
        raise _not_taobao(path, _first_non_number(raw[:, 4].tolist()) or str(exc)) from None
    return {
        "user_ids": raw[:, 0].tolist(), "actions": [TAOBAO_ACTIONS[b] for b in raw[:, 3]],
        "ts": ts, "item_ids": raw[:, 1].tolist(), "categories": raw[:, 2].tolist(),
    }


def _first_non_number(values: list[str]) -> str | None:
    """Which timestamp does not parse as a number, and in which row; None if every one does."""
    for row, value in enumerate(values, start=1):
        try:
            float(value)
        except ValueError:
            return f"the timestamp {value!r} in row {row} is not a number"
    return None


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


def _iso_seconds(values: list[str], where: str) -> np.ndarray:
    """Seconds since the epoch of UTC ``YYYY-MM-DD HH:MM:SS[.fraction]`` times (a `` UTC`` or ``Z`` suffix too)."""
    try:
        stamps = np.array([v.removesuffix(" UTC").removesuffix("Z") for v in values], dtype="datetime64[ns]")
    except ValueError as exc:
        raise ValueError(f"{where}: a time is not YYYY-MM-DD HH:MM:SS ({exc})") from None
    missing = np.isnat(stamps)
    if missing.any():
        raise ValueError(f"{where}: {int(missing.sum())} rows have no time (the first is row "
                         f"{int(np.argmax(missing)) + 1} of the file); every event needs one")
    return stamps.astype(np.int64) / 1e9


def _csv_rows(path: Path, need: tuple[str, ...], limit: int | None) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) of a CSV file with a header that holds ``need``."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = sorted(set(need) - set(reader.fieldnames or ()))
        if missing:
            raise ValueError(f"{path}: the header lacks {missing}; expected the columns {list(need)}")
        for n, row in enumerate(reader):
            if limit is not None and n >= limit:
                return
            if None in row.values() or None in row:
                raise ValueError(f"{path}:{reader.line_num}: expected {len(reader.fieldnames)} columns")
            yield reader.line_num, row


def _yoochoose(path: Path, limit: int | None) -> dict[str, list]:
    """RecSys 2015: ``clicks.csv`` (Session_ID,Timestamp,Item_ID,Category) and ``buys.csv`` beside it.

    ``path`` is the folder or either file. Sessions are the only identity: each is a user.
    """
    folder = path if path.is_dir() else path.parent
    out: dict[str, list] = {"user_ids": [], "actions": [], "ts": [], "item_ids": [], "categories": []}
    for name, action, columns in (("clicks.csv", "view", ("Session_ID", "Timestamp", "Item_ID", "Category")),
                                  ("buys.csv", "purchase", ("Session_ID", "Timestamp", "Item_ID"))):
        file = folder / name
        if not file.exists():
            raise ValueError(f"{folder}: no {name}; a YooChoose folder holds clicks.csv and buys.csv")
        times: list[str] = []
        for line, row in _csv_rows(file, columns, limit):
            if not row["Session_ID"].isdigit():
                raise ValueError(f"{file}:{line}: Session_ID {row['Session_ID']!r} is not a number")
            out["user_ids"].append(row["Session_ID"])
            out["actions"].append(action)
            out["item_ids"].append(row["Item_ID"] or None)
            out["categories"].append(row.get("Category") or None)
            times.append(row["Timestamp"])
        out["ts"].extend(_iso_seconds(times, str(file)).tolist())
    return out


def _jdata(path: Path, limit: int | None) -> dict[str, list]:
    """JD JData 2017 action files (user_id,sku_id,time,model_id,type,cate,brand): one file or a folder of them."""
    files = sorted(path.glob("JData_Action_*.csv")) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"{path}: no JData_Action_*.csv files")
    out: dict[str, list] = {"user_ids": [], "actions": [], "ts": [], "item_ids": [], "categories": [],
                            "tz_offset_min": []}
    for file in files:
        times: list[str] = []
        for line, row in _csv_rows(file, ("user_id", "sku_id", "time", "type", "cate"), limit):
            action = JDATA_ACTIONS.get(row["type"])
            if action is None:
                raise ValueError(f"{file}:{line}: unknown type {row['type']!r}; expected 1-6 "
                                 "(browse, cart, remove, order, follow, click)")
            user = row["user_id"].removesuffix(".0")
            if not user.isdigit():
                raise ValueError(f"{file}:{line}: user_id {row['user_id']!r} is not a number")
            out["user_ids"].append(user)
            out["actions"].append(action)
            out["item_ids"].append(row["sku_id"] or None)
            out["categories"].append(row["cate"] or None)
            out["tz_offset_min"].append(JDATA_TZ_OFFSET_MIN)
            times.append(row["time"])
        out["ts"].extend((_iso_seconds(times, str(file)) - JDATA_TZ_OFFSET_MIN * 60.0).tolist())
    return out


def _rees46(path: Path, limit: int | None) -> dict[str, list]:
    """REES46 (event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session)."""
    out: dict[str, list] = {"user_ids": [], "actions": [], "ts": [], "item_ids": [], "categories": []}
    times: list[str] = []
    need = ("event_time", "event_type", "product_id", "category_id", "user_id")
    for line, row in _csv_rows(path, need, limit):
        action = REES46_ACTIONS.get(row["event_type"])
        if action is None:
            raise ValueError(f"{path}:{line}: unknown event_type {row['event_type']!r}; expected "
                             f"{sorted(REES46_ACTIONS)}")
        if not row["user_id"]:
            raise ValueError(f"{path}:{line}: user_id is empty")
        out["user_ids"].append(row["user_id"])
        out["actions"].append(action)
        out["item_ids"].append(row["product_id"] or None)
        out["categories"].append(row["category_id"] or None)
        times.append(row["event_time"])
    out["ts"] = _iso_seconds(times, str(path))
    return out


def _otto(path: Path, limit: int | None) -> dict[str, list]:
    """OTTO (RecSys 2022) JSON Lines: ``{"session", "events": [{"aid", "ts", "type"}]}``; ts in ms or s."""
    out: dict[str, list] = {"user_ids": [], "actions": [], "ts": [], "item_ids": []}
    for line, text in _json_lines(path, out, limit):
        try:
            session = json.loads(text)
            user = str(int(session["session"]))
            for event in session["events"]:
                action = OTTO_ACTIONS[event["type"]]
                out["ts"].append(float(event["ts"]))
                out["item_ids"].append(str(int(event["aid"])))
                out["actions"].append(action)
                out["user_ids"].append(user)
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{line}: not an OTTO session ({type(exc).__name__}: {exc}); expected "
                             '{"session": N, "events": [{"aid": N, "ts": N, "type": "clicks|carts|orders"}]}') from None
    ts = np.asarray(out["ts"])
    # The published files count milliseconds; some re-exports count seconds.
    out["ts"] = ts / 1000.0 if len(ts) and ts.max() > 1e11 else ts
    return out


def _json_lines(path: Path, out: dict[str, list], limit: int | None) -> Iterator[tuple[int, str]]:
    """(line number, text) of the non-blank lines, until ``out`` holds ``limit`` events."""
    with open(path) as fh:
        for line, text in enumerate(fh, start=1):
            if limit is not None and len(out["ts"]) >= limit:
                return
            if text.strip():
                yield line, text


def _nudge_actions(path: Path) -> list[str]:
    """The action names of a ``nudge`` file, in order of first appearance (one pass over the file)."""
    seen: dict[str, None] = {}
    with open(path) as fh:
        for line, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                action = json.loads(text)["action"]
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{line}: not a nudge event ({type(exc).__name__}: {exc})") from None
            if isinstance(action, str):  # anything else is refused, with its line, when the events are read
                seen.setdefault(action, None)
    return list(seen)


def _nudge(path: Path, limit: int | None) -> dict[str, list]:
    out: dict[str, list] = {k: [] for k in ("user_ids", "actions", "ts", "item_ids", "categories", "queries",
                                            "device", "segment", "tz_offset_min")}
    devices = {d: i for i, d in enumerate(DEVICES)}
    for line, text in _json_lines(path, out, limit):
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
