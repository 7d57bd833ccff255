"""What goes over the wire: events as the server takes them, msgpack bodies, and error answers."""
from __future__ import annotations

import json
import math
import operator
import time
import uuid
from typing import Any, Iterable, Mapping
from urllib.parse import quote

import httpx
import msgpack

from . import __version__
from .errors import ApiError, NudgeError, Unreachable
from .retry import call_retryable
from .retry import parse_retry_after
from .types import Context

MSGPACK = "application/msgpack"
HEADERS = {"Accept": MSGPACK, "User-Agent": f"nudge-client/{__version__}"}
BODY_HEADERS = {"Content-Type": MSGPACK}
CONTEXT_FIELDS = frozenset(Context.__annotations__)


def _id(name: str, value: Any, allow_int: bool = True) -> str | int:
    """A text (or integer) field as msgpack can carry it; TypeError in the caller's thread otherwise, so that one
    bad ``track`` can never stop the sender (which could not encode the batch)."""
    if isinstance(value, str):
        return value
    if allow_int and not isinstance(value, bool):
        try:
            return operator.index(value)  # int, and integer types such as numpy's
        except TypeError:
            pass
    kinds = "a string or an integer" if allow_int else "a string"
    raise TypeError(f"{name} must be {kinds}, not {type(value).__name__}")


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise TypeError(f"ts must be seconds since the epoch (a number), not {type(value).__name__}")
    seconds = float(value)
    if not math.isfinite(seconds):
        raise ValueError("ts must be a finite number of seconds since the epoch")
    return seconds


def make_event(user_id: str | int, action: str, ts: float | None = None, event_id: str | None = None,
               item_id: str | int | None = None, category: str | int | None = None, query: str | None = None,
               context: Context | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One event of ``POST /v1/events``. The checks here are the ones that would otherwise cost the whole batch
    a round trip, or that msgpack needs (types); the server validates everything else and refuses bad events one
    by one (see ``Delivery``)."""
    if user_id is None or user_id == "":
        raise ValueError("user_id is required")
    if not action or not isinstance(action, str):
        raise ValueError("action must be one of the tenant's actions")
    unknown = set(context or ()) - CONTEXT_FIELDS
    if unknown:
        raise ValueError(f"unknown context fields {sorted(unknown)}; known: {sorted(CONTEXT_FIELDS)}")
    event: dict[str, Any] = {
        "user_id": _id("user_id", user_id),
        "action": action,
        # Stamped now, not when it reaches the server: a batch may wait, be retried or spooled for a while,
        # and the server would otherwise stamp its own arrival time.
        "ts": time.time() if ts is None else _seconds(ts),
        # Made here so that every retry of the event carries the same id and the server stores it once.
        "event_id": uuid.uuid4().hex if event_id is None else _id("event_id", event_id),
    }
    for name, value in (("item_id", item_id), ("category", category)):
        if value is not None:
            event[name] = _id(name, value)
    if query is not None:
        event["query"] = _id("query", query, allow_int=False)
    if context:
        out = {}
        for name, value in context.items():
            if value is None:
                continue
            if name == "tz_offset_min":
                if isinstance(value, bool):
                    raise TypeError("context.tz_offset_min must be an integer number of minutes")
                try:
                    out[name] = operator.index(value)
                except TypeError:
                    raise TypeError("context.tz_offset_min must be an integer number of minutes") from None
            else:
                out[name] = _id(f"context.{name}", value, allow_int=False)
        if out:
            event["context"] = out
    return event


def pack(body: Any) -> bytes:
    return msgpack.packb(body, use_bin_type=True)


def unpack(content_type: str | None, content: bytes) -> Any:
    """The decoded body of an answer, or None when it is neither msgpack nor JSON (say, a proxy's HTML page)."""
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    try:
        if kind in (MSGPACK, "application/x-msgpack", "application/vnd.msgpack"):
            return msgpack.unpackb(content, raw=False, strict_map_key=False)
        if kind == "application/json" or kind.endswith("+json"):
            return json.loads(content)
    except (ValueError, msgpack.UnpackException):
        return None
    return None


def api_error(status: int, headers: Mapping[str, str], content: bytes) -> ApiError:
    """The typed error of a non-2xx answer; answers not from nudge itself get the code ``http_<status>``."""
    body = unpack(headers.get("content-type"), content)
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {"code": f"http_{status}", "message": content[:200].decode("utf-8", "replace") or f"HTTP {status}"}
    details = error.get("details")
    return ApiError(status, str(error.get("code")), str(error.get("message", "")),
                    details if isinstance(details, list) else [],
                    request_id=headers.get("x-request-id"), retry_after_s=parse_retry_after(headers.get("retry-after")))


def answer(status: int, headers: Mapping[str, str], content: bytes) -> Any:
    """The decoded body of a 2xx answer; the :class:`ApiError` of any other."""
    if 200 <= status < 300:
        return unpack(headers.get("content-type"), content)
    raise api_error(status, headers, content)


def score_body(users: Iterable[str | int | Mapping[str, Any]], explain: bool) -> dict[str, Any]:
    if isinstance(users, (str, bytes, int, Mapping)):  # a lone id would be scored letter by letter
        raise TypeError("score takes a list of users: score([\"u-42\"]), not score(\"u-42\")")
    body: dict[str, Any] = {"users": [dict(u) if isinstance(u, Mapping) else {"user_id": u} for u in users]}
    if explain:
        body["explain"] = True
    return body


def signals_params(after: str | None, limit: int, wait_s: float) -> dict[str, Any]:
    params: dict[str, Any] = {"limit": limit}
    if after:
        params["after"] = after
    if wait_s:
        params["wait_s"] = wait_s
    return params


def user_path(user_id: str | int) -> str:
    return "/v1/users/" + quote(str(user_id), safe="")


def call_unreachable(method: str, exc: Exception) -> NudgeError:
    """The error to retry after a typed call got no answer; raises :class:`Unreachable` where a retry is unsafe:
    only a request that never reached the server, or one that only reads (GET), may go again."""
    if not (method == "GET" or isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))):
        raise Unreachable(f"no answer from nudge: {exc!r}") from exc
    error = Unreachable(f"could not reach nudge: {exc!r}")
    error.__cause__ = exc
    return error


def call_answered(r: httpx.Response) -> tuple[bool, Any]:
    """(True, the decoded answer) when a typed call is done, or (False, the error to retry after)."""
    if r.is_success or not call_retryable(r.status_code):
        return True, answer(r.status_code, r.headers, r.content)
    return False, api_error(r.status_code, r.headers, r.content)
