"""A wide, seeded fuzz of the real server over real sockets: every route, hostile paths, queries, headers,
content encodings and bodies. Nothing may answer 5xx, every 4xx carries the error body, and the server still
answers afterwards.

Request ``i`` is rebuilt from ``random.Random(f"{FUZZ_SEED}:{i}")`` alone, so the index in a failure report
reproduces it whatever the thread interleaving was. FUZZ_SEED and FUZZ_REQUESTS override the defaults.
"""
from __future__ import annotations

import base64
import collections
import functools
import gzip
import http.client
import itertools
import json
import logging
import os
import random
import re
import threading
import time
import urllib.parse
import zlib
from dataclasses import dataclass
from typing import Any, Callable

import msgpack
import pytest

from model.config import DEFAULT_ACTIONS, INTENTS, SIGNAL_TYPES
from server import ServerConfig, Store
from server.handlers import ROUTES

from .conftest import make_tenants, served_in_thread

SEED = int(os.environ.get("FUZZ_SEED", "20260611"))
REQUESTS = int(os.environ.get("FUZZ_REQUESTS", "10000"))
WORKERS = 8
TIMEOUT_S = 30.0
MAX_BODY_BYTES = 256 * 1024
# aiohttp's parser refuses request lines and header fields over 8190 bytes before the app sees them;
# that is framing, out of scope here, so every target and header value stays under it.
MAX_TARGET_CHARS = 8000
MAX_FAILURES_SHOWN = 25
# A server that stops answering would make every later request wait its full timeout.
MAX_LOST = 10

JSON, MSGPACK = "application/json", "application/msgpack"
ROW_FIELDS = ("user_id", "action", "ts", "event_id", "item_id", "category", "query", "context")
COLUMN_FIELDS = ("user_id", "action", "ts", "event_id", "item_id", "category", "query", "device", "segment",
                 "tz_offset_min")
FEEDBACK_OUTCOMES = ("shown", "clicked", "converted", "dismissed")
SUBSCRIPTION_URL = "https://nudge-fuzz.invalid/hook"  # RFC 2606: .invalid never resolves
BIG_TEXT = "x" * 100_000

# ---- value pools -------------------------------------------------------------------------------------

TEXTS = [
    "", " ", "view", "purchase", "u1", "user_42", "42", "a@b.co", "+1 415 555 2671", "0012345678", "null", "NaN",
    "\ud800", "\udfff", "a\udc80b", "\ud83d\ude00", "\U0001f600", "\U0001f44d\U0001f3fd", "\x00", "a\x00b",
    "\x01\x1f\x7f", "\t\n\r", "\u200f\u202eabc", "\u2066x\u2069", "\ufeff", "\ufffe", "\U0010ffff", "e\u0301",
    "\u0301" * 500, "\u0661\u0662", "\u00b2", "\U0001d7d8\U0001d7d9", "\\", '"', "'; DROP TABLE events; --",
    "é" * 3000, "s1:1", "sig_x", "%ED%A0%80", "x" * 129, BIG_TEXT,
]
INTS = [0, 1, -1, 7, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1,
        10**400, -(10**400)]
FLOATS = [0.5, -0.0, 1e308, -1e308, 5e-324, float("nan"), float("inf"), float("-inf"), 1e-300]
MSGPACK_ONLY = [b"", b"\xff\x00\xfe", b"view", msgpack.ExtType(5, b"abc"), msgpack.ExtType(127, b""),
                msgpack.Timestamp(1, 0), msgpack.Timestamp(2**40, 5)]

# Path segments, already percent-encoded as they go on the wire.
PATH_VALUES = [
    "u1", "42", "user_42", "0", "-1", "-9223372036854775809", "18446744073709551616", "1" * 5000, "9" * 400,
    "%ED%A0%80", "%ED%B2%80", "%FF", "%ff%fe", "%C0%80", "%F4%90%80%80", "%EF%BF%BF", "%00", "a%00b", "%0A", "%7F",
    "%25", "%2F", "%2e%2e", "..", "+", "%20", "a@b.co", "x" * 7000, "%C3%A9", "~!$&'()*,;=:@",
] + [urllib.parse.quote(s, safe="") for s in (
    "\u0661\u0662", "\u00b2", "\U0001d7d9", "\U0001f600", "\u200f\u202eabc", "e\u0301", "\u0301" * 200,
    "+1 415 555 2671", "\u00e9" * 1000, "\U0010ffff",
)]
DEAD_LETTER_IDS = ["0", "1", "2" * 30, "1" * 5000, "\u00b2", "\u0661\u0662", "-1", "+1", " 1", "1.0", "0x1", "%31",
                   "%00", "%FF", "\U0001d7d9"]

# Query values, already percent-encoded. Unicode digits pass str.isdigit() yet int() accepts only some of them.
LIMITS = ["1", "100", "1000", "1001", "0", "-1", "99999999999999999999", "1" * 5000, "NaN", "nan", "inf", "-inf",
          "1e3", "1.5", "%205", "5%20", "%2B5", "1_000", "0x10", "", "%FF", "%00"]
WAITS = ["0", "0.01", "1", "30", "31", "1e308", "1e309", "inf", "-inf", "nan", "NaN", "-0", "-1", "1" * 5000,
         "0x1", "1_0", "", "%FF", "%00"]
