"""Inputs that used to answer 500, or to stall the server: each now gets a 4xx with a code, or costs nothing."""
import asyncio
import base64
import gzip
import json
import logging
import time
import zlib

import pytest

JSON = "application/json"


async def raw_request(port: int, head: bytes, body: bytes = b"") -> tuple[int, dict]:
    """Send bytes as they are (headers need not be UTF-8) and read one answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), json.loads(payload) if payload.startswith(b"{") else {"raw": payload}


async def test_a_non_utf8_authorization_header_is_a_401_with_a_code(start, caplog):
    s = await start()
    for key in (b"Bearer \xff\xfe\xfd", b"Bearer nk_\xc3\x28", b"Bearer " + b"k" * 5000):
        status, body = await raw_request(s.client.port, b"POST /v1/score HTTP/1.1\r\nHost: x\r\nAuthorization: " + key
                                         + b"\r\nContent-Type: application/json", b'{"users": [{"user_id": "a"}]}')
        assert status == 401 and body["error"]["code"] == "unauthorized"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_an_odd_request_id_is_replaced_not_echoed(start):
    s = await start()
    status, _ = await raw_request(s.client.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-Id: \xff\xfe")
    assert status == 200
    r = await s.acme.call("GET", "/healthz", headers={"X-Request-Id": "abc.123:x-y"})
    assert r.headers["X-Request-Id"] == "abc.123:x-y"
    r = await s.acme.call("GET", "/healthz", headers={"X-Request-Id": "has space" + "x" * 200})
    assert r.status == 200 and r.headers["X-Request-Id"] != "has space" + "x" * 200


@pytest.mark.parametrize("events, field", [
    ([{"user_id": "u", "action": "view", "ts": 10**400}], "ts"),
    ([{"user_id": "u", "action": "view", "ts": -(10**400)}], "ts"),
    ([{"user_id": 10**30, "action": "view"}], "user_id"),
])
async def test_huge_json_integers_are_a_400(start, events, field):
    s = await start()
    r = await s.acme.call("POST", "/v1/events", raw=json.dumps({"events": events}).encode(), fmt=JSON)
    assert r.status == 400 and r.body["error"]["code"] == "invalid_event"
    assert r.body["error"]["details"][0]["field"] == field
    r = await s.acme.call("POST", "/v1/feedback", raw=b'{"feedback": [{"signal_id": "x", "outcome": "shown", "ts": '
                          + b"9" * 400 + b"}]}", fmt=JSON)
    assert r.status == 400 and r.body["error"]["code"] == "invalid_feedback"


@pytest.mark.parametrize("path, body", [
    ("/v1/events", '{"events": [{"user_id": "\\ud800", "action": "view"}]}'),
    ("/v1/events", '{"events": [{"user_id": "u", "action": "view", "query": "a\\udfffb"}]}'),
    ("/v1/events", '{"columns": {"user_id": ["u"], "action": ["view"], "item_id": ["\\udbff"]}}'),
    ("/v1/score", '{"users": [{"user_id": "u", "state": {"query": "\\ud800"}}]}'),
    ("/v1/feedback", '{"feedback": [{"signal_id": "\\ud800", "outcome": "shown"}]}'),
    ("/v1/subscriptions", '{"url": "https://example.com/\\ud800"}'),
    ("/v1/config", '{"segments": ["\\ud800"]}'),
])
async def test_lone_surrogates_are_a_400_naming_the_field(start, path, body):
    s = await start()
    method = "PUT" if path == "/v1/config" else "POST"
    for accept in (JSON, "application/msgpack"):
        r = await s.acme.call(method, path, raw=body.encode(), fmt=JSON, accept=accept)
        assert r.status == 400 and r.body["error"]["code"] == "malformed_body", r.body
        assert r.body["error"]["details"][0]["reason"] == "lone surrogate"
    r = await s.acme.call("POST", "/v1/events", raw=b'{"events": [{"user_id": "\\ud83d\\ude00-ok", "action": "view"}]}',
                          fmt=JSON)
    assert r.status == 200  # a surrogate pair is a character like any other


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize("after", [_cursor("s1:²"), _cursor("s2:١٢"), _cursor("s2:" + "9" * 40), _cursor("s2:-1"),
                                   "é", "%ED%A0%80", _cursor("s2:" + "9" * 5000)[:2000]])
async def test_cursors_that_this_server_never_gave_out_are_a_400(start, after):
    s = await start()
    r = await s.acme.call("GET", f"/v1/signals?after={after}")
    assert r.status == 400 and r.body["error"]["details"][0]["field"] == "after"


async def test_path_parameters_are_bounded_and_checked(start):
    s = await start(webhooks_allow_http=1, webhooks_allow_private=1)
    sub = (await s.acme.call("POST", "/v1/subscriptions", {"url": "http://127.0.0.1:9/hook"})).body["id"]
    for dead_letter in ("²", "١٢", "9" * 5000, "-1", "%ED%A0%80"):
        r = await s.acme.call("POST", f"/v1/subscriptions/{sub}/dead-letters/{dead_letter}/redeliver")
        assert r.status == 404 and r.body["error"]["code"] == "dead_letter_not_found"
    for bad in ("%ED%A0%80", "sub_" + "9" * 5000, "sub_%FF"):
        r = await s.acme.call("GET", f"/v1/subscriptions/{bad}/dead-letters")
        assert r.status == 404 and r.body["error"]["code"] == "subscription_not_found"
    for user in ("%ED%A0%80", "%FF%FE", "%00", "a" * 5000):
        for method in ("GET", "DELETE"):
            r = await s.acme.call(method, f"/v1/users/{user}", accept="application/msgpack")
            assert r.status < 500 and (r.status < 400 or r.body["error"]["code"]), (user, r.status, r.body)


async def test_gzip_and_deflate_bodies_are_inflated_after_authentication(start):
    s = await start()
    body = json.dumps({"events": [{"user_id": "z", "action": "view"}] * 3}).encode()
    for encoding, data in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body)),
                           ("gzip", gzip.compress(body[:20]) + gzip.compress(body[20:]))):
        r = await s.acme.call("POST", "/v1/events", raw=data, fmt=JSON, headers={"Content-Encoding": encoding})
        assert r.status == 200 and r.body["accepted"] == 3, r.body
    for encoding, data, status, code in (
        ("br", body, 415, "unsupported_encoding"),
        ("gzip, gzip", gzip.compress(gzip.compress(body)), 415, "unsupported_encoding"),
        ("gzip", body, 400, "malformed_body"),
        ("gzip", gzip.compress(body)[:-12], 400, "malformed_body"),
    ):
        r = await s.acme.call("POST", "/v1/events", raw=data, fmt=JSON, headers={"Content-Encoding": encoding})
        assert r.status == status and r.body["error"]["code"] == code, (encoding, r.body)


async def test_a_compression_bomb_inflates_only_up_to_the_size_limit_and_never_before_auth(start, monkeypatch):
    from aiohttp import compression_utils

    inflated_by_aiohttp = []
    original = compression_utils.ZLibDecompressor.decompress_sync
    monkeypatch.setattr(compression_utils.ZLibDecompressor, "decompress_sync",
                        lambda self, *a, **k: inflated_by_aiohttp.append(1) or original(self, *a, **k))
    s = await start(max_body_bytes=256 * 1024)
    bomb = gzip.compress(b"0" * (64 << 20), 9)  # 64 MiB of zeros in about 64 KiB
    for key in (None, "not-a-key"):
        r = await s.acme.call("POST", "/v1/events", raw=bomb, fmt=JSON, key=key, headers={"Content-Encoding": "gzip"})
        assert r.status == 401
    r = await s.acme.call("PUT", "/v1/events", raw=bomb, fmt=JSON, headers={"Content-Encoding": "gzip"})
    assert r.status == 405
    r = await s.acme.call("POST", "/v1/events", raw=bomb, fmt=JSON, headers={"Content-Encoding": "gzip"})
    assert r.status == 413 and r.body["error"]["code"] == "body_too_large"
    assert inflated_by_aiohttp == []  # aiohttp itself inflated nothing, before or after authentication


async def test_a_slow_upload_with_a_valid_key_times_out_with_408(start):
    s = await start(body_read_timeout_s=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", s.client.port)
    writer.write(f"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {s.acme.key}\r\n"
                 "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"events\": [".encode())
    await writer.drain()
    started = time.monotonic()
    answer = await asyncio.wait_for(reader.read(4096), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408") and b'"body_timeout"' in answer
    assert time.monotonic() - started < 5


async def test_an_aborted_upload_is_not_a_server_error(start, caplog):
    s = await start()
    reader, writer = await asyncio.open_connection("127.0.0.1", s.client.port)
    writer.write(f"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {s.acme.key}\r\n"
                 "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"events\": [".encode())
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.transport.abort()
    await asyncio.sleep(0.3)
    assert (await s.acme.call("GET", "/healthz")).status == 200
    metrics = (await s.acme.call("GET", "/metrics", key=None)).body
    assert 'route="/v1/events",status="499"' in metrics and 'route="/v1/events",status="500"' not in metrics
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
