"""Rows A1–A8 of the decision table, decided from the demo AE webhook bodies."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from importlib.resources import files
from typing import Any

from services.assigner.decide import AssignerDecision, decide_ae_event
from services.common.domain import (
    AeProspectUpsert,
    Member,
    RecordState,
    SfRecordUpsert,
    TenantPolicy,
)
from services.common.hours import WorkingHours
from services.common.messages import AeProspectEvent, AeWebhook, event_id_for

NOW = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
CONNECTOR = "0055g00000ePONxAAO"
ALICE, ALICE_SF = 101, "0055g0000Zti3ElAQI"
BOB, BOB_SF = 102, "0055g0000M6fuVCAQY"
ERIN_UNCONNECTED = 105
CAROL_SF_UNCONNECTED = "0055g0000UHNjcrAQD"
QUEUE = "00G5g0000QQQdLAEQ1"
LEAD_ID = "00Q5g00000AbCdEEAV"
GROUP = 7

LEADS = TenantPolicy(tenant_id="acme", connector_user_id=CONNECTOR)
CONTACTS = replace(LEADS, sync_mode="contacts")
SF_USER_OF = {ALICE: ALICE_SF, BOB: BOB_SF}
ASSIGN_TO_ERIN = {"kind": "assign_to_user", "userId": ERIN_UNCONNECTED}
GROUP_MEMBERS = (Member(ALICE, created_order=1), Member(BOB, created_order=2))


def ae_event(
    fixture: str,
    *,
    type: str | None = None,
    action: dict[str, Any] | None = None,
    **prospect: Any,
) -> AeProspectEvent:
    """The demo webhook body `fixture`, with its type, action or prospect fields changed."""
    text = (files("services.demo") / "fixtures" / "engagement" / f"{fixture}.json").read_text()
    body = json.loads(text)
    body["type"] = type or body["type"]
    body["action"] = action or body.get("action")
    body["prospect"].update(prospect)
    webhook = AeWebhook.model_validate(body)
    return AeProspectEvent.model_validate(
        {
            "type": f"ae.{webhook.type}",
            "tenant": "acme",
            "event_id": event_id_for("acme", "engagement", f"msg_{fixture}"),
            "source_id": f"msg_{fixture}",
            "occurred_at": webhook.occurred_at,
            "received_at": NOW,
            "payload": webhook,
        }
    )


def decide(
    event: AeProspectEvent,
    *,
    policy: TenantPolicy = LEADS,
    record: RecordState | None = None,
    group_members: tuple[Member, ...] | None = GROUP_MEMBERS,
    known_queues: frozenset[str] = frozenset({QUEUE}),
    already_processed: bool = False,
) -> AssignerDecision:
    return decide_ae_event(
        event,
        policy=policy,
        record=record,
        sf_user_of=SF_USER_OF,
        group_members=group_members,
        known_queues=set(known_queues),
        already_processed=already_processed,
        now=NOW,
    )


def at(minute: int) -> datetime:
    """The occurredAt of the demo webhooks: 09:00 to 09:05 on 2 November 2026."""
    return datetime(2026, 11, 2, 9, minute, tzinfo=UTC)


def stored(**fields: Any) -> RecordState:
    return RecordState(id=1, **fields)


def test_a1_created_prospect_with_connected_owner_creates_sf_lead_owned_by_mapped_user() -> None:
    result = decide(ae_event("prospect-created-assigned-connected"))

    d = result.decision
    assert d.rule == "A1"
    assert d.effects == (
        SfRecordUpsert("Lead", ALICE_SF, auto_assign=False, email="ben@example.com"),
    )
    assert d.after == RecordState(
        prospect_id=9002,
        email="ben@example.com",
        ae_assigned_user_id=ALICE,
        sf_object="Lead",
        sf_owner_id=ALICE_SF,
        ae_modstamp=at(1),
    )
    assert d.before is None
    assert d.audited and not d.refused


def test_a2_unconnected_assignee_creates_sf_lead_owned_by_connector_user() -> None:
    d = decide(ae_event("prospect-created-assigned-unconnected")).decision

    assert d.rule == "A2"
    assert d.effects == (
        SfRecordUpsert("Lead", CONNECTOR, auto_assign=False, email="ana@example.com"),
    )
    assert d.after is not None
    assert d.after.ae_assigned_user_id == ERIN_UNCONNECTED  # AE keeps U
    assert d.after.sf_owner_id == CONNECTOR
    assert f"AE user {ERIN_UNCONNECTED} is not connected" in d.reason
    assert "owners differ" in d.reason


def test_contacts_mode_creates_a_contact_instead_of_a_lead() -> None:
    d = decide(ae_event("prospect-created-assigned-connected"), policy=CONTACTS).decision

    assert d.rule == "A1"
    assert d.effects == (
        SfRecordUpsert("Contact", ALICE_SF, auto_assign=False, email="ben@example.com"),
    )
    assert d.after is not None and d.after.sf_object == "Contact"


def test_created_unassigned_prospect_is_stored_and_waits_for_an_assignment_action() -> None:
    event = ae_event("prospect-created-assigned-connected", assignedUserId=None)

    d = decide(event).decision

    assert d.rule == "A0"
    assert d.effects == ()
    assert d.after == RecordState(prospect_id=9002, email="ben@example.com", ae_modstamp=at(1))
    assert "waiting for an assignment action" in d.reason


def test_created_prospect_already_linked_to_an_sf_record_creates_nothing() -> None:
    event = ae_event("prospect-created-assigned-connected", salesforceId=LEAD_ID)

    d = decide(event).decision

    assert d.rule == "A0"
    assert d.effects == ()
    assert d.after is not None and d.after.sf_record_id == LEAD_ID


def test_a3_assign_to_user_leaves_a_prospect_with_an_owner_unchanged() -> None:
    d = decide(ae_event("assign-to-user-already-assigned")).decision

    assert d.rule == "A3"
    assert d.effects == ()
    assert not d.refused
    assert d.after is not None and d.after.ae_assigned_user_id == BOB
    assert "doesn't reassign prospects who already have an owner" in d.reason


def test_a3_assign_to_group_leaves_a_prospect_stored_with_a_queue_unchanged() -> None:
    record = stored(prospect_id=9005, ae_assigned_queue_id=QUEUE)

    result = decide(ae_event("assign-to-group"), record=record)

    assert result.decision.rule == "A3"
    assert result.decision.effects == ()
    assert result.decision.before == record
    assert f"the queue {QUEUE}" in result.decision.reason
    assert result.assigned_member is None  # nobody's turn was used up


def test_a4_assign_to_connected_user_sets_ae_assignee_and_creates_sf_lead() -> None:
    event = ae_event("assign-to-user-already-assigned", assignedUserId=None)

    d = decide(event).decision

    assert d.rule == "A4"
    assert d.effects == (
        AeProspectUpsert(ALICE, None, email="ben@example.com"),
        SfRecordUpsert("Lead", ALICE_SF, auto_assign=False, email="ben@example.com"),
    )
    assert d.after is not None
    assert (d.after.ae_assigned_user_id, d.after.sf_owner_id) == (ALICE, ALICE_SF)
    assert "then A1" in d.reason


def test_a4_assign_to_unconnected_user_creates_sf_lead_owned_by_connector_user() -> None:
    event = ae_event("assign-to-user-already-assigned", action=ASSIGN_TO_ERIN, assignedUserId=None)

    d = decide(event).decision

    assert d.rule == "A4"
    assert d.effects == (
        AeProspectUpsert(ERIN_UNCONNECTED, None, email="ben@example.com"),
        SfRecordUpsert("Lead", CONNECTOR, auto_assign=False, email="ben@example.com"),
    )
    assert "then A2" in d.reason


def test_a4_assign_to_connected_user_moves_the_existing_sf_record_to_the_mapped_user() -> None:
    record = stored(
        prospect_id=9002, sf_record_id=LEAD_ID, sf_object="Lead", sf_owner_id=CAROL_SF_UNCONNECTED
    )
    event = ae_event("assign-to-user-already-assigned", assignedUserId=None)

    d = decide(event, record=record).decision

    assert d.rule == "A4"
    assert d.effects == (
        AeProspectUpsert(ALICE, None, email="ben@example.com", salesforce_id=LEAD_ID),
        SfRecordUpsert("Lead", ALICE_SF, auto_assign=False, email="ben@example.com"),
    )
    assert d.after == record.evolve(
        ae_assigned_user_id=ALICE, sf_owner_id=ALICE_SF, email="ben@example.com", ae_modstamp=at(4)
    )


def test_a4_assign_to_unconnected_user_leaves_the_existing_sf_record_owner_alone() -> None:
    record = stored(
        prospect_id=9002, sf_record_id=LEAD_ID, sf_object="Lead", sf_owner_id=CAROL_SF_UNCONNECTED
    )
    event = ae_event("assign-to-user-already-assigned", action=ASSIGN_TO_ERIN, assignedUserId=None)

    d = decide(event, record=record).decision

    assert d.rule == "A4"
    assert d.effects == (
        AeProspectUpsert(ERIN_UNCONNECTED, None, email="ben@example.com", salesforce_id=LEAD_ID),
    )
    assert d.after is not None and d.after.sf_owner_id == CAROL_SF_UNCONNECTED
    assert f"user {ERIN_UNCONNECTED} is not connected" in d.reason


def test_a5_round_robin_assigns_the_least_recently_assigned_member() -> None:
    members = (
        Member(ALICE, created_order=1, last_assigned_at=NOW - timedelta(minutes=5)),
        Member(BOB, created_order=2, last_assigned_at=NOW - timedelta(hours=1)),
    )

    result = decide(ae_event("assign-to-group"), group_members=members)

    d = result.decision
    assert d.rule == "A5"
    assert d.effects == (
        AeProspectUpsert(BOB, None, email="ed@example.com"),
        SfRecordUpsert("Lead", BOB_SF, auto_assign=False, email="ed@example.com"),
    )
    assert result.assigned_member == replace(
        members[1], last_assigned_at=NOW, assigned_today=1, assigned_total=1
    )


def test_a5_group_with_nobody_available_changes_nothing_and_says_why() -> None:
    members = (
        Member(ALICE, created_order=1, paused=True),
        Member(BOB, created_order=2, daily_cap=3, assigned_today=3),
    )

    result = decide(ae_event("assign-to-group"), group_members=members)

    d = result.decision
    assert (d.rule, d.effects, d.refused, d.audited) == ("A5", (), False, True)
    assert "every member is paused, inactive or at their daily cap" in d.reason
    assert d.after is not None and not d.after.ae_assigned
    assert result.assigned_member is None


def test_a5_unknown_group_is_refused() -> None:
    d = decide(ae_event("assign-to-group"), group_members=None).decision

    assert (d.rule, d.refused, d.effects) == ("A5", True, ())
    assert f"unknown group {GROUP}" in d.reason


def test_a6_assign_to_queue_sets_ae_queue_and_creates_a_lead_owned_by_the_queue() -> None:
    d = decide(ae_event("assign-to-queue")).decision

    assert d.rule == "A6"
    assert d.effects == (
        AeProspectUpsert(None, QUEUE, email="cy@example.com"),
        SfRecordUpsert("Lead", QUEUE, auto_assign=False, email="cy@example.com"),
    )
    assert d.after == RecordState(
        prospect_id=9003,
        email="cy@example.com",
        ae_assigned_queue_id=QUEUE,
        sf_object="Lead",
        sf_owner_id=QUEUE,
        ae_modstamp=at(2),
    )


def test_a6_refused_in_contacts_mode() -> None:
    d = decide(ae_event("assign-to-queue"), policy=CONTACTS).decision

    assert (d.rule, d.refused, d.effects) == ("A6", True, ())
    assert "queues hold leads only; the connector is in contacts (reverse-sync) mode" in d.reason


def test_a6_refused_with_unverified_connector() -> None:
    policy = replace(LEADS, connector_verified=False)

    d = decide(ae_event("assign-to-queue"), policy=policy).decision

    assert (d.rule, d.refused, d.effects) == ("A6", True, ())
    assert "the connector is not verified" in d.reason


def test_a6_unknown_queue_is_refused() -> None:
    d = decide(ae_event("assign-to-queue"), known_queues=frozenset()).decision

    assert (d.rule, d.refused, d.effects) == ("A6", True, ())
    assert f"unknown queue {QUEUE}" in d.reason


def test_a6_skipped_when_the_prospect_already_has_an_owner() -> None:
    d = decide(ae_event("assign-to-queue", assignedUserId=BOB)).decision

    assert (d.rule, d.refused, d.effects) == ("A6", False, ())
    assert "doesn't reassign prospects who already have an owner" in d.reason


def test_a7_pushes_lead_with_auto_assign_and_no_owner() -> None:
    d = decide(ae_event("assign-via-active-rule")).decision

    assert d.rule == "A7"
    assert d.effects == (SfRecordUpsert("Lead", None, auto_assign=True, email="di@example.com"),)
    assert d.after == RecordState(
        prospect_id=9004, email="di@example.com", sf_object="Lead", ae_modstamp=at(3)
    )


def test_a7_refused_in_contacts_mode() -> None:
    d = decide(ae_event("assign-via-active-rule"), policy=CONTACTS).decision

    assert (d.rule, d.refused, d.effects) == ("A7", True, ())
    assert "contacts (reverse-sync) mode" in d.reason


def test_a7_skipped_when_the_prospect_already_has_an_owner() -> None:
    d = decide(ae_event("assign-via-active-rule", assignedUserId=ALICE)).decision

    assert (d.rule, d.refused, d.effects) == ("A7", False, ())


def test_a8_ae_reassignment_of_a_record_assigned_in_both_systems_is_refused() -> None:
    record = stored(
        prospect_id=9002,
        email="ben@example.com",
        ae_assigned_user_id=BOB,
        sf_record_id=LEAD_ID,
        sf_object="Lead",
        sf_owner_id=BOB_SF,
    )
    event = ae_event("prospect-created-assigned-connected", type="prospect.reassigned")

    d = decide(event, record=record).decision

    assert (d.rule, d.refused, d.effects) == ("A8", True, ())
    assert d.after == record.evolve(ae_modstamp=at(1))
    assert "the reassignment must be made in Salesforce" in d.reason


def test_ae_reassignment_before_the_record_is_assigned_in_sf_is_applied_as_a4() -> None:
    record = stored(prospect_id=9002, email="ben@example.com", ae_assigned_user_id=BOB)
    event = ae_event("prospect-created-assigned-connected", type="prospect.reassigned")

    d = decide(event, record=record).decision

    assert (d.rule, d.refused) == ("A4", False)
    # AE made the change itself, so only SF is told.
    assert d.effects == (
        SfRecordUpsert("Lead", ALICE_SF, auto_assign=False, email="ben@example.com"),
    )
    assert d.after is not None
    assert (d.after.ae_assigned_user_id, d.after.sf_owner_id) == (ALICE, ALICE_SF)


def test_ae_reassignment_echoing_the_stored_assignee_changes_nothing() -> None:
    record = stored(
        prospect_id=9002,
        email="ben@example.com",
        ae_assigned_user_id=ALICE,
        sf_record_id=LEAD_ID,
        sf_object="Lead",
        sf_owner_id=ALICE_SF,
    )
    event = ae_event("prospect-created-assigned-connected", type="prospect.reassigned")

    d = decide(event, record=record).decision

    assert (d.rule, d.refused, d.effects) == ("A0", False, ())
    assert d.after == record.evolve(ae_modstamp=at(1))


def test_duplicate_webhook_has_no_effect_and_leaves_no_audit() -> None:
    record = stored(prospect_id=9002)

    d = decide(
        ae_event("prospect-created-assigned-connected"), record=record, already_processed=True
    ).decision

    assert (d.rule, d.audited, d.effects) == ("DUP", False, ())
    assert d.before == d.after == record


def test_stale_ae_event_older_than_the_newest_applied_is_ignored() -> None:
    record = stored(prospect_id=9002, email="ben@example.com", ae_modstamp=at(4))
    event = ae_event("prospect-created-assigned-connected", type="prospect.reassigned")

    d = decide(event, record=record).decision

    assert (d.rule, d.effects, d.refused) == ("STALE", (), False)
    assert d.after == d.before == record
    assert d.audited and d.reason.startswith("stale: occurredAt 2026-11-02T09:01:00")


def test_ae_event_of_the_same_time_as_the_newest_applied_is_not_stale() -> None:
    record = stored(prospect_id=9003, email="cy@example.com", ae_modstamp=at(2))

    d = decide(ae_event("assign-to-queue"), record=record).decision

    assert d.rule == "A6" and d.after is not None and d.after.ae_modstamp == at(2)


def test_applied_ae_event_stamps_the_record_with_its_occurred_at() -> None:
    record = stored(prospect_id=9005, email="ed@example.com", ae_modstamp=at(1))

    d = decide(ae_event("assign-to-group"), record=record).decision

    assert d.rule == "A5" and d.after is not None and d.after.ae_modstamp == at(5)


def test_a5_with_nobody_on_waits_when_the_group_does_not_assign_when_closed() -> None:
    later = WorkingHours.parse("UTC", {"mon": "12:00-13:00"})  # NOW is Monday 09:30 UTC
    members = tuple(replace(m, hours=later) for m in GROUP_MEMBERS)
    event = ae_event("assign-to-group")

    waits = decide_ae_event(
        event,
        policy=LEADS,
        record=None,
        sf_user_of=SF_USER_OF,
        group_members=members,
        known_queues={QUEUE},
        already_processed=False,
        now=NOW,
        assign_when_closed=False,
    )
    anyway = decide(event, group_members=members)

    assert waits.wait_until == NOW.replace(hour=12, minute=0) and waits.assigned_member is None
    assert waits.decision.effects == () and "waits" in waits.decision.reason
    assert anyway.wait_until is None and anyway.assigned_member is not None
