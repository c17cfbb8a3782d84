"""How each kind of effect reaches its system: AE prospect upserts and SF record writes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.common.ae_client import AeClient, AeQuotaExhausted, AeRequestRejected
from services.common.domain import RecordState
from services.common.sf_client import SfClient, SfRequestRejected
from services.relay.relay import Rejected, Sender


def ae_prospect_sender(ae: AeClient) -> Sender:
    async def send(record: RecordState, payload: Mapping[str, Any]) -> dict[str, Any]:
        fields = {
            "assigned_user_id": payload["assigned_user_id"],
            "assigned_queue_id": payload["assigned_queue_id"],
            "salesforce_id": payload.get("salesforce_id"),
        }
        try:
            if record.prospect_id is None:
                created = await ae.create_prospect(payload.get("email"), **fields)
                return {"prospect_id": created.id}
            await ae.update_prospect(record.prospect_id, **fields)
            return {}
        except AeQuotaExhausted:
            raise  # transient: tomorrow's quota will do
        except AeRequestRejected as exc:
            raise Rejected(str(exc)) from exc

    return send


def sf_record_sender(sf: SfClient) -> Sender:
    """Create the SF lead/contact (owner set, or left to the active rule) or move its owner."""

    async def send(record: RecordState, payload: Mapping[str, Any]) -> dict[str, Any]:
        sobject = payload["sobject"]
        owner = payload["owner_id"]
        auto_assign = bool(payload["auto_assign"])
        learned: dict[str, Any] = {}
        try:
            if record.sf_record_id is None:
                email = payload.get("email") or record.email
                fields: dict[str, Any] = {"Email": email, "LastName": _last_name(email)}
                if sobject == "Lead":
                    fields["Company"] = UNKNOWN_COMPANY
                if owner is not None:
                    fields["OwnerId"] = owner
                new_id = await sf.create(sobject, fields, auto_assign=auto_assign)
                learned = {"sf_record_id": new_id, "sf_object": sobject}
            else:
                changes = {"OwnerId": owner} if owner is not None else {}
                await sf.update(sobject, record.sf_record_id, changes, auto_assign=auto_assign)
        except SfRequestRejected as exc:
            raise Rejected(str(exc)) from exc
        # With the active rule SF picks the owner; its outbound message tells the syncer.
        if owner is not None and not auto_assign:
            learned["sf_owner_id"] = owner
        return learned

    return send


# What AE itself writes into required SF fields it has no value for.
UNKNOWN_COMPANY = "[[Unknown]]"


def _last_name(email: str | None) -> str:
    local = (email or "").split("@")[0].strip()
    return local or "[[Unknown]]"