for _digits in ("\u0661\u0662", "\u00b2", "\U0001d7d9", "\u0663"):
    LIMITS.append(urllib.parse.quote(_digits))
    WAITS.append(urllib.parse.quote(_digits))
CURSOR_DIGITS = [b"0", b"1", b"9" * 18, b"9" * 19, b"9" * 20, b"9" * 400, b"9" * 4299, b"9" * 4300, b"9" * 4500,
                 "\u0661\u0662".encode(), "\u00b2".encode(), "\U0001d7d9".encode(), b"-1", b"+1", b" 1", b"1\x00",
                 b"", b"0x10", b"1_000", b"\xff"]
CURSOR_TEXTS = [prefix + digits for prefix in (b"s1:", b"s2:") for digits in CURSOR_DIGITS] + [
    b"s3:1", b"S1:1", b"s1", b"", b"\xff\xfe", b"s2:1:2", b"s1:1\ns2:2"]
CURSOR_GARBAGE = ["a", "====", "!!!", "%FF", "%00", "%ED%A0%80", "x" * 6000, "s1:1",
                  urllib.parse.quote("\u0661\u0662")]
JUNK_QUERIES = ["x=1", "%FF=%FE", "a", "=", "&&&", "a=%00", "limit=1&limit=2", "q=" + "x" * 3000, "%ED%A0%80=1",
                "a%5Bb%5D=c", "a=1;b=2", "+=+", "after=&limit=&wait_s=", "%00=%00", "x=" + "%FF" * 500]

# Header values as bytes; None leaves the header out. The key itself is added by _auth.
AUTH_JUNK = [None, b"", b"Bearer", b"Bearer ", b"Bearer    ", b"Basic dXNlcjpwdw==", b"Token abc", b"Bearer \xff\xfe",
             b"\xff\xfe", b"Bearer " + "é".encode(), b"Bearer " + b"k" * 7000, b"Bearer nk_" + b"A" * 43,
             b"Bearer\tnk_x", "Bearer \u0661\u0662".encode()]
CONTENT_TYPES = [None, b"application/json", b"application/json; charset=utf-8", b"application/msgpack",
                 b"application/x-msgpack", b"application/vnd.msgpack", b"APPLICATION/JSON", b"application/problem+json",
                 b"text/plain", b"multipart/form-data; boundary=x", b"application/x-www-form-urlencoded", b"", b";",
                 b"application/json;;;", b"application/json; charset=\xff", b"\xff\xfe/\xfd", b"*/*",
                 b"application/" + b"x" * 5000, "application/jsón".encode(), b"application/msgpack; q=\xff"]
ACCEPTS = [None, b"application/json", b"application/msgpack", b"application/x-msgpack", b"*/*", b"text/html",
           b"application/json;q=x", b"application/msgpack;q=0, application/json;q=0", b"application/msgpack;q=nan",
           b"application/json;q=inf", b"application/json;q=-1", b"application/msgpack;q=1e400", b",,,;;;", b"\xff\xfe",
           "application/msgpack;q=\u0661".encode(), b"application/msgpack; q=0.5, application/json; q=0.9",
           b"a" * 6000, b"application/msgpack;q=" + b"9" * 5000]
REQUEST_IDS = [b"req-1", b"r" * 7000, b"\xff\xfe", "é-ü-\U0001f600".encode(), b"  x  ", b"a,b", b'"quoted"',
               "\u202e".encode(), b"\xed\xa0\x80"]
ENCODINGS_BROKEN = ["br", "zstd", "compress", "x-fuzz", "identity", "", "gzip;q=1", "GZIP", "x-gzip", "*",
                    "deflate, gzip", "gzip, br"]
UNKNOWN_TARGETS = [
    "/", "/v1", "/v1/", "/v2/events", "/v1/events/", "/V1/EVENTS", "//v1/events", "/v1/users/", "/v1/users/a/b",
    "/v1/./events", "/v1/../healthz", "/v1/%2e%2e/healthz", "/%FF", "/v1/%ED%A0%80", "/v1/events%00",
    "/v1/subscriptions//test", "/v1/subscriptions/x/dead-letters/", "/healthz/", "/openapi.json/..",
    "/v1/" + "x" * 7000, "/v1/signals/", "/favicon.ico", "http://127.0.0.1/v1/stats", "/v1/events?",
]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "PROPFIND"]
# Every host here is loopback, private, unspecified, never resolvable or not a host name: no subscription the
# server accepts can reach a machine outside this one.
WEBHOOK_URLS = [
    "https://127.0.0.1/h", "https://localhost/h", "http://10.0.0.1/", "https://[::1]/", "https://169.254.169.254/x",
    "https://user:pw@127.0.0.1/", "https://127.0.0.1:99999/", "https://127.0.0.1:-1/", "https://0/",
    "https://2130706433/", "https://[::ffff:127.0.0.1]/", "https://nudge-fuzz.invalid/", "https://é.invalid/",
    "https://" + "a" * 64 + ".invalid/", "https://a..b.invalid/", "https://\ud800.invalid/", "https://\x00/",
    "https://ex ample.invalid/", "https://xn--.invalid/", "https://" + "a." * 200 + "invalid/", "ftp://127.0.0.1/",
    "", "https://", "https:///x", "javascript:alert(1)", "https://[::1/", "https://%31%32%37.0.0.1/",
    "https://127.0.0.1/" + "p" * 3000, "https://127.0.0.1/\U0001f600", "https://xn--nxasmq6b.invalid/", "https://.invalid/",
]


