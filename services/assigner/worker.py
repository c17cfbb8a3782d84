"""Applies batches of AE prospect events: load state, decide (A1–A8), write, in one transaction."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from services.assigner.decide import decide_ae_event
from services.common.broker.base import AnyEvent
from services.common.db import store
from services.common.messages import AeProspectEvent, AssignToGroup, AssignToUser
from services.common.worker import Decided, by_tenant

log = logging.getLogger("ownersync.assigner")


async def apply_ae_events(
    conn: AsyncConnection, events: Sequence[AnyEvent], now: datetime
) -> list[Decided]:
    tenants, processed = await by_tenant(conn, events, AeProspectEvent, "assigner")
    writer = store.BatchWriter(conn, now)
    decided: list[Decided] = []
    for policy, tenant_events in tenants:
        tenant_id = policy.tenant_id
        prospects = [e.payload.prospect for e in tenant_events]
        known = await store.records_by(conn, tenant_id, "prospect_id", (p.id for p in prospects))
        group_ids = {
            e.payload.action.group_id
            for e in tenant_events
            if isinstance(e.payload.action, AssignToGroup)
        }
        members = await store.group_members_of(conn, tenant_id, group_ids)
        users = {p.assigned_user_id for p in prospects} | {
            m.ae_user_id for ms in members.values() for m in ms
        }
        users |= {
            e.payload.action.user_id
            for e in tenant_events
            if isinstance(e.payload.action, AssignToUser)
        }
        sf_user_of = await store.sf_users_connected_to(conn, tenant_id, users - {None})
        queues = await store.tenant_queue_ids(conn, tenant_id)
        for event in tenant_events:
            event_id = str(event.event_id)
            prospect_id = event.payload.prospect.id
            action = event.payload.action
            group = action.group_id if isinstance(action, AssignToGroup) else None
            result = decide_ae_event(
                event,
                policy=policy,
                record=known.get(prospect_id),
                sf_user_of=sf_user_of,
                group_members=members.get(group) if group is not None else None,
                known_queues=queues,
                already_processed=event_id in processed,
                now=now,
            )
            decision = result.decision
            processed.add(event_id)
            decided.append((event.type, decision.rule, decision.refused))
            if not decision.audited:
                log.info("duplicate webhook %s skipped", event.source_id)
                continue
            stored = await writer.apply(tenant_id, event, decision)
            if stored is not None:
                known[prospect_id] = stored
            if result.assigned_member is not None and group is not None:
                chosen = result.assigned_member
                members[group] = [
                    chosen if m.ae_user_id == chosen.ae_user_id else m for m in members[group]
                ]
                await store.save_member_counters(conn, tenant_id, group, chosen)
            log.info(
                "decision",
                extra={
                    "tenant": tenant_id,
                    "prospect": prospect_id,
                    "record": stored.sf_record_id if stored else None,
                    "event_id": event_id,
                    "webhook_id": event.source_id,
                    "rule": decision.rule,
                    "refused": decision.refused,
                    "reason": decision.reason,
                },
            )
    await writer.flush()
    return decided
