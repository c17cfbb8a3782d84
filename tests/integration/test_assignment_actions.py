"""AE assignment actions end to end: signed webhooks -> receiver -> RabbitMQ -> assigner ->
Postgres -> relay -> the SF simulator (over HTTP) -> its outbound messages -> receiver ->
syncer -> AE simulator. Each engagement fixture gives the result its MANIFEST.json describes."""

from __future__ import annotations

import json

import pytest

from services.bootstrap import Running
from services.common.db.tables import audit_log, group_members
from tests.store import decision_rows, table_counts, table_rows
from tests.webhooks import Engagement, engagement_body

pytestmark = pytest.mark.integration

CONNECTOR = "0055g00000ePONxAAO"
ALICE_SF, BOB_SF, CAROL_SF = "0055g0000Zti3ElAQI", "0055g0000M6fuVCAQY", "0055g0000UHNjcrAQD"
QUEUE = "00G5g0000QQQdLAEQ1"


@pytest.fixture
def engagement(stack: Running) -> Engagement:
    return Engagement(stack)


async def test_seed_scenario_1_unconnected_assignee_gets_a_lead_owned_by_the_connector_user(
    engagement: Engagement,
) -> None:
    assert (
        await engagement.post(engagement_body("prospect-created-assigned-unconnected.json")) == 202
    )
    record = await engagement.record(9001)
    lead = engagement.sf_lead(record["sf_record_id"])
    assert lead["OwnerId"] == CONNECTOR
    assert lead["Email"] == "ana@example.com"
    assert engagement.ae.prospects[9001]["assignedUserId"] == 105  # AE keeps erin
    rules = await engagement.rules(9001)
    assert rules[0] == "A2"
    # SF's record-created message comes back: the connector user is not connected (S4).
    assert rules[1:] == ["S4"]
    learned = [r for r in await table_rows(engagement.live, audit_log) if r["rule"] == "RELAY"]
    assert [r["reason"] for r in learned] == [
        f"the relay learned: SF created Lead {record['sf_record_id']}"
    ]
    audit = [r for r in await table_rows(engagement.live, audit_log) if r["rule"] == "A2"]
    assert "connector" in audit[0]["reason"]
    assert [
        c.auto_assign for c in engagement.sf.calls if c.method == "POST" and "sobjects" in c.path
    ] == ["FALSE"]


async def test_prospect_assigned_to_a_connected_user_gets_a_lead_owned_by_its_sf_user(
    engagement: Engagement,
) -> None:
    await engagement.post(engagement_body("prospect-created-assigned-connected.json"))
    record = await engagement.record(9002)
    assert engagement.sf_lead(record["sf_record_id"])["OwnerId"] == ALICE_SF
    assert (await engagement.rules(9002))[0] == "A1"
    assert engagement.ae.prospects[9002]["assignedUserId"] == 101
    assert record["sf_owner_id"] == ALICE_SF


async def test_assign_to_queue_gives_the_lead_to_the_queue_and_the_prospect_counts_as_assigned(
    engagement: Engagement,
) -> None:
    await engagement.post(engagement_body("assign-to-queue.json"))
    record = await engagement.record(9003)
    assert engagement.sf_lead(record["sf_record_id"])["OwnerId"] == QUEUE
    assert engagement.ae.prospects[9003]["assignedQueueId"] == QUEUE
    assert (await engagement.rules(9003))[0] == "A6"
    # Assigned now: a later assign-to-user does not reassign it (A3).
    body = json.loads(engagement_body("assign-to-user-already-assigned.json"))
    body["prospect"] = {
        **body["prospect"],
        "id": 9003,
        "assignedUserId": None,
        "assignedQueueId": QUEUE,
        "email": "cy@example.com",
    }
    await engagement.post(body)
    assert (await engagement.rules(9003))[-1] == "A3"
    assert engagement.ae.prospects[9003]["assignedQueueId"] == QUEUE


async def test_assign_to_user_does_not_reassign_a_prospect_that_has_an_owner(
    engagement: Engagement,
) -> None:
    await engagement.post(engagement_body("assign-to-user-already-assigned.json"))
    assert await engagement.rules(9002) == ["A3"]
    assert engagement.ae.prospects[9002]["assignedUserId"] == 102
    assert not engagement.sf.leads
    rows = await decision_rows(engagement.live)
    assert "already" in rows[-1]["reason"]


