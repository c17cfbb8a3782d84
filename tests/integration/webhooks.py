"""Signing and posting AE webhook bodies as AE would (Standard Webhooks)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx

from services.demo.replay import FIXTURES, demo_tenant
from services.receiver.signatures import sign

SECRET = demo_tenant().webhook_secret


def engagement_body(name: str) -> bytes:
    return (FIXTURES / "engagement" / name).read_bytes()


def signed_headers(
    body: bytes, *, webhook_id: str | None = None, secret: str = SECRET, at: float | None = None
) -> dict[str, str]:
    webhook_id = webhook_id or f"msg_{uuid.uuid4().hex}"
    timestamp = str(int(at if at is not None else time.time()))
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": sign(secret, webhook_id, timestamp, body),
        "content-type": "application/json",
    }


async def post_webhook(
    base_url: str, body: bytes | dict[str, Any], tenant: str = "acme", **kwargs: Any
) -> httpx.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with httpx.AsyncClient(base_url=base_url) as http:
        return await http.post(
            f"/engagement/{tenant}/events", content=raw, headers=signed_headers(raw, **kwargs)
        )
