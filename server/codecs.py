"""Request and response bodies in msgpack or JSON, chosen by Content-Type and Accept."""
from __future__ import annotations

import json
import math
from typing import Any

import msgpack
import numpy as np
from aiohttp import web

from .errors import ApiError

MSGPACK = "application/msgpack"
JSON = "application/json"
_MSGPACK_TYPES = {MSGPACK, "application/x-msgpack", "application/vnd.msgpack"}


def media_type(header: str | None) -> str | None:
    """The bare media type of a Content-Type header, lower case."""
    if not header:
        return None
    return header.split(";", 1)[0].strip().lower() or None


def request_format(request: web.Request) -> str:
    """The request body's format; 415 for anything but msgpack or JSON."""
    kind = media_type(request.headers.get("Content-Type"))
    if kind in _MSGPACK_TYPES:
        return MSGPACK
    if kind is None or kind == JSON or kind.endswith("+json"):
        return JSON
    raise ApiError(415, "unsupported_media_type", f"send {MSGPACK} or {JSON}, not {kind}")


def response_format(request: web.Request) -> str:
    """The Accept type when it names msgpack or JSON, else the request's own format."""
    accept = request.headers.get("Accept", "")
    ranked = []
    for part in accept.split(","):
        kind, _, params = part.partition(";")
        kind = kind.strip().lower()
        q = 1.0
        for p in params.split(";"):
            name, _, value = p.strip().partition("=")
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if kind in _MSGPACK_TYPES or kind == JSON:
            ranked.append((-q, len(ranked), MSGPACK if kind in _MSGPACK_TYPES else JSON))
    ranked = [r for r in sorted(ranked) if r[0] < 0]
    if ranked:
        return ranked[0][2]
    kind = media_type(request.headers.get("Content-Type"))
    return MSGPACK if kind in _MSGPACK_TYPES else JSON


def decode(body: bytes, fmt: str) -> Any:
    """Parse a body; 400 ``malformed_body`` if it is not valid for its format."""
    if not body:
        raise ApiError(400, "malformed_body", "the request body is empty")
    try:
        if fmt == MSGPACK:
            return msgpack.unpackb(body, raw=False, strict_map_key=False)
        return json.loads(body)
    except (ValueError, RecursionError, TypeError, msgpack.UnpackException) as exc:
        kind = "msgpack" if fmt == MSGPACK else "JSON"
        raise ApiError(400, "malformed_body", f"the body is not valid {kind}: {type(exc).__name__}") from None


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot encode {type(value).__name__}")


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity; they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def encode(payload: Any, fmt: str) -> bytes:
    if fmt == MSGPACK:
        return msgpack.packb(payload, default=_plain, use_bin_type=True)
    try:
        return json.dumps(payload, default=_plain, allow_nan=False, separators=(",", ":")).encode()
    except ValueError:
        return json.dumps(_finite(json.loads(json.dumps(payload, default=_plain))), separators=(",", ":")).encode()


def respond(request: web.Request, payload: Any, status: int = 200, headers: dict[str, str] | None = None):
    """A response in the format the client asked for."""
    fmt = response_format(request)
    return web.Response(body=encode(payload, fmt), status=status, content_type=fmt, headers=headers)
