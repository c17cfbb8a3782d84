"""Assignment requests from internal callers: the AE webhook actions, without AE.

The request becomes the same `ae.prospect.assignment_requested` event a webhook would, with a
deterministic event id (the same request id is the same event), and the answer carries a
preview of the assigner's decision computed by its pure function on the current state.
"""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from services.admin.errors import Unavailable
from services.admin.schemas import AssignmentAccepted, AssignmentRequest, DecisionPreview
from services.admin.tenants import tenant_row
from services.assigner.state import load_assigner_state
from services.common.broker.base import Broker, BrokerUnavailable
from services.common.db import store
from services.common.messages import (
    AE_ASSIGNMENT_REQUESTED,
    AeProspectEvent,
    AeWebhook,
    event_id_for,
)


def assignment_event(tenant_id: str, request: AssignmentRequest, now: datetime) -> AeProspectEvent:
    return AeProspectEvent(
        type=AE_ASSIGNMENT_REQUESTED,
        tenant=tenant_id,
        event_id=event_id_for(tenant_id, "api", request.request_id),
        source_id=request.request_id,
        occurred_at=now,
        received_at=now,
        payload=AeWebhook(
            type="prospect.assignment_requested",
            occurred_at=now,
            prospect=request.prospect,
            action=request.action,
        ),
    )


async def preview_assignment(
    conn: AsyncConnection, event: AeProspectEvent, now: datetime
) -> DecisionPreview:
    """The assigner's decision on the current state. Run it in a transaction that is rolled
    back (and ended before publishing): the loader locks what the worker would lock."""
    policy = store.policy_from_row(await tenant_row(conn, event.tenant))
    state = await load_assigner_state(conn, policy, [event])
    processed = await store.processed_event_ids(conn, [str(event.event_id)])
    decided = state.decide(event, already_processed=bool(processed), now=now).decision
    after = decided.after
    return DecisionPreview(
        rule=decided.rule,
        reason=decided.reason,
        refused=decided.refused,
        after=json.loads(json.dumps(after.owners())) if after is not None else None,
    )


async def publish_assignment(
    broker: Broker, event: AeProspectEvent, preview: DecisionPreview
) -> AssignmentAccepted:
    """Publish with confirms. Call it after the preview's transaction ended: the preview's
    locks must not be held while the broker confirms."""
    try:
        await broker.publish([event])
    except BrokerUnavailable as exc:
        raise Unavailable(
            "the request could not be stored; retry later", code="broker_unavailable"
        ) from exc
    return AssignmentAccepted(event_id=str(event.event_id), preview=preview)
