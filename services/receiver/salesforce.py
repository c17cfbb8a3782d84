"""`POST /salesforce/{tenant}/record-created|record-reassigned`: SF outbound messages -> events.

Thin: read the body (capped), parse it safely, check the org, publish with confirms, and
answer <Ack>true</Ack> only when every notification is durably on the broker.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Response
from sqlalchemy import select

from services.common.broker.base import BrokerUnavailable
from services.common.db.tables import tenants
from services.common.messages import (
    SF_RECORD_CREATED,
    SF_RECORD_REASSIGNED,
    SfRecordEvent,
    event_id_for,
)
from services.common.metrics import EVENTS_PUBLISHED, EVENTS_RECEIVED
from services.common.web import RuntimeDep, limited_body
from services.receiver.soap import SoapFault, ack_body, parse_outbound_message

log = logging.getLogger("ownersync.receiver")
router = APIRouter(tags=["salesforce"])

SOAP_MEDIA = "text/xml; charset=utf-8"


@router.post("/salesforce/{tenant}/record-created", summary="SF outbound message: created")
async def record_created(
    tenant: str, body: Annotated[bytes, Depends(limited_body)], runtime: RuntimeDep
) -> Response:
    return await _receive(tenant, body, SF_RECORD_CREATED, runtime)


@router.post("/salesforce/{tenant}/record-reassigned", summary="SF outbound message: reassigned")
async def record_reassigned(
    tenant: str, body: Annotated[bytes, Depends(limited_body)], runtime: RuntimeDep
) -> Response:
    return await _receive(tenant, body, SF_RECORD_REASSIGNED, runtime)


async def _receive(tenant: str, body: bytes, event_type: str, runtime: RuntimeDep) -> Response:
    received_at = datetime.now(UTC)
    try:
        message = parse_outbound_message(body)
        org_id = await _tenant_org(runtime, tenant)
        if message.organization_id != org_id:
            raise SoapFault(
                403, f"OrganizationId {message.organization_id} is not the org of tenant {tenant}"
            )
        events = [
            SfRecordEvent(
                type=event_type,  # type: ignore[arg-type]
                tenant=tenant,
                event_id=event_id_for(tenant, "sf", n.id),
                source_id=n.id,
                occurred_at=n.record.system_modstamp,
                received_at=received_at,
                payload=n.record,
            )
            for n in message.notifications
        ]
        EVENTS_RECEIVED.labels(event_type).inc(len(events))
        await runtime.broker.publish(events)
        EVENTS_PUBLISHED.labels(event_type).inc(len(events))
    except SoapFault as fault:
        log.warning("refused SF message for %s: %s %s", tenant, fault.status, fault.message)
        return Response(fault.body(), status_code=fault.status, media_type=SOAP_MEDIA)
    except BrokerUnavailable as exc:
        log.error("SF message for %s not acked: %s", tenant, exc)
        fault = SoapFault(503, "events could not be stored; retry later", code="Server")
        return Response(fault.body(), status_code=503, media_type=SOAP_MEDIA)
    log.info("acked SF message for %s: %d %s", tenant, len(events), event_type)
    return Response(ack_body(), media_type=SOAP_MEDIA)


ORG_CACHE_SECONDS = 10.0


async def _tenant_org(runtime: RuntimeDep, tenant: str) -> str:
    """The tenant's org id, cached briefly: SF posts many messages a second per tenant."""
    cache: dict[str, tuple[str, float]] = runtime.extras.setdefault("tenant_orgs", {})
    now = time.monotonic()
    hit = cache.get(tenant)
    if hit is not None and hit[1] > now:
        return hit[0]
    async with runtime.engine.connect() as conn:
        org = (
            await conn.execute(select(tenants.c.salesforce_org_id).where(tenants.c.id == tenant))
        ).scalar_one_or_none()
    if org is None:
        raise SoapFault(404, f"unknown tenant {tenant!r}")
    cache[tenant] = (str(org), now + ORG_CACHE_SECONDS)
    return str(org)