def _hostile(rng: random.Random, now: float, depth: int = 0) -> Any:
    """One value from the plausible-and-hostile pool, sometimes a container of more."""
    kind = rng.random()
    if kind < 0.35:
        return rng.choice(TEXTS)
    if kind < 0.55:
        return rng.choice(INTS)
    if kind < 0.68:
        return rng.choice(FLOATS + [now, now - 8 * 86400, now * 1000, now + 10**6])
    if kind < 0.74:
        return rng.choice([None, True, False])
    if kind < 0.80:
        return rng.choice(MSGPACK_ONLY)
    if kind < 0.83:
        return _deep(rng.choice([50, 900, 2000, 50_000]))
    if depth >= 3:
        return None
    if kind < 0.92:
        return [_hostile(rng, now, depth + 1) for _ in range(rng.randint(0, 4))]
    return {_key(rng): _hostile(rng, now, depth + 1) for _ in range(rng.randint(0, 4))}


def _key(rng: random.Random) -> Any:
    return rng.choice(["x", "", "user_id", "\ud800", "\x00", "é", "k" * 300, 1, -1, 2**64, 1.5, None, True, b"k"])


def _field(rng: random.Random, plausible: list, now: float) -> Any:
    return rng.choice(plausible) if rng.random() < 0.75 else _hostile(rng, now)


def _plausible_events(now: float) -> dict[str, list]:
    return {
        "user_id": ["u1", "u2", "u3", "user_42", "42", 42, "fuzz-user"],
        "action": ["view", "search", "add_to_cart", "purchase", "help_view", "form_start"],
        "ts": [now, now - 60, now - 3600, None],
        "event_id": [None, "e1", "e2"],
        "item_id": [None, "sku-1", "i9", 17],
        "category": [None, "shoes", "books"],
        "query": [None, "red shoes", ""],
        "device": ["mobile", "desktop", "tablet", "other", None],
        "segment": [None, None, "vip"],
        "tz_offset_min": [0, 60, -300, None],
    }


def _ingest_body(rng: random.Random, now: float) -> Any:
    plausible = _plausible_events(now)
    n = rng.choice([1, 1, 2, 5, 20]) if rng.random() < 0.98 else 10_001
    if rng.random() < 0.6:
        if n > 10_000:
            return {"events": [{"user_id": "u1", "action": "view"}] * n}
        events = []
        for _ in range(n):
            if rng.random() < 0.05:
                events.append(_hostile(rng, now))
                continue
            fields = [f for f in ROW_FIELDS if f in ("user_id", "action") or rng.random() < 0.3]
            event = {f: _field(rng, plausible.get(f, [None]), now) for f in fields if f != "context"}
            if "context" in fields:
                ctx = {f: _field(rng, plausible[f], now) for f in ("device", "segment", "tz_offset_min")
                       if rng.random() < 0.5}
                event["context"] = ctx if rng.random() < 0.9 else _hostile(rng, now)
            if rng.random() < 0.03:
                event[_key(rng)] = _hostile(rng, now)
            events.append(event)
        body: dict = {"events": events}
    else:
        fields = [f for f in COLUMN_FIELDS if f in ("user_id", "action") or rng.random() < 0.3]
        columns = {}
        for f in fields:
            length = n if rng.random() < 0.95 else rng.randint(0, 3)
            if n > 10_000:
                columns[f] = [plausible[f][0]] * length
            else:
                columns[f] = [_field(rng, plausible[f], now) for _ in range(length)]
        if rng.random() < 0.05:
            columns[_key(rng)] = _hostile(rng, now)
        body = {"columns": columns if rng.random() < 0.95 else _hostile(rng, now)}
    if rng.random() < 0.03:
        body[_key(rng)] = _hostile(rng, now)
    return body


def _score_body(rng: random.Random, now: float) -> Any:
    users = []
    for _ in range(rng.choice([1, 1, 3, 10])):
        if rng.random() < 0.05:
            users.append(_hostile(rng, now))
            continue
        user = {"user_id": _field(rng, ["u1", "u2", "user_42", 42, "fresh-user"], now)}
        if rng.random() < 0.3:
            user["state"] = {k: _field(rng, ["shoes", "red shoes", "/checkout", None], now)
                             for k in rng.sample(["category", "query", "page", "x"], rng.randint(0, 3))}
        if rng.random() < 0.03:
            user[_key(rng)] = _hostile(rng, now)
        users.append(user)
    body: dict = {"users": users if rng.random() < 0.95 else _hostile(rng, now)}
    if rng.random() < 0.3:
        body["explain"] = _field(rng, [True, False], now)
    return body


def _feedback_body(rng: random.Random, now: float) -> Any:
    items = [{"signal_id": _field(rng, ["sig_0", "sig_x", "s" * 128], now),
              "outcome": _field(rng, list(FEEDBACK_OUTCOMES), now),
              **({"ts": _field(rng, [now, now - 10], now)} if rng.random() < 0.5 else {})}
             for _ in range(rng.choice([1, 2, 5]))]
    return {"feedback": items if rng.random() < 0.95 else _hostile(rng, now)}


def _subscription_body(rng: random.Random, now: float) -> Any:
    url = rng.choice(WEBHOOK_URLS) if rng.random() < 0.9 else _hostile(rng, now)
    body: dict = {"url": url}
    if rng.random() < 0.5:
        body["types"] = _field(rng, [list(SIGNAL_TYPES[:2]), ["offer_discount"], [], ["nope"]], now)
    return body


