"""`POST /salesforce/{tenant}/record-created|record-reassigned|record-updated`: SF outbound
messages -> events.

Thin: check the endpoint key (`?key=`), read the body (capped), parse it safely, check the org
and the clock, publish with confirms, and answer <Ack>true</Ack> only when every notification
is durably on the broker. A missing or wrong key and an unknown tenant get the same 401 fault,
before the body is read, and the key never reaches a log line.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import select

from services.common.broker.base import BrokerUnavailable
from services.common.db.tables import tenants
from services.common.keys import key_matches, valid_hashes
from services.common.messages import (
    SF_RECORD_CREATED,
    SF_RECORD_REASSIGNED,
    SF_RECORD_UPDATED,
    SfRecordEvent,
    SfRecordEventType,
    event_id_for,
)
from services.common.metrics import EVENTS_PUBLISHED, EVENTS_RECEIVED, EVENTS_REFUSED
from services.common.web import RuntimeDep, limited_body
from services.receiver.clock import ahead_message, too_far_ahead
from services.receiver.soap import SoapFault, ack_body, parse_outbound_message

log = logging.getLogger("ownersync.receiver")
router = APIRouter(tags=["salesforce"])

SOAP_MEDIA = "text/xml; charset=utf-8"
UNAUTHENTICATED = "missing or wrong endpoint key (the `key` query parameter of the URL)"

EndpointKey = Annotated[
    str | None,
    Query(
        alias="key",
        max_length=200,
        description="the tenant's SF endpoint key, given at tenant creation or rotation",
    ),
]


@router.post("/salesforce/{tenant}/record-created", summary="SF outbound message: created")
async def record_created(
    tenant: str, request: Request, runtime: RuntimeDep, key: EndpointKey = None
) -> Response:
    return await _receive(tenant, key, request, SF_RECORD_CREATED, runtime)


@router.post("/salesforce/{tenant}/record-reassigned", summary="SF outbound message: reassigned")
async def record_reassigned(
    tenant: str, request: Request, runtime: RuntimeDep, key: EndpointKey = None
) -> Response:
    return await _receive(tenant, key, request, SF_RECORD_REASSIGNED, runtime)


@router.post(
    "/salesforce/{tenant}/record-updated",
    summary="SF outbound message: updated (Status, LastActivityDate; ends follow-up SLAs)",
)
async def record_updated(
    tenant: str, request: Request, runtime: RuntimeDep, key: EndpointKey = None
) -> Response:
    return await _receive(tenant, key, request, SF_RECORD_UPDATED, runtime)


async def _receive(
    tenant: str,
    key: str | None,
    request: Request,
    event_type: SfRecordEventType,
    runtime: RuntimeDep,
) -> Response:
    received_at = datetime.now(UTC)
    try:
        endpoint = await _authenticated(runtime, tenant, key, received_at)
        body = await limited_body(request, runtime)
        message = parse_outbound_message(body)
        if message.organization_id != endpoint.org_id:
            raise SoapFault(
                403, f"OrganizationId {message.organization_id} is not the org of tenant {tenant}"
            )
        for n in message.notifications:
            if too_far_ahead(n.record.system_modstamp, received_at):
                EVENTS_REFUSED.labels("salesforce", "from_the_future").inc()
                stamp = ahead_message("SystemModstamp", n.record.system_modstamp)
                raise SoapFault(400, f"notification {n.id}: {stamp}")
        events = [
            SfRecordEvent(
                type=event_type,
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
        unavailable = SoapFault(503, "events could not be stored; retry later", code="Server")
        return Response(unavailable.body(), status_code=503, media_type=SOAP_MEDIA)
    log.info("acked SF message for %s: %d %s", tenant, len(events), event_type)
    return Response(ack_body(), media_type=SOAP_MEDIA)


@dataclass(frozen=True)
class TenantEndpoint:
    org_id: str
    key_hash: str | None
    previous_key_hash: str | None
    previous_key_expires_at: datetime | None

    def valid_key_hashes(self, now: datetime) -> list[str]:
        return valid_hashes(
            self.key_hash, self.previous_key_hash, self.previous_key_expires_at, now
        )


ENDPOINT_CACHE_SECONDS = 10.0
ENDPOINT_CACHE_SIZE = 10_000


async def _authenticated(
    runtime: RuntimeDep, tenant: str, key: str | None, now: datetime
) -> TenantEndpoint:
    """The tenant's endpoint if `key` is one of its keys; else the same 401 fault whether the
    tenant exists or not. A key that the cached row refuses is checked once more against the
    store, so that a key rotated a moment ago works at once; a key rotated away with no grace
    keeps working for at most the cache time."""
    endpoint, cached = await _tenant_endpoint(runtime, tenant)
    if not _accepts(endpoint, key, now) and cached:
        endpoint, _ = await _tenant_endpoint(runtime, tenant, fresh=True)
    if endpoint is None or not _accepts(endpoint, key, now):
        EVENTS_REFUSED.labels("salesforce", "unauthenticated").inc()
        raise SoapFault(401, UNAUTHENTICATED, code="Client")
    return endpoint


def _accepts(endpoint: TenantEndpoint | None, key: str | None, now: datetime) -> bool:
    return key_matches(key, endpoint.valid_key_hashes(now) if endpoint else [])


async def _tenant_endpoint(
    runtime: RuntimeDep, tenant: str, *, fresh: bool = False
) -> tuple[TenantEndpoint | None, bool]:
    """The tenant's org id and endpoint key hashes, and whether they came from the cache.

    Cached briefly: SF posts many messages a second per tenant."""
    cache: dict[str, tuple[TenantEndpoint | None, float]] = runtime.extras.setdefault(
        "tenant_endpoints", {}
    )
    now = time.monotonic()
    hit = cache.get(tenant)
    if hit is not None and hit[1] > now and not fresh:
        return hit[0], True
    async with runtime.engine.connect() as conn:
        row = (
            await conn.execute(
                select(
                    tenants.c.salesforce_org_id,
                    tenants.c.endpoint_key_hash,
                    tenants.c.previous_endpoint_key_hash,
                    tenants.c.previous_endpoint_key_expires_at,
                ).where(tenants.c.id == tenant)
            )
        ).first()
    # Unknown tenants are cached too, so that they cost what a wrong key costs; bounded, so that
    # a scan of names cannot grow it without end.
    endpoint = None if row is None else TenantEndpoint(*row)
    if len(cache) >= ENDPOINT_CACHE_SIZE and tenant not in cache:
        cache.clear()
    cache[tenant] = (endpoint, now + ENDPOINT_CACHE_SECONDS)
    return endpoint, False
