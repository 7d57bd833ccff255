"""Checking a webhook delivery from nudge (Standard Webhooks): genuine, unaltered and fresh.

nudge signs ``"{webhook-id}.{webhook-timestamp}.{body}"`` with HMAC-SHA256, keyed by the base64 after ``whsec_``
in the subscription's secret, and sends ``webhook-signature: v1,<base64 digest>`` (several space-separated
signatures may come, for a secret being rotated).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from typing import Any, Mapping

from .errors import WebhookVerificationError

SECRET_PREFIX = "whsec_"


def verify_webhook(secret: str, headers: Mapping[str, str], body: bytes | str, tolerance_s: float = 300,
                   now: float | None = None) -> dict[str, Any]:
    """The delivery's JSON body (``{"signals": [...]}``) once its signature and timestamp check out;
    :class:`WebhookVerificationError` saying why otherwise.

    ``headers`` may be any mapping (header names are matched case-insensitively); ``body`` must be the raw bytes
    received, before any JSON parsing. A timestamp more than ``tolerance_s`` from now is refused, so that a
    captured delivery cannot be replayed later. nudge delivers at least once: dedupe on ``webhook-id``.
    """
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the secret is not a whsec_... secret from POST /v1/subscriptions") from None
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id, timestamp, signatures = (lower.get(h) for h in ("webhook-id", "webhook-timestamp", "webhook-signature"))
    if not (msg_id and timestamp and signatures):
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not an integer") from None
    if abs((time.time() if now is None else now) - sent_at) > tolerance_s:
        raise WebhookVerificationError(f"webhook-timestamp is more than {tolerance_s:g} s away from now (a replay?)")
    raw = body.encode() if isinstance(body, str) else bytes(body)
    expected = base64.b64encode(hmac.new(key, f"{msg_id}.{timestamp}.".encode() + raw, hashlib.sha256).digest())
    # Every candidate is compared, in constant time, so the time taken tells nothing about which one was close.
    valid = False
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        valid |= version == "v1" and hmac.compare_digest(value.encode(), expected)
    if not valid:
        raise WebhookVerificationError("no valid v1 signature")
    try:
        return json.loads(raw)
    except ValueError:
        raise WebhookVerificationError("the signed body is not JSON") from None