def _config_body(rng: random.Random, now: float) -> Any:
    harmless = {
        "horizon_s": [3600, 1800.0], "prior_strength": [10, 5.5], "window_size": [32, 16], "seed": [0, 7],
        "allow_backfill": [True, False], "thresholds": [{"needs_help": 0.3}, {i: 0.5 for i in INTENTS}],
        "policy": [{"needs_help": "proactive_support"}, {"form_intent": "none"}], "discount_tiers_pct": [[5, 10, 15]],
        "content_map": [{"default": ["c1"]}, {}], "holdout_share": [0.1, 0.0], "cooldown_s": [1800, 0],
        "daily_cap": [3], "min_score": [0.0], "support_channel": ["chat"], "workflow": ["prefill_form"],
        "recommendations": [5], "segments": [[], ["vip"]], "actions": [list(DEFAULT_ACTIONS)],
        "conversion_action": ["purchase"], "prior_means": [{"view": 0.2}], "signal_horizon_s": [3600],
        "session_gap_s": [1800], "allowed_lateness_s": [300], "forget_half_life_s": [604800],
        "recency_half_life_s": [1800], "discount_codes": [{}, {"5.0": "SAVE5"}],
    }
    body: dict = {}
    for name in rng.sample(sorted(harmless), rng.randint(1, 3)):
        if rng.random() < 0.6:
            body[name] = rng.choice(harmless[name])
        elif rng.random() < 0.5 and isinstance(harmless[name][0], dict):
            key = rng.choice(list(INTENTS) + ["view", "default"]) if rng.random() < 0.75 else _key(rng)
            body[name] = {key: _hostile(rng, now)}
        elif rng.random() < 0.5 and isinstance(harmless[name][0], list):
            body[name] = [_hostile(rng, now) for _ in range(rng.randint(1, 3))]
        else:
            body[name] = _hostile(rng, now)
    if rng.random() < 0.05:
        body[_key(rng)] = _hostile(rng, now)
    return body if rng.random() < 0.95 else _hostile(rng, now)


BODY_ROUTES: dict[tuple[str, str], Callable[[random.Random, float], Any]] = {
    ("POST", "/v1/events"): _ingest_body,
    ("POST", "/v1/score"): _score_body,
    ("POST", "/v1/feedback"): _feedback_body,
    ("POST", "/v1/subscriptions"): _subscription_body,
    ("PUT", "/v1/config"): _config_body,
}
BODY_ROUTE_WEIGHTS = [3, 3, 1, 1, 1.5]

# ---- encoding ----------------------------------------------------------------------------------------


def _deep(depth: int) -> str:
    """A placeholder that ``encode`` replaces with raw nesting, deeper than json.dumps would write itself."""
    return f"\x00deep:{depth}\x00"


_DEEP_JSON = re.compile(r'"\\u0000deep:(\d+)\\u0000"')
_DEEP_MSGPACK = re.compile(rb"[\xa0-\xbf]\x00deep:(\d+)\x00")


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, msgpack.ExtType):
        return [value.code, value.data.decode("latin-1")]
    if isinstance(value, msgpack.Timestamp):
        return value.to_unix()
    raise TypeError(type(value).__name__)


