"""How each type of effect reaches its system: AE prospect upserts and SF record writes.

A create is the one write that is not safe to repeat: when its answer is lost, what it made
may exist all the same. So a create that may have got through before (its answer was lost just
now, or an earlier try of the effect failed) first looks for what it would make, and adopts it:
- AE has no idempotency key: the prospect with the record's email that is linked to the
  record's SF id or, for a record without one, the unlinked prospect with that email created
  since the effect was written.
- SF: where the org has the External ID field `OwnersyncKey__c`, every create is an upsert
  through it (keyed by tenant and record), which needs no look. Elsewhere, the oldest record
  with the email that the integration user created since the effect was written (SOQL).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from services.common.ae_client import (
    AeClient,
    AeOutcomeUnknown,
    AeProspect,
    AeProspectFields,
    AeQuotaExhausted,
    AeRequestRejected,
)
from services.common.domain import (
    AeProspectUpsert,
    Learned,
    RecordState,
    SfOwnerReassign,
    SfRecordUpsert,
)
from services.common.sf_auth import SfCredentialsRefused
from services.common.sf_client import (
    SfClient,
    SfOutcomeUnknown,
    SfRecordFields,
    SfRecordRef,
    SfRequestRejected,
)
from services.relay.relay import AeSender, Attempt, Rejected, SfSender

# The SF External ID field that makes a create an upsert, where the org has it.
KEY_FIELD = "OwnersyncKey__c"
# How far behind ours the remote clock may be when it stamps what a create made.
CLOCK_SKEW = timedelta(minutes=5)


def ae_prospect_sender(ae: AeClient) -> AeSender:
    """Create the AE prospect, or set its assignee and SF link."""

    async def send(record: RecordState, effect: AeProspectUpsert, attempt: Attempt) -> Learned:
        try:
            if record.prospect_id is None:
                return Learned(prospect_id=await _create_prospect_once(ae, effect, attempt))
            await ae.set_prospect(record.prospect_id, _wanted_in_ae(effect))
            return Learned()
        except AeQuotaExhausted:
            raise  # transient: tomorrow's quota will do
        except AeRequestRejected as exc:
            raise Rejected(str(exc)) from exc

    return send


async def _create_prospect_once(ae: AeClient, effect: AeProspectUpsert, attempt: Attempt) -> int:
    if attempt.tried_before and (found := await _made_prospect(ae, effect, attempt)):
        return await _adopt_prospect(ae, found, effect)
    fields = AeProspectFields(
        email=effect.email,
        assigned_user_id=effect.assigned_user_id,
        assigned_queue_id=effect.assigned_queue_id,
        salesforce_id=effect.salesforce_id,
    )
    try:
        return (await ae.create_prospect(fields)).id
    except AeOutcomeUnknown:
        found = await _made_prospect(ae, effect, attempt)
        if found is None:
            raise  # not made, or not visible yet: the next try looks again before creating
        return await _adopt_prospect(ae, found, effect)


async def _made_prospect(
    ae: AeClient, effect: AeProspectUpsert, attempt: Attempt
) -> AeProspect | None:
    """The prospect an earlier create of this effect made, if any. Looked up by email, which
    AE v5 documents as a query filter, and picked by its SF link."""
    if effect.email is None:
        if effect.salesforce_id is None:
            return None  # nothing to know it by
        linked = await ae.find_prospects_by_salesforce_id(effect.salesforce_id)
        return min(linked, key=lambda p: p.id, default=None)
    same_email = await ae.find_prospects_by_email(effect.email)
    if effect.salesforce_id is not None:
        # What this create made carries the SF link; a prospect without it is someone else's.
        made = [p for p in same_email if p.salesforce_id == effect.salesforce_id]
    else:
        since = attempt.written_at - CLOCK_SKEW
        made = [
            p
            for p in same_email
            if p.salesforce_id is None and p.created_at is not None and p.created_at >= since
        ]
    return min(made, key=lambda p: p.id, default=None)


async def _adopt_prospect(ae: AeClient, found: AeProspect, effect: AeProspectUpsert) -> int:
    has = (found.assigned_user_id, found.assigned_queue_id, found.salesforce_id)
    if has != (effect.assigned_user_id, effect.assigned_queue_id, effect.salesforce_id):
        await ae.set_prospect(found.id, _wanted_in_ae(effect))
    return found.id


def _wanted_in_ae(effect: AeProspectUpsert) -> AeProspectFields:
    return AeProspectFields(
        assigned_user_id=effect.assigned_user_id,
        assigned_queue_id=effect.assigned_queue_id,
        salesforce_id=effect.salesforce_id,
    )


def sf_record_sender(sf: SfClient) -> SfSender:
    """Create the SF lead/contact (owner set, or left to the active rule) or move its owner."""

    async def send(
        record: RecordState, effect: SfRecordUpsert | SfOwnerReassign, attempt: Attempt
    ) -> Learned:
        if isinstance(effect, SfOwnerReassign):
            return await _reassign_owner(sf, record, effect)
        owner, auto_assign = effect.owner_id, effect.auto_assign
        try:
            if record.sf_record_id is None:
                new_id = await _create_record_once(sf, record, effect, attempt)
                learned = Learned(sf_record_id=new_id, sf_object=effect.sobject)
            else:
                changes = SfRecordFields(owner_id=owner) if owner is not None else SfRecordFields()
                await sf.update(
                    effect.sobject, record.sf_record_id, changes, auto_assign=auto_assign
                )
                learned = Learned()
        except SfCredentialsRefused:
            raise  # the tenant's connection, not this effect: held, tried again once fixed
        except SfRequestRejected as exc:
            raise Rejected(str(exc)) from exc
        # With the active rule SF picks the owner; its outbound message tells the syncer.
        if owner is not None and not auto_assign:
            learned = replace(learned, sf_owner_id=owner)
        return learned

    return send


async def _reassign_owner(sf: SfClient, record: RecordState, effect: SfOwnerReassign) -> Learned:
    """PATCH OwnerId with `Sforce-Auto-Assign: FALSE` (A9): safe to repeat, the record exists."""
    if record.sf_record_id is None:
        raise Rejected(f"record {record.id} has no SF record to move to {effect.owner_id}")
    try:
        owner = SfRecordFields(owner_id=effect.owner_id)
        await sf.update(effect.sobject, record.sf_record_id, owner, auto_assign=False)
    except SfCredentialsRefused:
        raise
    except SfRequestRejected as exc:
        raise Rejected(str(exc)) from exc
    return Learned(sf_owner_id=effect.owner_id)


def idempotency_key(tenant_id: str, record_id: int) -> str:
    """The KEY_FIELD value of a record's SF record. Unique within one ownersync database:
    a database made again from nothing counts its records from 1 again."""
    return f"{tenant_id}:{record_id}"


async def _create_record_once(
    sf: SfClient, record: RecordState, effect: SfRecordUpsert, attempt: Attempt
) -> str:
    assert record.id is not None, "the relay sends effects of stored records only"
    email = effect.email or record.email
    fields = SfRecordFields(
        email=email,
        last_name=_last_name(email),
        company=UNKNOWN_COMPANY if effect.sobject == "Lead" else None,
        owner_id=effect.owner_id,
    )
    if KEY_FIELD in await sf.external_id_fields(effect.sobject):
        key = idempotency_key(attempt.tenant_id, record.id)
        return await sf.upsert(
            effect.sobject, KEY_FIELD, key, fields, auto_assign=effect.auto_assign
        )
    if attempt.tried_before and (found := await _made_record(sf, effect, email, attempt)):
        return await _adopt_record(sf, found, effect)
    try:
        return await sf.create(effect.sobject, fields, auto_assign=effect.auto_assign)
    except SfOutcomeUnknown:
        found = await _made_record(sf, effect, email, attempt)
        if found is None:
            raise  # not made, or not visible yet: the next try looks again before creating
        return await _adopt_record(sf, found, effect)


async def _made_record(
    sf: SfClient, effect: SfRecordUpsert, email: str | None, attempt: Attempt
) -> SfRecordRef | None:
    if email is None:
        return None  # nothing to know it by
    since = attempt.written_at - CLOCK_SKEW
    return await sf.first_created_since(effect.sobject, email=email, since=since)


async def _adopt_record(sf: SfClient, found: SfRecordRef, effect: SfRecordUpsert) -> str:
    # With the active rule SF chose the owner when it made the record: that one stands.
    if effect.owner_id is not None and not effect.auto_assign and found.owner_id != effect.owner_id:
        owner = SfRecordFields(owner_id=effect.owner_id)
        await sf.update(effect.sobject, found.id, owner, auto_assign=False)
    return found.id


# What AE itself writes into required SF fields it has no value for.
UNKNOWN_COMPANY = "[[Unknown]]"


def _last_name(email: str | None) -> str:
    local = (email or "").split("@")[0].strip()
    return local or "[[Unknown]]"
