"""`POST /engagement/{tenant}/events`: signed AE webhooks -> events, published with confirms.

Thin like the SF endpoint: verify the signature, validate the body, publish, answer 202. A
`webhook-id` already applied answers 200 and publishes nothing; one still in flight is
published again and the assigner's inbox makes the second a no-op.

An unknown tenant is a tenant with no valid secret: it fails the signature check with the same
401 as a wrong secret, so the endpoint does not tell which tenants exist.
"""

from __future__ import annotations

import logging
import secrets
import time
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Response
from pydantic import BaseModel, ValidationError
from sqlalchemy import select

from services.admin.tenants import valid_webhook_secrets
from services.common.broker.base import BrokerUnavailable
from services.common.db.tables import inbox, tenants
from services.common.messages import (
    AE_EVENT_TYPE_OF_WEBHOOK,
    AeProspectEvent,
    AeWebhook,
    event_id_for,
)
from services.common.metrics import EVENTS_PUBLISHED, EVENTS_RECEIVED, EVENTS_REFUSED
from services.common.web import RuntimeDep, limited_body
from services.receiver.clock import ahead_message, too_far_ahead
from services.receiver.errors import error_response
from services.receiver.signatures import SignatureError, verify

log = logging.getLogger("ownersync.receiver")
router = APIRouter(tags=["engagement"])
MAX_WEBHOOK_ID = 200  # the bound of an event's source id


class Accepted(BaseModel):
    status: str
    eventId: str


async def webhook_secrets(runtime: RuntimeDep, tenant: str, now: datetime) -> list[str]:
    """The secrets a webhook of `tenant` may be signed with. An unknown tenant gets one random
    secret that nobody holds, so that its check costs what a wrong signature costs."""
    async with runtime.engine.connect() as conn:
        row = (await conn.execute(select(tenants).where(tenants.c.id == tenant))).first()
    return [secrets.token_urlsafe(32)] if row is None else valid_webhook_secrets(row, now)


@router.post(
    "/engagement/{tenant}/events",
    status_code=202,
    response_model=Accepted,
    summary="AE webhook (Standard Webhooks signature)",
    responses={200: {"model": Accepted}, 400: {}, 401: {}, 422: {}, 503: {}},
)
async def engagement_event(
    tenant: str,
    body: Annotated[bytes, Depends(limited_body)],
    runtime: RuntimeDep,
    webhook_id: Annotated[str | None, Header()] = None,
    webhook_timestamp: Annotated[str | None, Header()] = None,
    webhook_signature: Annotated[str | None, Header()] = None,
) -> Any:
    received_at = datetime.now(UTC)
    try:
        verify(
            await webhook_secrets(runtime, tenant, received_at),
            webhook_id=webhook_id,
            timestamp=webhook_timestamp,
            signature=webhook_signature,
            body=body,
            now=time.time(),
        )
    except SignatureError as exc:
        log.warning("refused AE webhook for %s: %s", tenant, exc)
        return error_response(401, "invalid_signature", str(exc))
    assert webhook_id is not None
    if len(webhook_id) > MAX_WEBHOOK_ID:
        return error_response(
            422, "invalid_body", f"webhook-id is over {MAX_WEBHOOK_ID} characters"
        )
    try:
        webhook = AeWebhook.model_validate_json(body)
    except ValidationError as exc:
        details = [
            {"field": ".".join(map(str, e["loc"])), "message": e["msg"], "type": e["type"]}
            for e in exc.errors(include_url=False, include_input=False)
        ]
        return error_response(422, "invalid_body", "the webhook body does not validate", details)
    if too_far_ahead(webhook.occurred_at, received_at):
        EVENTS_REFUSED.labels("engagement", "from_the_future").inc()
        return error_response(
            400, "from_the_future", ahead_message("occurredAt", webhook.occurred_at)
        )
    event_id = event_id_for(tenant, "ae", webhook_id)
    if await _already_applied(runtime, str(event_id)):
        return Response(
            Accepted(status="duplicate", eventId=str(event_id)).model_dump_json(),
            status_code=200,
            media_type="application/json",
        )
    event = AeProspectEvent(
        type=AE_EVENT_TYPE_OF_WEBHOOK[webhook.type],
        tenant=tenant,
        event_id=event_id,
        source_id=webhook_id,
        occurred_at=webhook.occurred_at,
        received_at=received_at,
        payload=webhook,
    )
    EVENTS_RECEIVED.labels(event.type).inc()
    try:
        await runtime.broker.publish([event])
        EVENTS_PUBLISHED.labels(event.type).inc()
    except BrokerUnavailable as exc:
        log.error("AE webhook %s for %s not accepted: %s", webhook_id, tenant, exc)
        return error_response(503, "broker_unavailable", "the event could not be stored; retry")
    log.info(
        "accepted AE webhook",
        extra={
            "tenant": tenant,
            "webhook_id": webhook_id,
            "event_id": str(event_id),
            "type": event.type,
        },
    )
    return Accepted(status="accepted", eventId=str(event_id))


async def _already_applied(runtime: RuntimeDep, event_id: str) -> bool:
    async with runtime.engine.connect() as conn:
        found = await conn.execute(select(inbox.c.event_id).where(inbox.c.event_id == event_id))
        return found.first() is not None
