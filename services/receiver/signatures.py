"""Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256(id.timestamp.body)>`."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
import uuid
from collections.abc import Iterable

TOLERANCE_SECONDS = 5 * 60


class SignatureError(Exception):
    """Why a webhook is not authentic; the message is safe to show the caller."""


def secret_key(secret: str) -> bytes:
    encoded = secret.removeprefix("whsec_")
    try:
        return base64.b64decode(encoded, validate=True)
    except binascii.Error:
        return encoded.encode()


def sign(secret: str, webhook_id: str, timestamp: int | str, body: bytes) -> str:
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(
    secret: str, body: bytes, *, webhook_id: str | None = None, timestamp: int | None = None
) -> dict[str, str]:
    """The headers a sender (AE, the demo, tests) puts on a webhook body."""
    webhook_id = webhook_id or f"msg_{uuid.uuid4().hex}"
    sent_at = str(timestamp if timestamp is not None else int(time.time()))
    return {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": sent_at,
        "webhook-signature": sign(secret, webhook_id, sent_at, body),
    }


def verify(
    secrets: Iterable[str],
    *,
    webhook_id: str | None,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    now: float,
) -> None:
    """Raise SignatureError unless one of the v1 signatures matches one of the secrets."""
    missing = [
        name
        for name, value in (
            ("webhook-id", webhook_id),
            ("webhook-timestamp", timestamp),
            ("webhook-signature", signature),
        )
        if not value
    ]
    if missing:
        raise SignatureError(f"missing header(s): {', '.join(missing)}")
    assert webhook_id and timestamp and signature
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise SignatureError("webhook-timestamp is not unix seconds") from None
    if abs(now - sent_at) > TOLERANCE_SECONDS:
        raise SignatureError(
            f"webhook-timestamp is {int(now - sent_at)} s away from now "
            f"(tolerance ±{TOLERANCE_SECONDS} s)"
        )
    offered = [part.strip() for part in signature.split(" ") if part.strip().startswith("v1,")]
    if not offered:
        raise SignatureError("webhook-signature holds no v1 signature")
    for secret in secrets:
        expected = sign(secret, webhook_id, timestamp, body)
        if any(hmac.compare_digest(expected, candidate) for candidate in offered):
            return
    raise SignatureError("webhook-signature does not match the tenant's secret")
