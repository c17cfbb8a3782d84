"""Applies batches of AE prospect events: load state, decide (A1–A8), write, in one transaction."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from services.assigner.sla import sla_to_start
from services.assigner.state import load_assigner_state
from services.common.broker.base import AnyEvent
from services.common.db import sla_store, store
from services.common.messages import AeProspectEvent, AssignToGroup, dump_event
from services.common.worker import Decided, by_tenant

log = logging.getLogger("ownersync.assigner")


async def apply_ae_events(
    conn: AsyncConnection, events: Sequence[AnyEvent], now: datetime
) -> list[Decided]:
    tenants, processed = await by_tenant(conn, events, AeProspectEvent, "assigner")
    writer = store.BatchWriter(conn, now)
    decided: list[Decided] = []
    timers: list[tuple[str, int, dict[str, object]]] = []  # (tenant, prospect, timer fields)
    waits: list[tuple[str, int, int, dict[str, Any], datetime]] = []  # A5 with nobody on
    for policy, tenant_events in tenants:
        tenant_id = policy.tenant_id
        state = await load_assigner_state(conn, policy, tenant_events)
        for merge in state.merges:
            first = next(e for e in tenant_events if e.payload.prospect.id == merge.prospect_id)
            state.records[merge.prospect_id] = await store.merge_records(
                conn, tenant_id, merge.by_prospect, merge.by_sf_record, store.Cause.of(first), now
            )
            log.info("records %s and %s merged", merge.by_prospect.id, merge.by_sf_record.id)
        for event in tenant_events:
            event_id = str(event.event_id)
            result = state.decide(event, already_processed=event_id in processed, now=now)
            decision = result.decision
            processed.add(event_id)
            decided.append((event.type, decision.rule, decision.refused))
            if not decision.audited:
                log.info("duplicate webhook %s skipped", event.source_id)
                continue
            stored = await writer.apply(tenant_id, event, decision)
            state.applied(event, stored, result.assigned_member)
            action = event.payload.action
            if result.wait_until is not None and isinstance(action, AssignToGroup):
                event_json = json.loads(dump_event(event))
                waits.append(
                    (
                        tenant_id,
                        event.payload.prospect.id,
                        action.group_id,
                        event_json,
                        result.wait_until,
                    )
                )
            if result.assigned_member is not None and isinstance(action, AssignToGroup):
                await store.save_member_counters(
                    conn, tenant_id, action.group_id, result.assigned_member
                )
                sla = state.slas.get(action.group_id)
                owner = sla_to_start(decision, result.assigned_member, state.sf_user_of, sla)
                if sla is not None and owner is not None:
                    timer = sla_store.new_timer(
                        tenant_id,
                        0,
                        action.group_id,
                        result.assigned_member.ae_user_id,
                        owner,
                        sla,
                        0,
                        now,
                    )
                    timers.append((tenant_id, event.payload.prospect.id, timer))
            log.info(
                "decision",
                extra={
                    "tenant": tenant_id,
                    "prospect": event.payload.prospect.id,
                    "record": stored.sf_record_id if stored else None,
                    "event_id": event_id,
                    "webhook_id": event.source_id,
                    "rule": decision.rule,
                    "refused": decision.refused,
                    "reason": decision.reason,
                },
            )
    await writer.flush()
    # A record made in this batch has its id only now.
    await sla_store.add_timers_by_prospect(conn, timers)
    await sla_store.add_deferred_by_prospect(conn, waits, now)
    return decided
