import socket

import pytest

from server.delivery import _retry_after
from server.signing import sign
from server.validation import encode_cursor, parse_pull_query
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


def test_url_shape_rules():
    assert check_url_shape("https://hooks.example.com:8443/x?y=1", allow_http=False) == ("hooks.example.com", 8443)
    assert check_url_shape("http://localhost/x", allow_http=True) == ("localhost", 80)
    for url in ("http://example.com", "https://a:b@example.com", "https:///nohost", "https://example.com:99999",
                "javascript:alert(1)", 42, "https://" + "a" * 3000):
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
    assert parse_pull_query({"after": cursor, "limit": "5", "wait_s": "1.5"}) == (12345, 5, 1.5)
    assert parse_pull_query({}) == (0, 100, 0.0)