async def test_assign_to_group_round_robins_between_alice_and_bob(engagement: Engagement) -> None:
    await engagement.post(engagement_body("assign-to-group.json"))
    first = engagement.ae.prospects[9005]["assignedUserId"]
    assert first == 101  # a tie between two never-assigned members goes to the earliest created
    assert (await engagement.rules(9005))[0] == "A5"
    lead = engagement.sf_lead((await engagement.record(9005))["sf_record_id"])
    assert lead["OwnerId"] == ALICE_SF
    second = json.loads(engagement_body("assign-to-group.json"))
    second["prospect"] = {**second["prospect"], "id": 9006, "email": "fa@example.com"}
    await engagement.post(second)
    assert engagement.ae.prospects[9006]["assignedUserId"] == 102
    counters = {
        r["ae_user_id"]: r["assigned_total"]
        for r in await table_rows(engagement.live, group_members)
    }
    assert counters == {101: 1, 102: 1}


async def test_active_rule_loop_brings_the_rules_connected_owner_back_to_ae(
    engagement: Engagement,
) -> None:
    engagement.sf.add_rule_entry(BOB_SF, [("Email", "contains", "di@")])
    engagement.sf.default_owner_id = CAROL_SF
    await engagement.post(engagement_body("assign-via-active-rule.json"))
    record = await engagement.record(9004)
    lead = engagement.sf_lead(record["sf_record_id"])
    assert lead["OwnerId"] == BOB_SF
    writes = [c for c in engagement.sf.calls if c.method == "POST" and "sobjects" in c.path]
    assert [c.auto_assign for c in writes] == ["TRUE"]
    assert engagement.ae.prospects[9004]["assignedUserId"] == 102
    assert (await engagement.rules(9004))[0] == "A7"
    assert (await engagement.rules(9004))[-1] in {"S5", "S9"}
    assert (await engagement.record(9004))["sf_owner_id"] == BOB_SF


async def test_active_rule_loop_with_an_unconnected_owner_leaves_the_prospect_unassigned(
    engagement: Engagement,
) -> None:
    engagement.sf.default_owner_id = CAROL_SF
    await engagement.post(engagement_body("assign-via-active-rule.json"))
    record = await engagement.record(9004)
    assert engagement.sf_lead(record["sf_record_id"])["OwnerId"] == CAROL_SF
    assert engagement.ae.prospects[9004]["assignedUserId"] is None
    rows = [r for r in await decision_rows(engagement.live) if r["record_id"] == record["id"]]
    assert rows[-1]["rule"] in {"S4", "S9"}
    assert "not a connected user" in rows[-1]["reason"]


async def test_queue_and_active_rule_are_refused_in_contacts_mode(engagement: Engagement) -> None:
    from sqlalchemy import update

    from services.common.db.tables import tenants

    async with engagement.live.runtime.engine.begin() as conn:
        await conn.execute(update(tenants).values(sync_mode="contacts"))
    await engagement.post(engagement_body("assign-to-queue.json"))
    await engagement.post(engagement_body("assign-via-active-rule.json"))
    rows = await table_rows(engagement.live, audit_log)
    assert [r["rule"] for r in rows] == ["A6", "A7"]
    assert all("contacts" in r["reason"] for r in rows)
    assert not engagement.sf.leads and not engagement.sf.contacts
    assert engagement.ae.prospects[9003]["assignedQueueId"] is None


async def test_a_replayed_webhook_id_answers_200_and_changes_nothing(
    engagement: Engagement,
) -> None:
    body = engagement_body("prospect-created-assigned-connected.json")
    assert await engagement.post(body, webhook_id="msg_replayed") == 202
    before = await table_counts(engagement.live)
    leads = dict(engagement.sf.leads)
    assert await engagement.post(body, webhook_id="msg_replayed") == 200
    assert await table_counts(engagement.live) == before
    assert engagement.sf.leads == leads


async def test_reassignment_in_ae_of_a_record_assigned_in_both_systems_is_refused(
    engagement: Engagement,
) -> None:
    await engagement.post(engagement_body("prospect-created-assigned-connected.json"))
    record = await engagement.record(9002)
    body = json.loads(engagement_body("prospect-created-assigned-connected.json"))
    body["type"] = "prospect.reassigned"
    body["prospect"] = {
        **body["prospect"],
        "assignedUserId": 102,
        "salesforceId": record["sf_record_id"],
    }
    await engagement.post(body)
    rows = await table_rows(engagement.live, audit_log)
    a8 = [r for r in rows if r["rule"] == "A8"]
    assert len(a8) == 1 and "Salesforce" in a8[0]["reason"]
    assert engagement.sf_lead(record["sf_record_id"])["OwnerId"] == ALICE_SF
