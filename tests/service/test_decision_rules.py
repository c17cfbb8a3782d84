"""Each row of the decision table (shared/DESIGN.md), A1–A8 and S1–S9, end to end on the
service tier: signed AE webhooks and SF outbound messages go through the receiver, the
in-process broker, the assigner or the syncer, the store and the relay to the simulators, and
SF's outbound messages come back. Each test names its row and checks what the row promises in
AE, in SF and in the audit log."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import update

from services.bootstrap import Running
from services.common.db.tables import audit_log, tenants
from tests.outbound import Poster, is_ack
from tests.store import decision_rows, table_counts, table_rows
from tests.webhooks import Engagement, engagement_body

CONNECTOR = "0055g00000ePONxAAO"
ALICE_SF, BOB_SF = "0055g0000Zti3ElAQI", "0055g0000M6fuVCAQY"
CAROL_SF = "0055g0000UHNjcrAQD"  # not connected
ALICE_AE, BOB_AE, ERIN_AE = 101, 102, 105  # erin is not connected
QUEUE = "00G5g0000QQQdLAEQ1"
KIM = "00Q5g0000ZWHszxEQD"


@pytest.fixture
def engagement(stack: Running) -> Engagement:
    return Engagement(stack)


@pytest.fixture
def poster(stack: Running) -> Poster:
    return Poster(stack)


def webhook(name: str, **prospect: Any) -> dict[str, Any]:
    """An engagement fixture with its prospect changed as given."""
    body: dict[str, Any] = json.loads(engagement_body(name))
    body["prospect"] = {**body["prospect"], **prospect}
    return body


def sf_writes(engagement: Engagement, method: str = "POST") -> list[Any]:
    return [c for c in engagement.sf.calls if c.method == method and "sobjects" in c.path]


async def rows_of(live: Running, rule: str) -> list[dict[str, Any]]:
    return [r for r in await decision_rows(live) if r["rule"] == rule]


# --- AE side: the assigner -------------------------------------------------------------


async def test_a1_ready_prospect_of_a_connected_user_gets_an_sf_lead_owned_by_its_sf_user(
    engagement: Engagement,
) -> None:
    await engagement.post(engagement_body("prospect-created-assigned-connected.json"))
    record = await engagement.record(9002)
    assert (await engagement.rules(9002))[0] == "A1"
    assert engagement.sf_lead(record["sf_record_id"])["OwnerId"] == ALICE_SF
    assert [c.auto_assign for c in sf_writes(engagement)] == ["FALSE"]
    assert engagement.ae.prospects[9002]["assignedUserId"] == ALICE_AE


async def test_a2_ready_prospect_of_an_unconnected_user_gets_a_lead_owned_by_the_connector(
    engagement: Engagement,
) -> None:
    await engagement.post(engagement_body("prospect-created-assigned-unconnected.json"))
    record = await engagement.record(9001)
    assert (await engagement.rules(9001))[0] == "A2"
    assert engagement.sf_lead(record["sf_record_id"])["OwnerId"] == CONNECTOR
    assert engagement.ae.prospects[9001]["assignedUserId"] == ERIN_AE  # AE keeps erin
    [a2] = await rows_of(engagement.live, "A2")
    assert "connector" in a2["reason"]


async def test_a3_assign_to_user_leaves_a_prospect_that_has_an_owner_alone(
    engagement: Engagement,
) -> None:
    await engagement.post(engagement_body("assign-to-user-already-assigned.json"))
    assert await engagement.rules(9002) == ["A3"]
    assert engagement.ae.prospects[9002]["assignedUserId"] == BOB_AE
    assert not engagement.sf.leads and not sf_writes(engagement)
    [a3] = await rows_of(engagement.live, "A3")
    assert "doesn't reassign prospects who already have an owner" in a3["reason"]


async def test_a4_assign_to_user_of_an_unassigned_prospect_sets_ae_then_creates_the_lead(
    engagement: Engagement,
) -> None:
    body = webhook(
        "assign-to-user-already-assigned.json",
        id=9010,
        email="gil@example.com",
        assignedUserId=None,
    )
    await engagement.post(body)
    record = await engagement.record(9010)
    assert (await engagement.rules(9010))[0] == "A4"
    assert engagement.ae.prospects[9010]["assignedUserId"] == ALICE_AE
    assert engagement.sf_lead(record["sf_record_id"])["OwnerId"] == ALICE_SF


async def test_a4_assign_to_user_with_an_sf_record_sets_its_owner_to_the_users_sf_user(
    engagement: Engagement,
) -> None:
    # The active rule gives di's lead to carol (not connected): in SF, unassigned in AE.
    engagement.sf.default_owner_id = CAROL_SF
    await engagement.post(engagement_body("assign-via-active-rule.json"))
    lead_id = (await engagement.record(9004))["sf_record_id"]
    assert engagement.sf_lead(lead_id)["OwnerId"] == CAROL_SF
    assert engagement.ae.prospects[9004]["assignedUserId"] is None

    await engagement.post(
        webhook(
            "assign-to-user-already-assigned.json",
            id=9004,
            email="di@example.com",
            assignedUserId=None,
        )
    )
    assert "A4" in await engagement.rules(9004)
    assert engagement.ae.prospects[9004]["assignedUserId"] == ALICE_AE
    assert engagement.sf_lead(lead_id)["OwnerId"] == ALICE_SF
    assert len(sf_writes(engagement, "PATCH")) == 1


async def test_a5_assign_to_group_round_robins_to_the_least_recently_assigned_member(
    engagement: Engagement,
) -> None:
    await engagement.post(engagement_body("assign-to-group.json"))
    await engagement.post(webhook("assign-to-group.json", id=9006, email="fa@example.com"))
    # A tie between two never-assigned members goes to the earliest created (alice), then bob.
    assert engagement.ae.prospects[9005]["assignedUserId"] == ALICE_AE
    assert engagement.ae.prospects[9006]["assignedUserId"] == BOB_AE
    assert (await engagement.rules(9005))[0] == (await engagement.rules(9006))[0] == "A5"
    lead = engagement.sf_lead((await engagement.record(9006))["sf_record_id"])
    assert lead["OwnerId"] == BOB_SF


async def test_a6_assign_to_queue_gives_the_lead_to_the_queue_and_the_prospect_counts_as_assigned(
    engagement: Engagement,
) -> None:
    await engagement.post(engagement_body("assign-to-queue.json"))
    record = await engagement.record(9003)
    assert (await engagement.rules(9003))[0] == "A6"
    assert engagement.sf_lead(record["sf_record_id"])["OwnerId"] == QUEUE
    assert engagement.ae.prospects[9003]["assignedQueueId"] == QUEUE


async def test_a6_a7_queue_and_active_rule_are_refused_in_contacts_mode(
    engagement: Engagement,
) -> None:
    async with engagement.live.runtime.engine.begin() as conn:
        await conn.execute(update(tenants).values(sync_mode="contacts"))
    await engagement.post(engagement_body("assign-to-queue.json"))
    await engagement.post(engagement_body("assign-via-active-rule.json"))
    rows = await table_rows(engagement.live, audit_log)
    assert [r["rule"] for r in rows] == ["A6", "A7"]
    assert all("contacts" in r["reason"] for r in rows)
    assert not engagement.sf.leads and not engagement.sf.contacts


async def test_a7_active_rule_pushes_the_lead_unowned_and_brings_sfs_owner_back_to_ae(
    engagement: Engagement,
) -> None:
    engagement.sf.add_rule_entry(BOB_SF, [("Email", "startsWith", "di@")])
    engagement.sf.default_owner_id = CAROL_SF
    await engagement.post(engagement_body("assign-via-active-rule.json"))
    record = await engagement.record(9004)
    assert (await engagement.rules(9004))[0] == "A7"
    [push] = sf_writes(engagement)
    assert push.auto_assign == "TRUE"
    assert engagement.sf_lead(record["sf_record_id"])["OwnerId"] == BOB_SF
    assert engagement.ae.prospects[9004]["assignedUserId"] == BOB_AE


async def test_a8_reassignment_in_ae_of_a_record_assigned_in_both_systems_is_refused(
    engagement: Engagement,
) -> None:
    await engagement.post(engagement_body("prospect-created-assigned-connected.json"))
    lead_id = (await engagement.record(9002))["sf_record_id"]
    body = webhook(
        "prospect-created-assigned-connected.json", assignedUserId=BOB_AE, salesforceId=lead_id
    )
    body["type"] = "prospect.reassigned"
    await engagement.post(body)
    [a8] = await rows_of(engagement.live, "A8")
    assert "must be made in Salesforce" in a8["reason"]
    assert engagement.sf_lead(lead_id)["OwnerId"] == ALICE_SF
    assert not sf_writes(engagement, "PATCH")


# --- SF side: the syncer (reverse sync) ------------------------------------------------


async def test_s1_lead_created_with_an_unconnected_owner_makes_an_unassigned_linked_prospect(
    poster: Poster,
) -> None:
    assert is_ack(await poster.post("lead-created-owner-not-connected.xml"))
    assert await poster.last_rule() == "S1"
    record = await poster.record("00Q5g0000sOuOvGEAV")
    prospect = poster.ae_prospect(record["prospect_id"])
    assert (prospect["assignedUserId"], prospect["assignedQueueId"]) == (None, None)
    assert prospect["salesforceId"] == "00Q5g0000sOuOvGEAV"


async def test_s2_lead_created_with_a_connected_owner_makes_a_prospect_assigned_to_its_user(
    poster: Poster,
) -> None:
    assert is_ack(await poster.post("lead-created-owner-connected.xml"))
    assert await poster.last_rule() == "S2"
    record = await poster.record(KIM)
    assert poster.ae_prospect(record["prospect_id"])["assignedUserId"] == ALICE_AE


async def test_s2_lead_created_owned_by_a_queue_makes_a_prospect_assigned_to_the_queue(
    poster: Poster,
) -> None:
    body = poster.body("lead-created-owner-connected.xml").replace(ALICE_SF, QUEUE)
    assert is_ack(await poster.post_body(body.encode()))
    assert await poster.last_rule() == "S2"
    prospect = poster.ae_prospect((await poster.record(KIM))["prospect_id"])
    assert (prospect["assignedUserId"], prospect["assignedQueueId"]) == (None, QUEUE)


async def test_s3_lead_created_with_auto_create_off_makes_no_prospect(poster: Poster) -> None:
    async with poster.live.runtime.engine.begin() as conn:
        await conn.execute(update(tenants).values(auto_create_prospects=False))
    assert is_ack(await poster.post("lead-created-owner-connected.xml"))
    [s3] = await decision_rows(poster.live)
    assert s3["rule"] == "S3" and "auto-create prospects is off" in s3["reason"]
    assert poster.live.ae_sim is not None and not poster.live.ae_sim.prospects
    assert (await table_counts(poster.live))["records"] == 0


async def test_s4_reassigned_to_an_unconnected_user_keeps_the_prospect_owner(
    poster: Poster,
) -> None:
    await poster.post("lead-created-owner-connected.xml")
    assert is_ack(await poster.post("lead-reassigned-not-connected.xml", "record-reassigned"))
    assert await poster.last_rule() == "S4"
    kim = await poster.record(KIM)
    assert poster.ae_prospect(kim["prospect_id"])["assignedUserId"] == ALICE_AE
    assert kim["sf_owner_id"] == "0055g00002X7EufAAF"  # dave, recorded as SF's owner
    [s4] = await rows_of(poster.live, "S4")
    assert "not a connected user" in s4["reason"]


async def test_s5_reassigned_to_a_connected_user_moves_the_prospect_to_its_user(
    poster: Poster,
) -> None:
    await poster.post("lead-created-owner-connected.xml")
    assert is_ack(await poster.post("lead-reassigned-connected.xml", "record-reassigned"))
    assert await poster.last_rule() == "S5"
    kim = await poster.record(KIM)
    assert poster.ae_prospect(kim["prospect_id"])["assignedUserId"] == BOB_AE


async def test_s6_reassigned_to_a_queue_moves_the_prospect_to_the_queue(poster: Poster) -> None:
    await poster.post("lead-created-owner-connected.xml")
    assert is_ack(await poster.post("lead-reassigned-to-queue.xml", "record-reassigned"))
    assert await poster.last_rule() == "S6"
    prospect = poster.ae_prospect((await poster.record(KIM))["prospect_id"])
    assert (prospect["assignedUserId"], prospect["assignedQueueId"]) == (None, QUEUE)


async def test_s7_notification_older_than_the_applied_one_is_ignored_as_stale(
    poster: Poster,
) -> None:
    await poster.post("lead-created-owner-connected.xml")
    await poster.post("lead-reassigned-connected.xml", "record-reassigned")
    kim = await poster.record(KIM)
    assert poster.live.ae_sim is not None
    ae_calls = len(poster.live.ae_sim.call_log)
    assert is_ack(await poster.post("lead-reassigned-stale.xml", "record-reassigned"))
    assert await poster.last_rule() == "S7"
    after = await poster.record(KIM)
    assert (after["sf_owner_id"], after["last_modstamp"]) == (BOB_SF, kim["last_modstamp"])
    assert len(poster.live.ae_sim.call_log) == ae_calls
    assert poster.ae_prospect(kim["prospect_id"])["assignedUserId"] == BOB_AE


async def test_s8_notification_already_processed_has_no_effect_and_is_acked_again(
    poster: Poster,
) -> None:
    await poster.post("lead-created-owner-connected.xml")
    before = await table_counts(poster.live)
    records_before = await poster.record(KIM)
    assert poster.live.ae_sim is not None
    ae_calls = len(poster.live.ae_sim.call_log)
    assert is_ack(await poster.post("lead-created-owner-connected.xml"))
    assert await table_counts(poster.live) == before  # no inbox row, no audit row, no effect
    assert await poster.record(KIM) == records_before
    assert len(poster.live.ae_sim.call_log) == ae_calls


async def test_s9_lead_created_with_the_email_of_an_unlinked_prospect_is_linked_then_synced(
    stack: Running, engagement: Engagement, poster: Poster
) -> None:
    # Ben's prospect is known to ownersync (A3 stored it) but has no SF record yet.
    await engagement.post(engagement_body("assign-to-user-already-assigned.json"))
    assert (await engagement.record(9002))["sf_record_id"] is None
    body = poster.body("lead-created-owner-connected.xml").replace("kim@", "ben@")
    poster.posted = engagement.posted  # one stack: count what both put in
    assert is_ack(await poster.post_body(body.encode()))
    assert await poster.last_rule() == "S9"
    record = await engagement.record(9002)
    assert record["sf_record_id"] == KIM
    assert engagement.ae.prospects[9002]["assignedUserId"] == ALICE_AE  # then S5: alice
    assert engagement.ae.prospects[9002]["salesforceId"] == KIM
    assert len(engagement.ae.prospects) == 1  # linked, not created
