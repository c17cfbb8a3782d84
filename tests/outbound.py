"""Posting SF outbound messages as SF would, and waiting for the stack to settle them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from services.bootstrap import Running
from services.common.endpoints import SfAction
from services.demo.replay import FIXTURES
from services.receiver.soap import parse_outbound_message
from services.sim.embedded import wait_until_idle
from tests.endpoints import sf_path
from tests.store import decision_rows, record_where

SOAP_HEADERS = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'}


def is_ack(response: httpx.Response) -> bool:
    return (
        response.status_code == 200
        and response.headers["content-type"].startswith("text/xml")
        and "<Ack>true</Ack>" in response.text
    )


class Poster:
    """Posts fixture messages and waits until the stack settled every notification posted."""

    def __init__(self, live: Running, fixtures: Path = FIXTURES) -> None:
        self.live = live
        self.fixtures = fixtures / "salesforce"
        self.posted = 0

    async def post(self, name: str, action: SfAction = "record-created") -> httpx.Response:
        return await self.post_body((self.fixtures / name).read_bytes(), action)

    async def post_body(self, body: bytes, action: SfAction = "record-created") -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.live.receiver_url or "") as http:
            response = await http.post(sf_path(action), content=body, headers=SOAP_HEADERS)
        if response.status_code == 200:
            self.posted += len(parse_outbound_message(body).notifications)
        await wait_until_idle(self.live, settled=self.posted)
        return response

    def body(self, name: str) -> str:
        return (self.fixtures / name).read_text()

    async def record(self, sf_id: str) -> dict[str, Any]:
        return await record_where(self.live, sf_record_id=sf_id)

    def ae_prospect(self, prospect_id: int) -> dict[str, Any]:
        assert self.live.ae_sim is not None
        return self.live.ae_sim.prospects[prospect_id]

    async def last_rule(self) -> str:
        return str((await decision_rows(self.live))[-1]["rule"])
