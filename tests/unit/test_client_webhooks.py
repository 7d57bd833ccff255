"""nudge_client.verify_webhook against signatures made by the server's own signer (server/signing.py)."""
import base64
import json
import secrets
import time

import pytest

from nudge_client import WebhookVerificationError, verify_webhook
from server import signing

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()  # as server/subscription_store.py makes them
BODY = json.dumps({"signals": [{"signal_id": "sig_1", "type": "offer_discount"}]}).encode()


def delivery(secret=SECRET, body=BODY, at=None, msg_id="msg_abc"):
    """Headers of a delivery, exactly as the server sends them."""
    return signing.headers(secret, msg_id, int(time.time()) if at is None else at, body)


def test_a_delivery_signed_by_the_server_is_accepted():
    assert verify_webhook(SECRET, delivery(), BODY) == {"signals": [{"signal_id": "sig_1", "type": "offer_discount"}]}


def test_the_standard_webhooks_published_example():
    headers = {"webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek", "webhook-timestamp": "1614265330",
               "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="}
    body = b'{"test": 2432232314}'
    assert verify_webhook("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", headers, body, now=1614265330) == {
        "test": 2432232314}


def test_header_names_in_any_case_and_a_str_body():
    headers = {k.title(): v for k, v in delivery().items()}
    assert verify_webhook(SECRET, headers, BODY.decode())["signals"][0]["signal_id"] == "sig_1"


def test_any_of_several_signatures_may_match_while_a_secret_is_rotated():
    headers = delivery()
    old = signing.sign("whsec_" + base64.b64encode(b"o" * 32).decode(), "msg_abc", int(headers["webhook-timestamp"]), BODY)
    headers["webhook-signature"] = f"{old} {headers['webhook-signature']}"
    verify_webhook(SECRET, headers, BODY)


def test_a_tampered_body_is_refused():
    with pytest.raises(WebhookVerificationError, match="signature"):
        verify_webhook(SECRET, delivery(), BODY.replace(b"offer_discount", b"offer_discounT"))


def test_a_changed_id_or_timestamp_is_refused():
    headers = delivery()
    with pytest.raises(WebhookVerificationError, match="signature"):
        verify_webhook(SECRET, {**headers, "webhook-id": "msg_other"}, BODY)
    with pytest.raises(WebhookVerificationError, match="signature"):
        verify_webhook(SECRET, {**headers, "webhook-timestamp": str(int(headers["webhook-timestamp"]) - 1)}, BODY)


def test_the_wrong_secret_is_refused():
    other = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    with pytest.raises(WebhookVerificationError, match="signature"):
        verify_webhook(other, delivery(), BODY)


def test_an_old_or_future_timestamp_is_refused_even_when_signed():
    now = time.time()
    with pytest.raises(WebhookVerificationError, match="away from now"):
        verify_webhook(SECRET, delivery(at=int(now) - 301), BODY, now=now)
    with pytest.raises(WebhookVerificationError, match="away from now"):
        verify_webhook(SECRET, delivery(at=int(now) + 301), BODY, now=now)
    verify_webhook(SECRET, delivery(at=int(now) - 299), BODY, now=now)
    verify_webhook(SECRET, delivery(at=int(now) - 3000), BODY, now=now, tolerance_s=3600)


@pytest.mark.parametrize("drop", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_headers_are_refused(drop):
    headers = {k: v for k, v in delivery().items() if k != drop}
    with pytest.raises(WebhookVerificationError, match="missing"):
        verify_webhook(SECRET, headers, BODY)


def test_other_signature_versions_and_garbage_are_refused():
    headers = delivery()
    digest = headers["webhook-signature"].split(",", 1)[1]
    for value in (f"v2,{digest}", digest, "v1,", "v1,AAAA"):
        with pytest.raises(WebhookVerificationError):
            verify_webhook(SECRET, {**headers, "webhook-signature": value}, BODY)
    with pytest.raises(WebhookVerificationError, match="integer"):
        verify_webhook(SECRET, {**headers, "webhook-timestamp": "yesterday"}, BODY)


def test_a_secret_that_is_not_a_whsec_secret_is_a_programming_error():
    with pytest.raises(ValueError):
        verify_webhook("whsec_not base64!", delivery(), BODY)
