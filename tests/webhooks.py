"""Signing and posting AE webhook bodies as AE would (Standard Webhooks), and waiting for the
stack to settle them."""

from __future__ import annotations

import json
from typing import Any

import httpx

from services.bootstrap import Running
from services.demo.replay import FIXTURES, demo_tenant, hold_prospect
from services.receiver.signatures import signed_headers as sign_headers
from services.sim.embedded import wait_until_idle
from tests.store import decision_rows, record_where

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


class Engagement:
    """Seeds the AE simulator with the prospects the webhooks talk about (as AE holds them when
    it sends them), posts the webhooks, and waits until the stack settled them."""

    def __init__(self, live: Running) -> None:
        assert live.ae_sim is not None and live.sf_sim is not None
        self.live = live
        self.ae = live.ae_sim
        self.sf = live.sf_sim
        self.posted = 0

    async def post(self, body: bytes | dict[str, Any], **kwargs: Any) -> int:
        hold_prospect(self.ae, (json.loads(body) if isinstance(body, bytes) else body)["prospect"])
        response = await post_webhook(self.live.receiver_url or "", body, **kwargs)
        if response.status_code == 202:
            self.posted += 1
        await wait_until_idle(self.live, settled=self.posted)
        return response.status_code

    async def record(self, prospect_id: int) -> dict[str, Any]:
        return await record_where(self.live, prospect_id=prospect_id)

    async def rules(self, prospect_id: int) -> list[str]:
        """The rules of the decisions about the prospect's record, oldest first."""
        record = await self.record(prospect_id)
        rows = await decision_rows(self.live)
        return [r["rule"] for r in rows if r["record_id"] == record["id"]]

    def sf_lead(self, lead_id: str) -> dict[str, Any]:
        return self.sf.leads[lead_id]
