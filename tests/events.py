"""Events as the receiver publishes them, built directly (for tests that drive a worker or the
broker by hand instead of posting to the receiver)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from services.common.messages import (
    SF_RECORD_CREATED,
    SfRecord,
    SfRecordEvent,
    SfRecordEventType,
    event_id_for,
)


def sf_record_event(
    record_id: str,
    owner_id: str,
    *,
    tenant: str = "acme",
    type: SfRecordEventType = SF_RECORD_CREATED,
    email: str | None = None,
    modstamp: datetime | None = None,
    notification_id: str | None = None,
) -> SfRecordEvent:
    """An SF notification about lead `record_id`, owned by `owner_id`."""
    now = datetime.now(UTC)
    source_id = notification_id or uuid.uuid4().hex
    return SfRecordEvent(
        type=type,
        tenant=tenant,
        event_id=event_id_for(tenant, "sf", source_id),
        source_id=source_id,
        occurred_at=now,
        received_at=now,
        payload=SfRecord(
            object="Lead",
            record_id=record_id,
            owner_id=owner_id,
            email=email,
            system_modstamp=modstamp or now,
        ),
    )
