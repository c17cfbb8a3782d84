"""Signing and posting AE webhook bodies as AE would (Standard Webhooks)."""

from __future__ import annotations

import json
from typing import Any

import httpx

from services.demo.replay import FIXTURES, demo_tenant
from services.receiver.signatures import signed_headers as sign_headers

SECRET = demo_tenant().webhook_secret


def engagement_body(name: str) -> bytes:
    return (FIXTURES / "engagement" / name).read_bytes()


def signed_headers(
    body: bytes, *, webhook_id: str | None = None, secret: str = SECRET, at: float | None = None
) -> dict[str, str]:
    timestamp = int(at) if at is not None else None
    return sign_headers(secret, body, webhook_id=webhook_id, timestamp=timestamp)


async def post_webhook(
    base_url: str, body: bytes | dict[str, Any], tenant: str = "acme", **kwargs: Any
) -> httpx.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with httpx.AsyncClient(base_url=base_url) as http:
        return await http.post(
            f"/engagement/{tenant}/events", content=raw, headers=signed_headers(raw, **kwargs)
        )
