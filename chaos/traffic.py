"""The traffic a chaos run plays, built ahead of time from a seed, and its posting.

SF side: leads created in Salesforce (owned by a connected user or not), then reassigned there,
some notifications older than one already sent (stale), as outbound messages with the tenant's
endpoint key. AE side: prospects made in AE (seeded into the AE simulator), then their
`prospect.created` webhook, signed with the tenant's secret. Some sends go out twice (SF and
AE retry) and neighbours are shuffled (reordering). Every notification is noted in the model.

Each send is posted until it is acknowledged, as Salesforce (24 h) and a webhook sender would:
a receiver that is killed or cannot publish only delays it.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import httpx

from bench.load import SOAP_HEADERS, Fixture, Workload, _Record
from chaos.model import Model
from services.admin.tenant_file import TenantFile
from services.common.messages import event_id_for
from services.receiver.signatures import signed_headers
from services.sim.sf import format_sf_datetime

SF_BATCH = 10  # notifications per outbound message
BURST_BATCH = 100  # notifications per message of a backlog (Salesforce's most)
AE_PROSPECT_IDS = 700_000  # seeded prospects are numbered from here
SLA_PROSPECT_IDS = 800_000  # and the prospects of the follow-up SLA from here
SLA_GROUP = 7


@dataclass(frozen=True)
class Send:
    kind: Literal["sf", "ae"]
    path: str
    body: bytes
    event_ids: tuple[str, ...]  # inbox event ids it carries
    webhook_id: str | None = None  # AE: signed at send time (the signature ages)
    duplicate: bool = False


@dataclass(frozen=True)
class Shape:
    sf_records: int
    sf_reassign_messages: int
    ae_prospects: int
    bursts: int = 0  # backlogs posted at once just before a database or broker fault
    burst_records: int = 0  # SF records created in each, in messages of 100
    stale_share: float = 0.10
    duplicate_share: float = 0.10
    reorder_window: int = 4
    sla_prospects: int = 0  # unassigned prospects assigned through group 7, its SLA running out


@dataclass
class Traffic:
    sends: list[Send]
    model: Model
    seeded_prospects: list[dict[str, Any]]  # made in AE before the run
    webhook_secret: str
    bursts: list[list[Send]] = field(default_factory=list)

    @property
    def unique_event_ids(self) -> set[str]:
        every = [*self.sends, *(s for group in self.bursts for s in group)]
        return {e for s in every if not s.duplicate for e in s.event_ids}

    @property
    def send_count(self) -> int:
        return len(self.sends) + sum(len(group) for group in self.bursts)


@dataclass
class _ChaosWorkload(Workload):
    @property
    def salt(self) -> str:
        """This workload's id salt: names of its AE prospects and webhooks share it."""
        return self._salt

    def sf_message(self, kind: str, notes: list[Any]) -> Send:
        message = self._message(kind, notes)
        ids = tuple(
            str(event_id_for(self.fixture.tenant, "sf", n)) for n in message.notification_ids
        )
        return Send("sf", message.path, message.body, ids)

    def note(self, model: Model, record: _Record, owner: str, stamp: datetime) -> Any:
        model.sf_note(record.id, record.email, owner, format_sf_datetime(stamp))
        return self._notification(record, owner, stamp)


