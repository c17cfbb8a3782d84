"""How each kind of effect reaches its system: the AE prospect upsert (and, later, SF writes)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.common.ae_client import AeClient, AeQuotaExhausted, AeRequestRejected
from services.common.domain import RecordState
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
