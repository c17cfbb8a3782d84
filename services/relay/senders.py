"""How each type of effect reaches its system: AE prospect upserts and SF record writes."""

from __future__ import annotations

from dataclasses import replace

from services.common.ae_client import (
    AeClient,
    AeProspectFields,
    AeQuotaExhausted,
    AeRequestRejected,
)
from services.common.domain import AeProspectUpsert, Learned, RecordState, SfRecordUpsert
from services.common.sf_client import SfClient, SfRecordFields, SfRequestRejected
from services.relay.relay import AeSender, Rejected, SfSender


def ae_prospect_sender(ae: AeClient) -> AeSender:
    """Create the AE prospect, or set its assignee and SF link."""

    async def send(record: RecordState, effect: AeProspectUpsert) -> Learned:
        try:
            if record.prospect_id is None:
                created = await ae.create_prospect(
                    AeProspectFields(
                        email=effect.email,
                        assigned_user_id=effect.assigned_user_id,
                        assigned_queue_id=effect.assigned_queue_id,
                        salesforce_id=effect.salesforce_id,
                    )
                )
                return Learned(prospect_id=created.id)
            await ae.update_prospect(
                record.prospect_id,
                AeProspectFields(
                    assigned_user_id=effect.assigned_user_id,
                    assigned_queue_id=effect.assigned_queue_id,
                    salesforce_id=effect.salesforce_id,
                ),
            )
            return Learned()
        except AeQuotaExhausted:
            raise  # transient: tomorrow's quota will do
        except AeRequestRejected as exc:
            raise Rejected(str(exc)) from exc

    return send


def sf_record_sender(sf: SfClient) -> SfSender:
    """Create the SF lead/contact (owner set, or left to the active rule) or move its owner."""

    async def send(record: RecordState, effect: SfRecordUpsert) -> Learned:
        owner, auto_assign = effect.owner_id, effect.auto_assign
        try:
            if record.sf_record_id is None:
                email = effect.email or record.email
                fields = SfRecordFields(
                    email=email,
                    last_name=_last_name(email),
                    company=UNKNOWN_COMPANY if effect.sobject == "Lead" else None,
                    owner_id=owner,
                )
                new_id = await sf.create(effect.sobject, fields, auto_assign=auto_assign)
                learned = Learned(sf_record_id=new_id, sf_object=effect.sobject)
            else:
                changes = SfRecordFields(owner_id=owner) if owner is not None else SfRecordFields()
                await sf.update(
                    effect.sobject, record.sf_record_id, changes, auto_assign=auto_assign
                )
                learned = Learned()
        except SfRequestRejected as exc:
            raise Rejected(str(exc)) from exc
        # With the active rule SF picks the owner; its outbound message tells the syncer.
        if owner is not None and not auto_assign:
            learned = replace(learned, sf_owner_id=owner)
        return learned

    return send


# What AE itself writes into required SF fields it has no value for.
UNKNOWN_COMPANY = "[[Unknown]]"


def _last_name(email: str | None) -> str:
    local = (email or "").split("@")[0].strip()
    return local or "[[Unknown]]"
