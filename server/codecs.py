"""Request and response bodies in msgpack or JSON, chosen by Content-Type and Accept."""
from __future__ import annotations

import json
import math
import re
import zlib
from typing import Any

import msgpack
from aiohttp import web

from core.score_rows import plain as _plain  # NumPy values as Python ones, where answers are packed

from .errors import ApiError

MSGPACK = "application/msgpack"
JSON = "application/json"
_MSGPACK_TYPES = {MSGPACK, "application/x-msgpack", "application/vnd.msgpack"}
# zlib's window bits for each Content-Encoding nudge inflates: gzip's header, and zlib's for deflate.
_INFLATE_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
# JSON escapes of UTF-16 surrogates: only bodies that hold one need the (slower) lone-surrogate search.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


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


def inflate(body: bytes, encoding: str | None, max_bytes: int) -> bytes:
    """``body`` decoded from its Content-Encoding; 413 once it inflates past ``max_bytes``, never further."""
    name = (encoding or "identity").strip().lower()
    if name == "identity":
        return body
    wbits = _INFLATE_WBITS.get(name)
    if wbits is None:
        raise ApiError(415, "unsupported_encoding", f"Content-Encoding {ascii(name[:40])} is not supported; "
                       "send gzip, deflate or an uncompressed body", [{"field": "Content-Encoding",
                                                                        "reason": "unsupported"}])
    out, rest = bytearray(), body
    try:
        while rest:  # a gzip body may hold several members, one after the other
            inflater = zlib.decompressobj(wbits)
            out += inflater.decompress(rest, max_bytes + 1 - len(out))
            if len(out) > max_bytes:
                raise ApiError(413, "body_too_large", f"the body inflates to more than {max_bytes} bytes; send "
                               "smaller batches")
            if not inflater.eof:
                raise ApiError(400, "malformed_body", f"the {name} body is truncated")
            rest = inflater.unused_data
    except zlib.error as exc:
        raise ApiError(400, "malformed_body", f"the body is not valid {name} data: {exc}") from None
    return bytes(out)


def _lone_surrogate(value: Any, path: str) -> str | None:
    """The path of the first string (or key) in ``value`` holding a lone UTF-16 surrogate, or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "body"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            found = _lone_surrogate(key, where) or _lone_surrogate(item, where)
            if found:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _lone_surrogate(item, f"{path}[{i}]")
            if found:
                return found
    return None


def decode(body: bytes, fmt: str) -> Any:
    """Parse a body; 400 ``malformed_body`` if it is not valid for its format or its text is not Unicode."""
    if not body:
        raise ApiError(400, "malformed_body", "the request body is empty")
    try:
        if fmt == MSGPACK:
            return msgpack.unpackb(body, raw=False, strict_map_key=False)  # strict UTF-8: no surrogates
        value = json.loads(body)
    except (ValueError, RecursionError, TypeError, msgpack.UnpackException) as exc:
        kind = "msgpack" if fmt == MSGPACK else "JSON"
        raise ApiError(400, "malformed_body", f"the body is not valid {kind}: {type(exc).__name__}") from None
    if _SURROGATE_ESCAPE.search(body):
        where = _lone_surrogate(value, "")
        if where:
            where = _printable(where)[:200]
            raise ApiError(400, "malformed_body", f"{where}: text must be valid Unicode; a \\u escape of a lone "
                           "UTF-16 surrogate (d800-dfff without its pair) is not", [{"field": where,
                                                                                     "reason": "lone surrogate"}])
    return value


def _printable(text: str) -> str:
    """``text`` with anything that is not valid Unicode replaced, so that an answer can always carry it."""
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity; they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _valid_text(value: Any) -> Any:
    if isinstance(value, str):
        return _printable(value)
    if isinstance(value, dict):
        return {_valid_text(k): _valid_text(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_valid_text(v) for v in value]
    return value


def encode(payload: Any, fmt: str) -> bytes:
    if fmt == MSGPACK:
        try:
            return msgpack.packb(payload, default=_plain, use_bin_type=True)
        except UnicodeEncodeError:  # echoed client text that is not valid Unicode (a header, a path)
            return msgpack.packb(_valid_text(payload), default=_plain, use_bin_type=True)
    try:
        return json.dumps(payload, default=_plain, allow_nan=False, separators=(",", ":")).encode()
    except ValueError:
        return json.dumps(_finite(json.loads(json.dumps(payload, default=_plain))), separators=(",", ":")).encode()


_RESULTS_KEY = msgpack.packb({"results": []})[:-1]  # a map of one entry, and its key: the array follows


def encode_results(rows: list[bytes], fmt: str) -> bytes:
    """``{"results": rows}`` from rows already packed: spliced as they are for msgpack, decoded for JSON."""
    if fmt == MSGPACK:
        return _RESULTS_KEY + msgpack.Packer().pack_array_header(len(rows)) + b"".join(rows)
    return encode({"results": [msgpack.unpackb(row) for row in rows]}, fmt)


def respond_results(request: web.Request, rows: list[bytes]) -> web.Response:
    """:func:`respond` for a score's packed result rows."""
    fmt = response_format(request)
    return web.Response(body=encode_results(rows, fmt), content_type=fmt)


def respond(request: web.Request, payload: Any, status: int = 200, headers: dict[str, str] | None = None):
    """A response in the format the client asked for."""
    fmt = response_format(request)
    return web.Response(body=encode(payload, fmt), status=status, content_type=fmt, headers=headers)