def _msgpack_safe(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return str(value)
    if isinstance(value, list):
        return [_msgpack_safe(v) for v in value]
    if isinstance(value, dict):
        return {_msgpack_safe(k): _msgpack_safe(v) for k, v in value.items()}
    return value


def encode(value: Any, fmt: str) -> bytes:
    """``value`` as JSON (lone surrogates as escapes, NaN literals, huge ints) or msgpack (bin, ext, bad UTF-8)."""
    if fmt == MSGPACK:
        packed = msgpack.packb(_msgpack_safe(value), use_bin_type=True, unicode_errors="surrogatepass")
        return _DEEP_MSGPACK.sub(lambda m: b"\x91" * int(m.group(1)) + b"\xc0", packed)
    text = json.dumps(value, default=_json_default, skipkeys=True)
    return _DEEP_JSON.sub(lambda m: "[" * int(m.group(1)) + "]" * int(m.group(1)), text).encode()


def _mangle(rng: random.Random, body: bytes) -> tuple[bytes, str]:
    """A structurally valid body made invalid in one of the ways bodies break in transit."""
    choice = rng.randrange(6)
    if choice == 0 and body:
        return body[: rng.randrange(len(body))], "truncated"
    if choice == 1:
        return body + rng.choice([b"}", b" trailing", b"\x00", b"\xc1"]), "trailing junk"
    if choice == 2 and body:
        at = rng.randrange(len(body))
        return body[:at] + rng.choice([b"\xff", b"\xed\xa0\x80", b"\xc0\x80", b"\x80"]) + body[at:], "invalid utf-8"
    if choice == 3:
        return b"\xef\xbb\xbf" + body, "BOM"
    if choice == 4:
        return b"", "empty"
    return body.replace(b"{", b"[", 1), "brace swapped"


def _raw_body(rng: random.Random) -> tuple[bytes, str]:
    """Bytes that are no valid body at all, or only barely one."""
    depth = rng.choice([100, 1000, 100_000])
    table = [
        b"", rng.randbytes(rng.randint(1, 2000)), b"[" * depth, b"[" * depth + b"]" * depth, b'{"a":' * depth,
        b"\x91" * depth + b"\xc0", b"\x81\xa1a" * depth + b"\xc0", b"{", b'{"events": [', b"null", b"1" * 5000,
        b"1" * 4000, b"1e999999", b"-", b"NaN", b"Infinity", b'"\\ud800"', b'{"\\ud800": 1}', b'{"a":1} trailing',
        b'{"events": "\xff"}', "{}".encode("utf-16"), b"\x00", b"\xdf\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xffx",
        b"\xc6\xff\xff\xff\xff", b"\xd6\xff\x00\x00\x00\x00", b"\xc7\x03\xff\x00\x00\x00", b"\xc1", b"\x80\xc0",
        b'{"events": "' + b"x" * 300_000 + b'"}', b"[" + b"1," * 120_000 + b"1]",
        b'{"events": [], "events": [{"user_id": "u1", "action": "view"}]}',
    ]
    index = rng.randrange(len(table))
    return table[index], f"raw #{index}"


@functools.cache
def _bombs() -> dict[str, bytes]:
    """Compression bombs, built once: each inflates to tens of MB from about 50 KB."""
    zeros = b"\0" * 50_000_000
    return {
        "gzip": gzip.compress(zeros, 9),
        "deflate": zlib.compress(zeros, 9),
        "gzip-json": gzip.compress(b'{"events": [' + b" " * 20_000_000 + b"]}", 9),
        "gzip-300k": gzip.compress(b'{"events": "' + b"x" * 300_000 + b'"}', 9),
    }


def _raw_deflate(body: bytes) -> bytes:
    packer = zlib.compressobj(1, zlib.DEFLATED, -15)
    return packer.compress(body) + packer.flush()


def _content_encoding(rng: random.Random, body: bytes) -> tuple[bytes, bytes, str]:
    """(Content-Encoding value, the body as sent, what it is): right, wrong, stacked and bombed encodings."""
    bombs = _bombs()
    table = [
        (b"gzip", lambda: gzip.compress(body, 1), "gzip"),
        (b"deflate", lambda: zlib.compress(body, 1), "zlib deflate"),
        (b"deflate", lambda: _raw_deflate(body), "raw deflate"),
        (b"gzip", lambda: zlib.compress(body, 1), "zlib as gzip"),
        (b"gzip", lambda: body, "plain as gzip"),
        (b"deflate", lambda: body, "plain as deflate"),
        (b"gzip", lambda: gzip.compress(body, 1)[:-rng.randint(1, 12)], "truncated gzip"),
        (b"gzip", lambda: bombs["gzip"], "gzip bomb"),
        (b"deflate", lambda: bombs["deflate"], "deflate bomb"),
        (b"gzip", lambda: bombs["gzip-json"], "gzip JSON bomb"),
        (b"gzip", lambda: bombs["gzip-300k"], "gzip over the limit"),
        (b"gzip, gzip", lambda: gzip.compress(gzip.compress(body, 1), 1), "gzip twice"),
        (b"gzip, gzip", lambda: gzip.compress(body, 1), "gzip once, labelled twice"),
        (b"gzip, gzip", lambda: gzip.compress(bombs["gzip"], 1), "bomb in gzip"),
        (b"\xff\xfe", lambda: body, "garbage encoding"),
    ] + [(name.encode(), lambda: body, name or "empty encoding") for name in ENCODINGS_BROKEN]
    value, make, what = rng.choice(table)
    return value, make(), what


# ---- requests ----------------------------------------------------------------------------------------


def _short(value: Any, limit: int) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}...({len(value)} long)"


@dataclass
class Sent:
    """One fuzz request as it went on the wire."""

    index: int
    route: str
    method: str
    target: str
    headers: list[tuple[str, bytes]]
    body: bytes = b""
    chunked: bool = False
    what: str = ""

    def size(self) -> int:
        return len(self.target) + len(self.body) + sum(len(k) + len(v) for k, v in self.headers)

    def describe(self) -> str:
        headers = ", ".join(f"{k}: {_short(v, 70)}" for k, v in self.headers)
        framing = "chunked" if self.chunked else f"{len(self.body)} B"
        return (f"#{self.index} {self.method} {_short(self.target, 150)}\n      headers: {headers}\n"
                f"      body ({framing}, {self.what or 'none'}): {_short(self.body, 200)}")


@dataclass(frozen=True)
class Target:
    """What the fuzz may aim at besides the routes: the seeded subscription and dead letter, and the key."""

    key: bytes
    subscription_id: str
    dead_letter_id: int


def _fill(rng: random.Random, template: str, method: str, target: Target) -> str:
    def value(match: re.Match) -> str:
        name = match.group(1)
        if name == "subscription_id" and method != "DELETE" and rng.random() < 0.6:
            return target.subscription_id
        if name == "dead_letter_id":
            roll = rng.random()
            if roll < 0.3:
                return str(target.dead_letter_id)
            if roll < 0.8:
                return urllib.parse.quote(rng.choice(DEAD_LETTER_IDS), safe="%")
        if name == "subscription_id" and rng.random() < 0.3:
            return rng.choice(["sub_", "sub_" + "0" * 24, target.subscription_id + "x", target.subscription_id.upper()])
        return rng.choice(PATH_VALUES)

    return re.sub(r"\{([^}]+)\}", value, template)