def build(tenant_file: Path, shape: Shape, seed: int) -> Traffic:
    """The whole run's sends, in posting order, and the model of their outcome."""
    fixture = Fixture.read(tenant_file)
    data = TenantFile.read(tenant_file)
    workload = _ChaosWorkload(fixture, seed=seed)
    rng = workload.rng
    model = Model(ae_user_of=dict(fixture.ae_user_of), connector=data.connector_user)
    connected = list(fixture.connected)
    unconnected = list(fixture.unconnected)

    def owner(connected_share: float) -> str:
        return rng.choice(connected if rng.random() < connected_share else unconnected)

    # SF: created messages first in each stretch, reassignments of records at least `lag`
    # messages old interleaved (the pool grows as they go).
    created_messages = -(-shape.sf_records // SF_BATCH)
    total = created_messages + shape.sf_reassign_messages
    lag = 3
    pool: list[tuple[_Record, int]] = []
    sf_sends: list[Send] = []
    made = 0
    reassigns_left = shape.sf_reassign_messages
    for index in range(total):
        old_enough = [r for r, at in pool if at <= index - lag]
        creates_left = created_messages - (made + SF_BATCH - 1) // SF_BATCH
        want_reassign = reassigns_left > 0 and len(old_enough) >= SF_BATCH
        if want_reassign and (creates_left == 0 or rng.random() < reassigns_left / (total - index)):
            reassigns_left -= 1
            notes = []
            for record in rng.sample(old_enough, SF_BATCH):
                if rng.random() < shape.stale_share:  # older than what was sent: S7
                    stamp = record.modstamp - timedelta(milliseconds=rng.randint(1, 5000))
                    notes.append(workload.note(model, record, owner(0.5), stamp))
                    continue
                record.owner = owner(0.8)
                record.modstamp = workload.tick()
                notes.append(workload.note(model, record, record.owner, record.modstamp))
            rng.shuffle(notes)
            sf_sends.append(workload.sf_message("reassigned", notes))
        elif made < shape.sf_records:
            batch = min(SF_BATCH, shape.sf_records - made)
            records = [workload.new_record(owner(0.75), index) for _ in range(batch)]
            made += batch
            pool.extend((r, index) for r in records)
            notes = [workload.note(model, r, r.owner, r.created) for r in records]
            sf_sends.append(workload.sf_message("created", notes))
    # AE: prospects made in AE, assigned to a connected user (A1) or not (A2).
    connected_ae = sorted(set(fixture.ae_user_of.values()))
    unconnected_ae = sorted(set(data.engagement_users.values()) - set(connected_ae))
    seeded: list[dict[str, Any]] = []
    ae_sends: list[Send] = []
    for n in range(shape.ae_prospects):
        prospect_id = AE_PROSPECT_IDS + n
        email = f"ae-{workload.salt.lower()}-{n}@chaos.example.com"
        user = rng.choice(unconnected_ae if rng.random() < 0.2 else connected_ae)
        model.ae_created(prospect_id, email, user)
        seeded.append({"id": prospect_id, "email": email, "assignedUserId": user})
        webhook_id = f"chaos-{workload.salt}-{n}"
        prospect = _prospect(prospect_id, email, user)
        body = {"type": "prospect.created", "occurredAt": _now(), "prospect": prospect}
        ae_sends.append(_ae_send(fixture.tenant, webhook_id, body))
    # AE: unassigned prospects assigned through the group whose follow-up SLA runs out.
    members = set(data.groups[SLA_GROUP].members) if SLA_GROUP in data.groups else set()
    model.group_sf_users = frozenset(sf for sf, ae in fixture.ae_user_of.items() if ae in members)
    for n in range(shape.sla_prospects):
        prospect_id = SLA_PROSPECT_IDS + n
        email = f"sla-{workload.salt.lower()}-{n}@chaos.example.com"
        model.sla_assigned(prospect_id, email)
        seeded.append({"id": prospect_id, "email": email, "assignedUserId": None})
        webhook_id = f"chaos-sla-{workload.salt}-{n}"
        body = {
            "type": "prospect.assignment_requested",
            "occurredAt": _now(),
            "prospect": _prospect(prospect_id, email, None),
            "action": {"kind": "assign_to_group", "groupId": SLA_GROUP},
        }
        ae_sends.append(_ae_send(fixture.tenant, webhook_id, body))
    sends = _merge(rng, sf_sends, ae_sends)
    sends = _with_duplicates(rng, sends, shape.duplicate_share)
    sends = _reordered(rng, sends, shape.reorder_window)
    # Backlogs: full outbound messages of new records, for the workers to be busy with when
    # the database or the broker goes.
    bursts = []
    for b in range(shape.bursts):
        group = []
        for start in range(0, shape.burst_records, BURST_BATCH):
            size = min(BURST_BATCH, shape.burst_records - start)
            records = [workload.new_record(owner(0.75), total + b) for _ in range(size)]
            notes = [workload.note(model, r, r.owner, r.created) for r in records]
            group.append(workload.sf_message("created", notes))
        bursts.append(group)
    return Traffic(sends, model, seeded, data.webhook_secret, bursts)


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _prospect(prospect_id: int, email: str, user: int | None) -> dict[str, Any]:
    """An AE prospect as its webhooks carry it: made in AE, not yet linked to SF."""
    return {
        "id": prospect_id,
        "email": email,
        "assignedUserId": user,
        "assignedQueueId": None,
        "salesforceId": None,
    }


def _ae_send(tenant: str, webhook_id: str, body: dict[str, Any]) -> Send:
    """An AE webhook to the tenant's events endpoint, its event id derived as the receiver does."""
    return Send(
        "ae",
        f"/engagement/{tenant}/events",
        _json(body),
        (str(event_id_for(tenant, "ae", webhook_id)),),
        webhook_id=webhook_id,
    )


def _merge(rng: random.Random, a: list[Send], b: list[Send]) -> list[Send]:
    """Both lists in their own order, interleaved at random (evenly on average)."""
    merged: list[Send] = []
    i = j = 0
    while i < len(a) or j < len(b):
        take_a = j >= len(b) or (
            i < len(a) and rng.random() < (len(a) - i) / (len(a) - i + len(b) - j)
        )
        if take_a:
            merged.append(a[i])
            i += 1
        else:
            merged.append(b[j])
            j += 1
    return merged


def _with_duplicates(rng: random.Random, sends: list[Send], share: float) -> list[Send]:
    """A share of the sends posted again, 1 to 8 places later (a retry, a second delivery)."""
    out = list(sends)
    picks = sorted(rng.sample(range(len(sends)), round(len(sends) * share)), reverse=True)
    for position in picks:
        out.insert(
            min(len(out), position + rng.randint(1, 8)), replace(sends[position], duplicate=True)
        )
    return out


def _reordered(rng: random.Random, sends: list[Send], window: int) -> list[Send]:
    out: list[Send] = []
    for start in range(0, len(sends), window):
        chunk = sends[start : start + window]
        rng.shuffle(chunk)
        out.extend(chunk)
    return out


# --- posting -------------------------------------------------------------------------------


@dataclass
class PostStats:
    sent: int = 0
    acked: int = 0
    retries: int = 0
    unacked: list[Send] = field(default_factory=list)


async def post_until_acked(
    client: httpx.AsyncClient, send: Send, secret: str, stats: PostStats, give_up: float
) -> None:
    started = time.monotonic()
    attempt = 0
    stats.sent += 1
    while True:
        attempt += 1
        try:
            if send.kind == "sf":
                answer = await client.post(send.path, content=send.body, headers=SOAP_HEADERS)
                ok = answer.status_code == 200 and b"<Ack>true</Ack>" in answer.content
            else:
                headers = signed_headers(secret, send.body, webhook_id=send.webhook_id)
                headers["content-type"] = "application/json"
                answer = await client.post(send.path, content=send.body, headers=headers)
                ok = 200 <= answer.status_code < 300
        except httpx.HTTPError:
            ok = False
        if ok:
            stats.acked += 1
            return
        if time.monotonic() - started > give_up:
            stats.unacked.append(send)
            return
        stats.retries += 1
        await asyncio.sleep(min(3.0, 0.25 * 2 ** min(attempt, 4)))


async def play(
    base_url: str,
    traffic: Traffic,
    seconds: float,
    *,
    bursts: Sequence[float] = (),
    give_up: float = 240.0,
) -> PostStats:
    """Open loop: send i at start + i * seconds / len(sends), each retried until acked; the
    traffic's k-th backlog all at once at bursts[k]."""
    stats = PostStats()
    timed = [(i * seconds / max(1, len(traffic.sends)), s) for i, s in enumerate(traffic.sends)]
    for at, group in zip(bursts, traffic.bursts, strict=False):
        timed += [(at, s) for s in group]
    timed.sort(key=lambda pair: pair[0])
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=8)
    timeout = httpx.Timeout(30.0, connect=5.0)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits) as client:
        tasks = []
        start = time.monotonic()
        for due, send in timed:
            delay = start + due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(
                asyncio.create_task(
                    post_until_acked(client, send, traffic.webhook_secret, stats, give_up)
                )
            )
        await asyncio.gather(*tasks)
    return stats
