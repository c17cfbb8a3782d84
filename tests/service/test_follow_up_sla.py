"""Follow-up SLAs end to end on the service tier: assign through a group -> SF confirms the
owner -> nobody works the lead -> the timer fires -> PATCH OwnerId with Sforce-Auto-Assign FALSE
at the SF simulator -> A9 audit -> a fresh timer for the new owner; AE follows (S5). A worked
lead (record-updated: Status left the untouched statuses) is kept. Fallback after the
escalations run out.

A test makes a 2 h SLA run out by moving its due time into the past; the stack's own SLA
loop (every assigner runs one) fires it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Table, select, update

from services.admin import groups, records
from services.admin.schemas import GroupMemberPut, GroupSlaPut
from services.bootstrap import Running
from services.common.db.tables import deferred_assignments, sla_timers
from services.common.settings import Settings
from services.sim.embedded import wait_until_idle
from tests.outbound import Poster, is_ack
from tests.store import decision_rows
from tests.webhooks import Engagement, engagement_body

ALICE_SF, BOB_SF = "0055g0000Zti3ElAQI", "0055g0000M6fuVCAQY"
ALICE_AE, BOB_AE = 101, 102
QUEUE = "00G5g0000QQQdLAEQ1"
GROUP = 7
PROSPECT = 9005  # assign-to-group.json: round robin over alice and bob


@pytest.fixture
def service_settings(service_settings: Settings) -> Settings:
    return service_settings.model_copy(update={"sla_interval_ms": 20})


@pytest.fixture
def engagement(stack: Running) -> Engagement:
    return Engagement(stack)


def missed() -> float:
    labels = {"group": str(GROUP), "member": str(ALICE_AE), "outcome": "missed"}
    return REGISTRY.get_sample_value("ownersync_sla_total", labels) or 0.0


async def set_sla(live: Running, **sla: Any) -> None:
    data = GroupSlaPut.model_validate({"slaSeconds": 7200, **sla})
    async with live.runtime.engine.begin() as conn:
        await groups.set_group_sla(conn, "acme", GROUP, data)


async def rows(live: Running, table: Table) -> list[dict[str, Any]]:
    async with live.runtime.engine.connect() as conn:
        found = await conn.execute(select(table).order_by(table.c.id))
        return [dict(r._mapping) for r in found]


async def timers(live: Running) -> list[dict[str, Any]]:
    return await rows(live, sla_timers)


async def run_out(engagement: Engagement) -> None:
    """The running SLA's due time passes: wait until the SLA loop fired it and all settled."""
    live = engagement.live
    async with live.runtime.engine.begin() as conn:
        await conn.execute(
            update(sla_timers)
            .where(sla_timers.c.state == "running")
            .values(due_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    async with asyncio.timeout(10):
        while any(t["state"] == "running" for t in await timers(live)):
            await asyncio.sleep(0.02)
    await wait_until_idle(live, settled=engagement.posted)


def owner_patches(engagement: Engagement) -> list[Any]:
    return [c for c in engagement.sf.calls if c.method == "PATCH" and "sobjects/Lead" in c.path]


async def assigned_through_the_group(engagement: Engagement) -> str:
    await engagement.post(engagement_body("assign-to-group.json"))
    record = await engagement.record(PROSPECT)
    assert engagement.sf_lead(record["sf_record_id"])["OwnerId"] == ALICE_SF
    return str(record["sf_record_id"])


def updated_body(lead: str, owner: str, status: str, minute: int) -> bytes:
    stamp = (datetime.now(UTC) + timedelta(seconds=minute)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"
 xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>
<notifications xmlns="http://soap.sforce.com/2005/09/outbound">
<OrganizationId>00D5g0000T7kun6EQA</OrganizationId><ActionId>04k5g0000ECR19CAQT</ActionId>
<Notification><Id>04l5g0000u45n7{minute}</Id>
<sObject xsi:type="sf:Lead" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
<sf:Id>{lead}</sf:Id><sf:OwnerId>{owner}</sf:OwnerId><sf:Status>{status}</sf:Status>
<sf:SystemModstamp>{stamp}</sf:SystemModstamp></sObject></Notification>
</notifications></soapenv:Body></soapenv:Envelope>""".encode()


async def test_sla_starts_when_sf_confirms_the_owner_picked_by_the_group(
    engagement: Engagement,
) -> None:
    await set_sla(engagement.live)
    await assigned_through_the_group(engagement)

    [timer] = await timers(engagement.live)
    assert (timer["state"], timer["sf_owner_id"], timer["ae_user_id"]) == (
        "running",
        ALICE_SF,
        ALICE_AE,
    )
    assert timer["due_at"] - timer["started_at"] == timedelta(hours=2)
    started = [r for r in await decision_rows(engagement.live) if r["rule"] == "SLA"]
    assert started and started[0]["reason"].startswith(
        f"SLA started: SF confirmed owner {ALICE_SF}"
    )


async def test_no_sla_for_a_group_without_one(engagement: Engagement) -> None:
    await assigned_through_the_group(engagement)
    assert await timers(engagement.live) == []


async def test_a9_unworked_lead_moves_to_the_next_member_with_auto_assign_false(
    engagement: Engagement,
) -> None:
    await set_sla(engagement.live)
    lead = await assigned_through_the_group(engagement)
    missed_before = missed()
    await asyncio.sleep(0.2)  # a few passes of the SLA loop: nothing is due yet
    assert [t["state"] for t in await timers(engagement.live)] == ["running"]

    await run_out(engagement)

    assert engagement.sf_lead(lead)["OwnerId"] == BOB_SF
    [patch] = owner_patches(engagement)
    assert patch.auto_assign == "FALSE"
    [a9] = [r for r in await decision_rows(engagement.live) if r["rule"] == "A9"]
    assert a9["reason"].startswith(f"not worked within 2 h by {ALICE_SF}")
    ended, fresh = await timers(engagement.live)
    assert (ended["state"], fresh["state"], fresh["sf_owner_id"]) == (
        "escalated",
        "running",
        BOB_SF,
    )
    assert fresh["escalations"] == 1
    # AE follows when SF's outbound message comes back (S5).
    assert engagement.ae.prospects[PROSPECT]["assignedUserId"] == BOB_AE
    assert engagement.live.sla is not None and engagement.live.sla.fired == 1
    async with engagement.live.runtime.engine.connect() as conn:
        view = await records.get_record(conn, "acme", "prospect", PROSPECT)
    assert [(t.state, t.sf_owner_id) for t in view.sla] == [
        ("escalated", ALICE_SF),
        ("running", BOB_SF),
    ]
    assert missed() == missed_before + 1


async def test_worked_lead_is_kept(engagement: Engagement) -> None:
    await set_sla(engagement.live)
    lead = await assigned_through_the_group(engagement)
    poster = Poster(engagement.live)
    poster.posted = engagement.posted
    response = await poster.post_body(
        updated_body(lead, ALICE_SF, "Working - Contacted", 1), "record-updated"
    )
    engagement.posted = poster.posted

    assert is_ack(response)
    [met] = await timers(engagement.live)
    assert met["state"] == "met" and "Working - Contacted" in met["reason"]
    await asyncio.sleep(0.2)
    assert engagement.sf_lead(lead)["OwnerId"] == ALICE_SF
    assert owner_patches(engagement) == []


async def test_untouched_status_keeps_the_clock_running(engagement: Engagement) -> None:
    await set_sla(engagement.live)
    lead = await assigned_through_the_group(engagement)
    poster = Poster(engagement.live)
    poster.posted = engagement.posted
    await poster.post_body(
        updated_body(lead, ALICE_SF, "Open - Not Contacted", 1), "record-updated"
    )
    engagement.posted = poster.posted

    [timer] = await timers(engagement.live)
    assert timer["state"] == "running"


async def test_a9_after_max_escalations_the_lead_goes_to_the_fallback_queue(
    engagement: Engagement,
) -> None:
    await set_sla(engagement.live, maxEscalations=1, fallbackOwnerId=QUEUE)
    lead = await assigned_through_the_group(engagement)
    await run_out(engagement)
    await run_out(engagement)

    assert engagement.sf_lead(lead)["OwnerId"] == QUEUE
    states = [t["state"] for t in await timers(engagement.live)]
    assert states == ["escalated", "fallback"]
    a9 = [r for r in await decision_rows(engagement.live) if r["rule"] == "A9"]
    assert "fallback" in a9[-1]["reason"]
    assert engagement.ae.prospects[PROSPECT]["assignedQueueId"] == QUEUE


async def test_a5_waits_for_the_first_member_to_come_on_unless_the_group_assigns_when_closed(
    engagement: Engagement,
) -> None:
    live = engagement.live
    today = datetime.now(UTC).date()
    away = [today.isoformat(), (today + timedelta(days=1)).isoformat()]
    await set_sla(live, assignWhenClosed=False)
    async with live.runtime.engine.begin() as conn:
        for member in (ALICE_AE, BOB_AE):
            off = GroupMemberPut.model_validate({"awayDates": away})
            await groups.put_member(conn, "acme", GROUP, member, off)

    await engagement.post(engagement_body("assign-to-group.json"))

    waiting = await engagement.record(PROSPECT)
    assert waiting["ae_assigned_user_id"] is None and waiting["sf_record_id"] is None
    [a5] = [r for r in await decision_rows(live) if r["rule"] == "A5"]
    assert "no member is working now" in a5["reason"] and "waits" in a5["reason"]
    [deferred] = await rows(live, deferred_assignments)
    first_on = datetime.combine(today + timedelta(days=2), datetime.min.time(), tzinfo=UTC)
    assert deferred["due_at"] == first_on and deferred["done_at"] is None

    # Alice is back; the wait is over.
    async with live.runtime.engine.begin() as conn:
        await groups.put_member(conn, "acme", GROUP, ALICE_AE, GroupMemberPut.model_validate({}))
        await conn.execute(
            update(deferred_assignments).values(due_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    async with asyncio.timeout(10):
        while (await rows(live, deferred_assignments))[0]["done_at"] is None:
            await asyncio.sleep(0.02)
    await wait_until_idle(live, settled=engagement.posted)

    assigned = await engagement.record(PROSPECT)
    assert assigned["ae_assigned_user_id"] == ALICE_AE
    assert engagement.sf_lead(assigned["sf_record_id"])["OwnerId"] == ALICE_SF
    assert [t["state"] for t in await timers(live)] == ["running"]  # and its SLA started


async def test_owner_changed_in_sf_by_someone_else_stops_the_sla(engagement: Engagement) -> None:
    await set_sla(engagement.live)
    lead = await assigned_through_the_group(engagement)
    poster = Poster(engagement.live)
    poster.posted = engagement.posted
    moved = updated_body(lead, BOB_SF, "Open - Not Contacted", 2)
    assert is_ack(await poster.post_body(moved, "record-reassigned"))
    engagement.posted = poster.posted

    [stopped] = await timers(engagement.live)
    assert stopped["state"] == "stopped" and BOB_SF in stopped["reason"]
    assert owner_patches(engagement) == []