def _signals_query(rng: random.Random) -> str:
    params = []
    if rng.random() < 0.7:
        if rng.random() < 0.75:
            raw = rng.choice(CURSOR_TEXTS)
            cursor = (base64.b64encode if rng.random() < 0.2 else base64.urlsafe_b64encode)(raw).decode()
            cursor = rng.choice([cursor, cursor.rstrip("="), cursor + "=" * rng.randint(1, 5)])
            params.append("after=" + urllib.parse.quote(cursor, safe=""))
        else:
            params.append("after=" + rng.choice(CURSOR_GARBAGE))
    if rng.random() < 0.6:
        params.append("limit=" + rng.choice(LIMITS))
    if rng.random() < 0.6:
        params.append("wait_s=" + rng.choice(WAITS))
    if rng.random() < 0.1:
        params.append(rng.choice(JUNK_QUERIES))
    rng.shuffle(params)
    return "&".join(params)


def _auth(rng: random.Random, key: bytes) -> bytes | None:
    roll = rng.random()
    if roll < 0.82:
        return b"Bearer " + key
    if roll < 0.9:
        return rng.choice([b"bearer " + key, b"BEARER " + key, b"Bearer  " + key, b"Bearer " + key + b" ",
                           b"Bearer " + key + b"junk", b"Bearer " + key + b" junk", b"Bearer " + key[:-1],
                           b"Bearer " + key + b"\xff", b"Bearer " + key + "\u0661".encode(), key,
                           b"Bearer " + key + b"," + key])
    return rng.choice(AUTH_JUNK)


def build_request(index: int, target: Target) -> Sent:
    """Request ``index`` of the run: a function of the seed and the index only."""
    rng = random.Random(f"{SEED}:{index}")
    now = time.time()
    roll = rng.random()
    value: Any = None
    fmt = rng.choice([JSON, JSON, MSGPACK])
    if roll < 0.55:
        method, path = rng.choices(list(BODY_ROUTES), weights=BODY_ROUTE_WEIGHTS)[0]
        route = path
        value = BODY_ROUTES[method, path](rng, now)
    elif roll < 0.68:
        method, route = "GET", "/v1/signals"
        path = route + "?" + _signals_query(rng)
    elif roll < 0.94:
        method, route, _ = rng.choice(ROUTES)
        path = _fill(rng, route, method, target)
        if (method, route) in BODY_ROUTES and rng.random() < 0.5:
            value = BODY_ROUTES[method, route](rng, now)
    else:
        route = "(unknown route or method)"
        if rng.random() < 0.5:
            method, path = rng.choice(METHODS), rng.choice(UNKNOWN_TARGETS)
        else:
            allowed_method, template, _ = rng.choice(ROUTES)
            method = rng.choice([m for m in METHODS if m != allowed_method])
            path = _fill(rng, template, method, target)
    if rng.random() < 0.1:
        path += ("&" if "?" in path else "?") + rng.choice(JUNK_QUERIES)
    if len(path) > MAX_TARGET_CHARS:
        path = path.split("?", 1)[0][:MAX_TARGET_CHARS]

    what = ""
    if value is not None:
        body = encode(value, fmt)
        what = f"{fmt.split('/')[1]} {route}"
        if rng.random() < 0.1:
            body, mangled = _mangle(rng, body)
            what += f", {mangled}"
    elif rng.random() < (0.5 if method in ("POST", "PUT", "PATCH") else 0.1):
        body, what = _raw_body(rng)
    else:
        body = b""

    headers: list[tuple[str, bytes]] = []
    auth = _auth(rng, target.key)
    if auth is not None:
        headers.append(("Authorization", auth))
    content_type = fmt.encode() if rng.random() < 0.75 else rng.choice(CONTENT_TYPES)
    if content_type is not None and (body or rng.random() < 0.2):
        headers.append(("Content-Type", content_type))
    accept = rng.choice(ACCEPTS) if rng.random() < 0.5 else None
    if accept is not None:
        headers.append(("Accept", accept))
    if body and rng.random() < 0.15 or not body and rng.random() < 0.01:
        encoding, body, how = _content_encoding(rng, body)
        headers.append(("Content-Encoding", encoding))
        what += f", {how}"
    if rng.random() < 0.15:
        headers.append(("X-Request-Id", rng.choice(REQUEST_IDS)))
    chunked = bool(body) and rng.random() < 0.05
    return Sent(index, route, method, path, headers, body, chunked, what.lstrip(", "))


# ---- the client --------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    content_type: str
    request_id: str | None
    body: bytes


class Client:
    """One keep-alive connection per worker; a new one when the server closes it."""

    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)

    def send(self, sent: Sent) -> Answer:
        """The server's answer; a connection the server had already closed is retried once on a fresh one."""
        for attempt in range(2):
            reused = self.conn.sock is not None
            try:
                return self._once(sent)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                if not reused or attempt:
                    raise
        raise AssertionError("unreachable")

    def _once(self, sent: Sent) -> Answer:
        conn = self.conn
        conn.putrequest(sent.method, sent.target, skip_accept_encoding=True)
        for name, value in sent.headers:
            conn.putheader(name, value)
        if sent.chunked:
            conn.putheader("Transfer-Encoding", "chunked")
            pieces = [sent.body[i:i + 7919] for i in range(0, len(sent.body), 7919)]
            conn.endheaders(pieces, encode_chunked=True)
        else:
            if sent.body or sent.method in ("POST", "PUT", "PATCH"):
                conn.putheader("Content-Length", str(len(sent.body)))
            conn.endheaders(sent.body or None)
        resp = conn.getresponse()
        body = resp.read()
        return Answer(resp.status, resp.getheader("Content-Type", ""), resp.getheader("X-Request-Id"), body)

    def close(self) -> None:
        self.conn.close()


