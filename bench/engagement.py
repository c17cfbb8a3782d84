"""The AE-to-SF path: signed AE webhooks (Standard Webhooks) asking for an assignment, each for
a prospect AE holds and SF does not know yet, until SF has the lead.

Per kind of action (assign to a user, round robin over a group, SF's active assignment rule):
first as fast as the receiver answers (webhooks per second end to end: from the first send to
the last lead SF created), then paced at half that rate (receipt to the SF call: the lead's
CreatedDate in the SF simulator, same machine clock, minus the send time of its webhook).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

from services.receiver.signatures import signed_headers

KINDS: dict[str, dict[str, Any]] = {
    "assign_to_user": {"kind": "assign_to_user", "userId": 101},
    "round_robin": {"kind": "assign_to_group", "groupId": 7},
    "active_rule": {"kind": "assign_via_active_rule"},
}
_ids = itertools.count(7_000_000_000)  # prospect ids no other phase uses


@dataclass
class Webhook:
    prospect_id: int
    email: str
    body: bytes
    sent_wall: float = 0.0
    status: int | None = None


def webhooks(kind: str, count: int, run: str) -> list[Webhook]:
    out = []
    for _ in range(count):
        pid = next(_ids)
        email = f"p{pid}.{run}@bench-ae.example.com"
        body = {
            "type": "prospect.assignment_requested",
            "occurredAt": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "prospect": {
                "id": pid,
                "email": email,
                "assignedUserId": None,
                "assignedQueueId": None,
                "salesforceId": None,
            },
            "action": KINDS[kind],
        }
        out.append(Webhook(pid, email, orjson.dumps(body)))
    return out


async def seed_prospects(ae_url: str, hooks: Sequence[Webhook], concurrency: int = 8) -> None:
    """AE holds the prospects its webhooks talk about, unassigned, before they are sent."""
    queue = list(hooks)
    async with httpx.AsyncClient(base_url=ae_url, timeout=30.0) as client:

        async def one() -> None:
            while queue:
                h = queue.pop()
                answer = await client.post(
                    "/_sim/prospects", json={"id": h.prospect_id, "email": h.email}
                )
                answer.raise_for_status()

        await asyncio.gather(*(one() for _ in range(concurrency)))


async def _send(client: httpx.AsyncClient, path: str, secret: str, hook: Webhook) -> None:
    hook.sent_wall = time.time()
    for attempt in range(1, 6):
        try:
            answer = await client.post(
                path, content=hook.body, headers=signed_headers(secret, hook.body)
            )
            hook.status = answer.status_code
            if answer.status_code in (200, 202):
                return
        except httpx.HTTPError:
            hook.status = None
        await asyncio.sleep(0.2 * attempt)


async def post(
    receiver_url: str,
    tenant: str,
    secret: str,
    hooks: Sequence[Webhook],
    *,
    concurrency: int = 8,
    per_second: float | None = None,
) -> None:
    """As fast as acked with `concurrency` clients, or open loop at `per_second`."""
    path = f"/engagement/{tenant}/events"
    limits = httpx.Limits(max_connections=max(concurrency, 50))
    async with httpx.AsyncClient(base_url=receiver_url, timeout=60.0, limits=limits) as client:
        if per_second is None:
            queue = list(reversed(hooks))

            async def one() -> None:
                while queue:
                    await _send(client, path, secret, queue.pop())

            await asyncio.gather(*(one() for _ in range(concurrency)))
            return
        start = time.monotonic() + 0.05
        tasks = []
        for i, hook in enumerate(hooks):
            delay = start + i / per_second - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_send(client, path, secret, hook)))
        await asyncio.gather(*tasks)


def epoch(sf_datetime: str) -> float:
    """Salesforce's dateTime (2026-12-03T05:30:00.123Z) as epoch seconds."""
    return datetime.fromisoformat(sf_datetime.replace("Z", "+00:00")).timestamp()


async def sf_leads_created(sf_url: str) -> dict[str, float]:
    """The first CreatedDate (epoch seconds) of each SF lead, by lower-cased email."""
    async with httpx.AsyncClient(base_url=sf_url, timeout=60.0) as client:
        state = (await client.get("/_sim/state")).json()
    created: dict[str, float] = {}
    for lead in state["leads"].values():
        if lead.get("Email"):
            at = epoch(lead["CreatedDate"])
            key = lead["Email"].lower()
            created[key] = min(at, created.get(key, at))
    return created


async def wait_leads(
    sf_url: str, hooks: Sequence[Webhook], within: float, check: Any = None
) -> dict[str, float]:
    """Poll the SF simulator until every webhook's lead exists (or `within` passed)."""
    wanted = {h.email.lower() for h in hooks}
    deadline = time.monotonic() + within
    while True:
        if callable(check):
            check()
        created = await sf_leads_created(sf_url)
        found = {e: created[e] for e in wanted if e in created}
        if len(found) == len(wanted) or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.2)
