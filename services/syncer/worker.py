"""Applies batches of SF record events: load state, decide (S1–S9), write, in one transaction."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.broker.base import AnyEvent
from services.common.db import sla_store, store
from services.common.domain import RecordState, Rule
from services.common.messages import SfRecordEvent
from services.common.sla import SfUpdate
from services.common.worker import Decided, by_tenant
from services.syncer.decide import decide_sf_event

log = logging.getLogger("ownersync.syncer")


async def apply_sf_events(
    conn: AsyncConnection, events: Sequence[AnyEvent], now: datetime
) -> list[Decided]:
    tenants, processed = await by_tenant(conn, events, SfRecordEvent, "syncer")
    writer = store.BatchWriter(conn, now)
    decided: list[Decided] = []
    for policy, tenant_events in tenants:
        tenant_id = policy.tenant_id
        payloads = [e.payload for e in tenant_events]
        found = await store.records_by_any_id(
            conn, tenant_id, sf_record_ids=(p.record_id for p in payloads)
        )
        known = {r.sf_record_id: r for r in found if r.sf_record_id is not None}
        ae_user_of = await store.ae_users_connected_to(
            conn, tenant_id, (p.owner_id for p in payloads)
        )
        unlinked = await store.oldest_unlinked_by_email(
            conn, tenant_id, (p.email for p in payloads if p.record_id not in known)
        )
        sla_updates: list[tuple[int, SfUpdate]] = []
        for event in tenant_events:
            sf = event.payload
            event_id = str(event.event_id)
            email = (sf.email or "").lower()
            decision = decide_sf_event(
                event,
                policy=policy,
                record=known.get(sf.record_id),
                ae_user_of=ae_user_of,
                unlinked_same_email=None if sf.record_id in known else unlinked.get(email),
                already_processed=event_id in processed,
            )
            processed.add(event_id)
            decided.append((event.type, decision.rule, decision.refused))
            if not decision.audited:
                log.info("duplicate notification %s skipped (S8)", event.source_id)
                continue
            stored: RecordState | None = await writer.apply(tenant_id, event, decision)
            if stored is not None:
                known[sf.record_id] = stored
                unlinked.pop(email, None)
                if stored.id is not None and stored.id > 0 and decision.rule != Rule.S7:
                    update = SfUpdate(
                        sf.owner_id, sf.status, sf.last_activity_date, sf.system_modstamp
                    )
                    sla_updates.append((stored.id, update))
            log.info(
                "decision",
                extra={
                    "tenant": tenant_id,
                    "record": sf.record_id,
                    "prospect": stored.prospect_id if stored else None,
                    "event_id": event_id,
                    "sf_notification_id": event.source_id,
                    "rule": decision.rule,
                    "reason": decision.reason,
                },
            )
        # Follow-up SLAs end when SF shows the record worked or moved by anyone else.
        await sla_store.observe_sf_updates(conn, tenant_id, sla_updates, now)
    await writer.flush()
    return decided
