"""Reverse sync, rows S1 to S9 of the decision table: SF record events -> AE owner decisions.

Pure functions: the caller loads the state and applies the returned decision.
"""

from __future__ import annotations

from collections.abc import Mapping

from services.common.domain import (
    AeProspectUpsert,
    Decision,
    RecordState,
    Rule,
    TenantPolicy,
    describe_ae_owner,
)
from services.common.messages import SF_RECORD_CREATED, SfRecordEvent
from services.common.sfid import is_queue


def decide_sf_event(
    event: SfRecordEvent,
    *,
    policy: TenantPolicy,
    record: RecordState | None,
    ae_user_of: Mapping[str, int],
    unlinked_same_email: RecordState | None = None,
    already_processed: bool = False,
) -> Decision:
    """Decide what an SF created/reassigned notification does to the AE prospect.

    `record` is the record linked to the SF id (None when unknown), `ae_user_of` maps a
    connected SF user to its AE user (M⁻¹), `unlinked_same_email` is the oldest prospect with
    the record's email and no SF record yet (S9).
    """
    sf = event.payload
    if already_processed:
        return Decision(
            Rule.S8,
            f"notification {event.source_id} already processed",
            record,
            record,
            audited=False,
        )
    if record is not None:
        if record.last_modstamp is not None and sf.system_modstamp <= record.last_modstamp:
            return Decision(
                Rule.S7,
                f"stale: SystemModstamp {sf.system_modstamp.isoformat()} is not newer than the "
                f"applied {record.last_modstamp.isoformat()}",
                record,
                record,
            )
        return _sync_owner(event, record, ae_user_of)
    if unlinked_same_email is not None:
        linked = unlinked_same_email.evolve(sf_record_id=sf.record_id, sf_object=sf.object)
        synced = _sync_owner(event, linked, ae_user_of, force_effect=True)
        return Decision(
            Rule.S9,
            f"linked to prospect {linked.prospect_id} with the same email; then "
            f"{synced.rule}: {synced.reason}",
            unlinked_same_email,
            synced.after,
            synced.effects,
        )
    if not policy.auto_create_prospects:
        seen = "created" if event.type == SF_RECORD_CREATED else "reassigned, unknown to ownersync,"
        return Decision(
            Rule.S3, f"SF record {seen} and auto-create prospects is off: no prospect", None, None
        )
    return _create_prospect(event, ae_user_of)


def _create_prospect(event: SfRecordEvent, ae_user_of: Mapping[str, int]) -> Decision:
    sf = event.payload
    new = RecordState(
        sf_record_id=sf.record_id,
        sf_object=sf.object,
        email=sf.email,
        sf_owner_id=sf.owner_id,
        last_modstamp=sf.system_modstamp,
    )
    if is_queue(sf.owner_id):
        after = new.evolve(ae_assigned_queue_id=sf.owner_id)
        rule, reason = Rule.S2, f"SF owner is the queue {sf.owner_id}: prospect assigned to it"
    elif sf.owner_id in ae_user_of:
        after = new.evolve(ae_assigned_user_id=ae_user_of[sf.owner_id])
        rule = Rule.S2
        reason = f"SF owner {sf.owner_id} is connected to AE user {ae_user_of[sf.owner_id]}"
    else:
        after = new
        rule = Rule.S1
        reason = f"SF owner {sf.owner_id} is not a connected user: prospect created unassigned"
    return Decision(rule, reason, None, after, (AeProspectUpsert.of(after),))


def _sync_owner(
    event: SfRecordEvent,
    record: RecordState,
    ae_user_of: Mapping[str, int],
    *,
    force_effect: bool = False,
) -> Decision:
    sf = event.payload
    moved = record.evolve(
        sf_owner_id=sf.owner_id,
        last_modstamp=sf.system_modstamp,
        email=record.email or sf.email,
        sf_object=sf.object,
    )
    if is_queue(sf.owner_id):
        after = moved.evolve(ae_assigned_user_id=None, ae_assigned_queue_id=sf.owner_id)
        rule, reason = Rule.S6, f"SF owner is the queue {sf.owner_id}: AE assigned to that queue"
    elif sf.owner_id in ae_user_of:
        user = ae_user_of[sf.owner_id]
        after = moved.evolve(ae_assigned_user_id=user, ae_assigned_queue_id=None)
        rule, reason = Rule.S5, f"SF owner {sf.owner_id} is connected to AE user {user}"
    else:
        after = moved
        kept = describe_ae_owner(
            record.ae_assigned_user_id,
            record.ae_assigned_queue_id,
            unassigned="the prospect unassigned",
        )
        rule = Rule.S4
        reason = (
            f"SF owner {sf.owner_id} is not a connected user: AE keeps {kept} "
            "(owners differ until that user is connected)"
        )
    changed = (after.ae_assigned_user_id, after.ae_assigned_queue_id) != (
        record.ae_assigned_user_id,
        record.ae_assigned_queue_id,
    )
    effects = (AeProspectUpsert.of(after),) if changed or force_effect else ()
    return Decision(rule, reason, record, after, effects)