def error_problem(answer: Answer, method: str) -> str | None:
    """What is wrong with an answer: a 5xx, or a 4xx without the one error body; None when it is fine."""
    if answer.status >= 500:
        return "server error"
    if answer.status < 400 or method == "HEAD":
        return None
    kind = answer.content_type.split(";", 1)[0].strip().lower()
    try:
        if kind == JSON:
            decoded = json.loads(answer.body)
        elif kind == MSGPACK:
            decoded = msgpack.unpackb(answer.body)
        else:
            return f"4xx with Content-Type {answer.content_type!r}"
    except ValueError as exc:
        return f"4xx body does not decode as {kind}: {exc}"
    error = decoded.get("error") if isinstance(decoded, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("code"), str) or not error["code"] \
            or "message" not in error:
        return "4xx body is not {error: {code, message}}"
    return None


def _code(answer: Answer) -> str:
    kind = answer.content_type.split(";", 1)[0].strip().lower()
    try:
        decoded = json.loads(answer.body) if kind == JSON else msgpack.unpackb(answer.body) if kind == MSGPACK else None
        return str(decoded["error"]["code"])
    except (ValueError, TypeError, KeyError):
        return answer.body.split(b"\n", 1)[0][:80].decode("utf-8", "replace")


# ---- the live server ---------------------------------------------------------------------------------


