"""Rows S1–S9 of the decision table, each in its own test, with no I/O."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from services.common.domain import AeProspectUpsert, RecordState, TenantPolicy
from services.common.messages import SfRecord, SfRecordEvent
from services.syncer.decide import decide_sf_event

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
LEAD = "00Q5g0000ZWHszxEQD"
ALICE_SF, BOB_SF, CAROL_SF = "0055g0000Zti3ElAQI", "0055g0000M6fuVCAQY", "0055g0000UHNjcrAQD"
QUEUE = "00G5g0000QQQdLAEQ1"
CONNECTED = {ALICE_SF: 101, BOB_SF: 102}
POLICY = TenantPolicy("acme", connector_user_id="0055g00000ePONxAAO")


def sf_event(
    owner: str, *, created: bool = True, at: datetime = T0, email: str = "kim@example.com"
) -> SfRecordEvent:
    return SfRecordEvent(
        type="sf.record.created" if created else "sf.record.reassigned",
        tenant="acme",
        event_id=uuid.uuid4(),
        source_id="04l5g0000UoNypnAQC",
        occurred_at=at,
        received_at=at,
        payload=SfRecord(
            object="Lead", record_id=LEAD, owner_id=owner, email=email, system_modstamp=at
        ),
    )


def kims_record(**changes: object) -> RecordState:
    base = RecordState(
        id=1,
        prospect_id=5002,
        sf_record_id=LEAD,
        sf_object="Lead",
        email="kim@example.com",
        ae_assigned_user_id=101,
        sf_owner_id=ALICE_SF,
        last_modstamp=T0,
    )
    return base.evolve(**changes)


def test_s1_created_with_unconnected_owner_makes_an_unassigned_prospect() -> None:
    decision = decide_sf_event(sf_event(CAROL_SF), policy=POLICY, record=None, ae_user_of=CONNECTED)
    assert decision.rule == "S1"
    assert decision.after is not None and not decision.after.ae_assigned
    assert decision.after.sf_record_id == LEAD and decision.after.sf_owner_id == CAROL_SF
    assert decision.effects == (AeProspectUpsert(None, None, "kim@example.com", LEAD),)


def test_s2_created_with_connected_owner_makes_a_prospect_assigned_to_the_mapped_user() -> None:
    decision = decide_sf_event(sf_event(ALICE_SF), policy=POLICY, record=None, ae_user_of=CONNECTED)
    assert decision.rule == "S2"
    assert decision.effects == (AeProspectUpsert(101, None, "kim@example.com", LEAD),)


def test_s2_created_owned_by_a_queue_makes_a_prospect_assigned_to_the_queue() -> None:
    decision = decide_sf_event(sf_event(QUEUE), policy=POLICY, record=None, ae_user_of=CONNECTED)
    assert decision.rule == "S2"
    assert decision.effects == (AeProspectUpsert(None, QUEUE, "kim@example.com", LEAD),)


def test_s3_created_with_auto_create_off_makes_no_prospect() -> None:
    policy = TenantPolicy("acme", "0055g00000ePONxAAO", auto_create_prospects=False)
    decision = decide_sf_event(sf_event(ALICE_SF), policy=policy, record=None, ae_user_of=CONNECTED)
    assert decision.rule == "S3"
    assert decision.after is None and decision.effects == ()
    assert "auto-create" in decision.reason


def test_s4_reassigned_to_unconnected_user_keeps_the_prospect_owner() -> None:
    event = sf_event(CAROL_SF, created=False, at=T0 + timedelta(minutes=5))
    decision = decide_sf_event(event, policy=POLICY, record=kims_record(), ae_user_of=CONNECTED)
    assert decision.rule == "S4"
    assert decision.after is not None
    assert decision.after.ae_assigned_user_id == 101
    assert decision.after.sf_owner_id == CAROL_SF
    assert decision.effects == ()
    assert "not a connected user" in decision.reason


def test_s5_reassigned_to_connected_user_moves_the_prospect_to_the_mapped_user() -> None:
    event = sf_event(BOB_SF, created=False, at=T0 + timedelta(minutes=10))
    decision = decide_sf_event(event, policy=POLICY, record=kims_record(), ae_user_of=CONNECTED)
    assert decision.rule == "S5"
    assert decision.after is not None and decision.after.ae_assigned_user_id == 102
    assert decision.effects == (AeProspectUpsert(102, None, "kim@example.com", LEAD),)


def test_s6_reassigned_to_a_queue_assigns_the_prospect_to_that_queue() -> None:
    event = sf_event(QUEUE, created=False, at=T0 + timedelta(minutes=15))
    decision = decide_sf_event(event, policy=POLICY, record=kims_record(), ae_user_of=CONNECTED)
    assert decision.rule == "S6"
    assert decision.after is not None
    assert (decision.after.ae_assigned_user_id, decision.after.ae_assigned_queue_id) == (
        None,
        QUEUE,
    )
    assert decision.effects == (AeProspectUpsert(None, QUEUE, "kim@example.com", LEAD),)


def test_s7_notification_not_newer_than_the_applied_one_is_ignored_as_stale() -> None:
    record = kims_record(
        ae_assigned_user_id=102, sf_owner_id=BOB_SF, last_modstamp=T0 + timedelta(minutes=10)
    )
    event = sf_event(ALICE_SF, created=False, at=T0 + timedelta(minutes=7))
    decision = decide_sf_event(event, policy=POLICY, record=record, ae_user_of=CONNECTED)
    assert decision.rule == "S7"
    assert decision.after == record and decision.effects == ()


def test_s7_notification_with_the_same_modstamp_is_stale_too() -> None:
    decision = decide_sf_event(
        sf_event(BOB_SF, created=False), policy=POLICY, record=kims_record(), ae_user_of=CONNECTED
    )
    assert decision.rule == "S7"


def test_s8_notification_already_processed_has_no_effect_and_no_audit() -> None:
    decision = decide_sf_event(
        sf_event(BOB_SF, created=False, at=T0 + timedelta(minutes=10)),
        policy=POLICY,
        record=kims_record(),
        ae_user_of=CONNECTED,
        already_processed=True,
    )
    assert decision.rule == "S8"
    assert decision.effects == () and not decision.audited
    assert decision.after == decision.before


def test_s9_created_record_links_the_unlinked_prospect_with_the_same_email_then_syncs_owner() -> (
    None
):
    unlinked = RecordState(id=7, prospect_id=9001, email="kim@example.com", ae_assigned_user_id=105)
    decision = decide_sf_event(
        sf_event(BOB_SF),
        policy=POLICY,
        record=None,
        ae_user_of=CONNECTED,
        unlinked_same_email=unlinked,
    )
    assert decision.rule == "S9"
    assert decision.after is not None
    assert decision.after.id == 7 and decision.after.prospect_id == 9001
    assert decision.after.sf_record_id == LEAD
    assert decision.after.ae_assigned_user_id == 102
    assert decision.effects == (AeProspectUpsert(102, None, "kim@example.com", LEAD),)
    assert "S5" in decision.reason


def test_s9_link_with_unconnected_owner_keeps_the_ae_owner_but_records_the_sf_id() -> None:
    unlinked = RecordState(id=7, prospect_id=9001, email="kim@example.com", ae_assigned_user_id=105)
    decision = decide_sf_event(
        sf_event(CAROL_SF),
        policy=POLICY,
        record=None,
        ae_user_of=CONNECTED,
        unlinked_same_email=unlinked,
    )
    assert decision.rule == "S9"
    assert decision.after is not None and decision.after.ae_assigned_user_id == 105
    # AE must learn the link (salesforceId) even though the owner stays.
    assert decision.effects == (AeProspectUpsert(105, None, "kim@example.com", LEAD),)
