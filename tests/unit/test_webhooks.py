import base64
import socket

import pytest

from server.delivery import _retry_after
from server.signing import sign
from server.subscription_store import webhook_id
from server.validation import Cursor, encode_cursor, parse_pull_query
from server.webhook_urls import GuardedResolver, UrlRefused, address_problem, check_url_shape


def test_signature_matches_the_standard_webhooks_published_example():
    signature = sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330,
                     b'{"test": 2432232314}')
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


@pytest.mark.parametrize("ip, off_limits", [
    ("8.8.8.8", False), ("2606:4700:4700::1111", False), ("127.0.0.1", True), ("10.0.0.1", True),
    ("192.168.1.20", True), ("172.16.0.1", True), ("169.254.169.254", True), ("100.64.0.1", True), ("::1", True),
    ("fd00:ec2::254", True), ("::ffff:10.0.0.1", True), ("0.0.0.0", True), ("fe80::1%eth0", True),
])
def test_address_problem_refuses_everything_but_public_addresses(ip, off_limits):
    assert (address_problem(ip) is not None) == off_limits


# An IPv6 address that tunnels or translates to IPv4 (6to4, Teredo, NAT64, IPv4-compatible, IPv4-mapped) is
# judged by the IPv4 hosts it reaches too; one that reaches only a public IPv4 host passes.
@pytest.mark.parametrize("ip, off_limits", [
    ("2002:808:808::", False),  # 6to4 of 8.8.8.8
    ("2002:7f00:1::", True), ("2002:a00:1::", True), ("2002:a9fe:a9fe::1", True), ("2002:c0a8:101::", True),
    ("2001:0:4136:e378:8000:63bf:f5ff:fffe", True),  # Teredo, client 10.0.0.1
    ("2001:0:c0a8:1:8000:63bf:f7f7:f7f7", True),  # Teredo, server 192.168.0.1
    ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", True),  # Teredo between public hosts: 2001::/23 is not global
    ("64:ff9b::808:808", False),  # NAT64 of 8.8.8.8
    ("64:ff9b::7f00:1", True), ("64:ff9b::a9fe:a9fe", True), ("64:ff9b::a00:1", True),
    ("64:ff9b:1::808:808", True), ("64:ff9b:1:ffff::1", True),  # local-use NAT64: any network behind it
    ("::7f00:1", True), ("::a00:1", True), ("::808:808", True),  # IPv4-compatible, deprecated
    ("::ffff:8.8.8.8", False), ("::ffff:127.0.0.1", True), ("::ffff:169.254.169.254", True),
])
def test_address_problem_judges_the_ipv4_hosts_that_tunnels_reach(ip, off_limits):
    assert (address_problem(ip) is not None) == off_limits


def test_address_problem_names_the_private_host_behind_a_tunnel():
    assert "127.0.0.1 is a loopback address" in address_problem("2002:7f00:1::")
    assert "169.254.169.254 is a link-local (cloud metadata) address" in address_problem("64:ff9b::a9fe:a9fe")
    assert "NAT64" in address_problem("64:ff9b:1::808:808")


def test_webhook_id_is_stable_per_batch_and_hides_the_sequence_numbers():
    first = webhook_id("sub_0123456789abcdef01234567", 734512, 734598)
    assert first == webhook_id("sub_0123456789abcdef01234567", 734512, 734598)
    assert first.startswith("msg_") and "734512" not in first and "734598" not in first and "_734" not in first
    assert first != "msg_0123456789abcdef01234567_734512_734598"
    others = {webhook_id("sub_0123456789abcdef01234567", 734512, 734599),
              webhook_id("sub_0123456789abcdef01234567", 734511, 734598),
              webhook_id("sub_0123456789abcdef01234568", 734512, 734598)}
    assert first not in others and len(others) == 3


def test_url_shape_rules():
    assert check_url_shape("https://hooks.example.com:8443/x?y=1", allow_http=False) == ("hooks.example.com", 8443)
    assert check_url_shape("http://localhost/x", allow_http=True) == ("localhost", 80)
    for url in ("http://example.com", "https://a:b@example.com", "https:///nohost", "https://example.com:99999",
                "javascript:alert(1)", 42, "https://" + "a" * 3000, "https://[::1/", "https://.invalid/",
                "https://a..b.example/", "https://" + "a" * 64 + ".example/"):
        with pytest.raises(UrlRefused):
            check_url_shape(url, allow_http=False)


async def test_the_connect_time_resolver_refuses_names_that_resolve_to_private_addresses():
    resolver = GuardedResolver()
    try:
        with pytest.raises(OSError, match="loopback"):
            await resolver.resolve("localhost", 443, socket.AF_INET)
    finally:
        await resolver.close()


def test_retry_after_in_seconds_or_as_a_date():
    assert _retry_after("120") == 120.0 and _retry_after(None) is None and _retry_after("soon") is None
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past


def test_pull_cursors_round_trip_and_stay_opaque():
    cursor = encode_cursor(12345)
    assert "12345" not in cursor
    assert parse_pull_query({"after": cursor, "limit": "5", "wait_s": "1.5"}) == (Cursor(12345), 5, 1.5)
    assert parse_pull_query({}) == (Cursor(0), 100, 0.0)
    legacy = base64.urlsafe_b64encode(b"s1:77").decode()  # a log-wide position, from an older nudge
    assert parse_pull_query({"after": legacy})[0] == Cursor(77, shared=True)