class ErrorLog(logging.Handler):
    """What the server logs at ERROR, with tracebacks, keyed by the request id its message names."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        self.records: list[tuple[str | None, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        match = re.search(r"\(request (.*)\)$", record.getMessage())
        self.records.append((match.group(1) if match else None, self.format(record)))

    def by_request(self) -> dict[str, str]:
        """Tracebacks by request id; an id clients sent with several failing requests names none of them."""
        counts = collections.Counter(rid for rid, _ in self.records)
        return {rid: text for rid, text in self.records if rid and counts[rid] == 1}


@dataclass
class Live:
    port: int
    target: Target
    other_key: bytes
    errors: ErrorLog


def _request(port: int, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> Answer:
    client = Client(port)
    try:
        return client.send(Sent(-1, path, method, path, list((headers or {}).items()), body))
    finally:
        client.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """The real app on a real socket, served from a thread, with a subscription and a dead letter to aim at."""
    data_dir = tmp_path_factory.mktemp("fuzz_wide")
    keys = make_tenants(data_dir)
    store = Store(data_dir)
    try:
        acme = next(t for t in store.tenants() if t.name == "acme")
        sub = store.create_subscription(acme.id, SUBSCRIPTION_URL, None, 0)
        store.dead_letter_batch(sub.id, 0, 0, 0, 1, "seeded by the fuzz")
        dead_letter_id = store.dead_letters(sub.id)[0]["id"]
    finally:
        store.close()
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    config = ServerConfig(
        data_dir=data_dir, backend="numpy", rate_limit_per_s=0, max_body_bytes=MAX_BODY_BYTES,
        # Load shedding answers 503 by design; off here, so that every 5xx the fuzz meets is a fault.
        max_loop_lag_ms=0, max_queue_delay_ms=0, max_apply_delay_ms=0,
        # Long polls end quickly: the fuzz is about what requests carry, not how long they may wait.
        max_poll_wait_s=0.05, webhook_timeout_s=2.0,
    )
    with served_in_thread(config) as port:
        yield Live(port, Target(keys["acme"].encode(), sub.id, dead_letter_id), keys["globex"].encode(), errors)
    logging.getLogger().removeHandler(errors)


# ---- content encodings, as the app means to handle them ----------------------------------------------


def _ingest(live: Live, body: bytes, encoding: bytes, *, authorized: bool = True) -> Answer:
    """POST /v1/events as the tenant the fuzz leaves alone."""
    headers = {"Content-Type": JSON.encode(), "Content-Encoding": encoding}
    if authorized:
        headers["Authorization"] = b"Bearer " + live.other_key
    return _request(live.port, "POST", "/v1/events", body, headers)


def test_ingest_accepts_a_gzip_body(live):
    events = {"events": [{"user_id": "gz-1", "action": "view"}, {"user_id": "gz-2", "action": "search"}]}
    answer = _ingest(live, gzip.compress(json.dumps(events).encode()), b"gzip")
    assert answer.status == 200, answer.body[:300]
    assert json.loads(answer.body)["accepted"] == 2


@pytest.mark.parametrize("encoding", [b"br", b"zstd", b"compress", b"x-fuzz"])
def test_ingest_refuses_unknown_content_encodings_with_415(live, encoding):
    answer = _ingest(live, json.dumps({"events": [{"user_id": "u1", "action": "view"}]}).encode(), encoding)
    assert answer.status == 415, answer.body[:300]
    assert error_problem(answer, "POST") is None, answer.body[:300]


def test_ingest_refuses_a_gzip_bomb_with_413_after_authentication(live):
    bomb = _bombs()["gzip"]
    answer = _ingest(live, bomb, b"gzip")
    assert answer.status == 413, answer.body[:300]
    assert error_problem(answer, "POST") is None, answer.body[:300]
    assert _ingest(live, bomb, b"gzip", authorized=False).status == 401


# ---- the fuzz ----------------------------------------------------------------------------------------


@dataclass
class Failure:
    sent: Sent
    problem: str
    answer: Answer | None
    cause: str


def _run_worker(live: Live, indices, stop: threading.Event, answers: list, failures: list, crashes: list) -> None:
    client = Client(live.port)
    try:
        for index in indices:
            if stop.is_set() or index >= REQUESTS:
                return
            sent = build_request(index, live.target)
            try:
                answer = client.send(sent)
            except TimeoutError:
                failures.append(Failure(sent, f"no answer within {TIMEOUT_S:g} s", None, "timeout"))
            except (OSError, http.client.HTTPException) as exc:
                failures.append(Failure(sent, "connection lost without an answer", None, type(exc).__name__))
            else:
                answers.append((sent.route, sent.method, answer.status))
                problem = error_problem(answer, sent.method)
                if problem:
                    failures.append(Failure(sent, problem, answer, _code(answer)))
                continue
            client.close()
            client = Client(live.port)
            if sum(f.answer is None for f in failures) >= MAX_LOST:
                stop.set()
    except Exception as exc:  # a fault of the fuzz itself: stop everything and say so
        crashes.append(exc)
        stop.set()
    finally:
        client.close()


def _cause(failure: Failure, tracebacks: dict[str, str]) -> str:
    """The server's exception where its log names the request, else the error code or the body's first line."""
    answer = failure.answer
    if answer is not None and answer.status == 500 and answer.request_id in tracebacks:
        return tracebacks[answer.request_id].strip().splitlines()[-1][:160]
    return failure.cause


def _report(failures: list[Failure], live: Live, summary: str) -> str:
    tracebacks = live.errors.by_request()
    groups: dict[tuple, list[Failure]] = collections.defaultdict(list)
    for failure in failures:
        status = failure.answer.status if failure.answer else "no answer"
        groups[failure.sent.route, status, failure.problem, _cause(failure, tracebacks)].append(failure)
    lines = [f"{len(failures)} failing requests in {len(groups)} groups (FUZZ_SEED={SEED}; {summary})"]
    ranked = sorted(groups.items(), key=lambda g: -len(g[1]))
    for (route, status, problem, cause), members in ranked[:MAX_FAILURES_SHOWN]:
        example = min(members, key=lambda f: f.sent.size())
        lines.append(f"\n[{len(members)}x] {route} -> {status} ({problem}): {cause}")
        lines.append(f"    e.g. {example.sent.describe()}")
        if example.answer is not None:
            lines.append(f"    answer: {_short(example.answer.body, 300)}")
    if len(ranked) > MAX_FAILURES_SHOWN:
        lines.append(f"\n... and {len(ranked) - MAX_FAILURES_SHOWN} more groups")
    seen: dict[str, str] = {}
    for _, text in live.errors.records:
        seen.setdefault(text.strip().splitlines()[-1], text)
    if seen:
        lines.append(f"\n{len(seen)} distinct errors in the server log (last lines of each, first 10):")
        for text in list(seen.values())[:10]:
            lines.append("  | " + "\n  | ".join(text.strip().splitlines()[-14:]))
    return "\n".join(lines)


def _still_answering(live: Live) -> list[Failure]:
    """Failures of /healthz and of one valid score, asked after the fuzz."""
    body = json.dumps({"users": [{"user_id": "after"}]}).encode()
    checks = [
        (Sent(-1, "/healthz", "GET", "/healthz", []), lambda answer: answer.status == 200),
        (Sent(-1, "/v1/score", "POST", "/v1/score",
              [("Authorization", b"Bearer " + live.target.key), ("Content-Type", JSON.encode())], body),
         lambda answer: answer.status == 200 and json.loads(answer.body)["results"][0]["user_id"] == "after"),
    ]
    failures = []
    for sent, fine in checks:
        client = Client(live.port)
        try:
            answer = client.send(sent)
        except (OSError, http.client.HTTPException) as exc:
            failures.append(Failure(sent, "no answer after the fuzz", None, type(exc).__name__))
            continue
        finally:
            client.close()
        if not fine(answer):
            failures.append(Failure(sent, "wrong answer after the fuzz", answer, _code(answer)))
    return failures


@pytest.mark.slow
def test_fuzz_wide_never_fails_inside_and_keeps_answering(live):
    _bombs()
    indices = itertools.count()
    stop = threading.Event()
    answers: list[tuple[str, str, int]] = []
    failures: list[Failure] = []
    crashes: list[Exception] = []
    started = time.perf_counter()
    workers = [threading.Thread(target=_run_worker, args=(live, indices, stop, answers, failures, crashes))
               for _ in range(WORKERS)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wall_s = time.perf_counter() - started
    if crashes:
        raise crashes[0]

    histogram = collections.Counter(status for _, _, status in answers)
    summary = (f"{len(answers)} answered of {REQUESTS} in {wall_s:.1f} s ({len(answers) / wall_s:.0f}/s), "
               f"statuses {dict(sorted(histogram.items()))}")
    print(f"\nfuzz_wide: seed {SEED}: {summary}")

    failures += _still_answering(live)
    missed = {route for _, route, _ in ROUTES} - {route for route, _, _ in answers}
    assert not missed, f"routes the fuzz never reached: {sorted(missed)}"
    assert not failures, _report(failures, live, summary)
