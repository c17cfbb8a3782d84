"""The follow-up SLA loop, run by every assigner replica: fires due SLA timers (row A9) and
decides again the group assignments (A5) that waited for a member to come on.

Each pass claims due timers with FOR UPDATE SKIP LOCKED and, in the same transaction, decides
(services/assigner/sla.py), writes the audit row, the outbox effect (PATCH OwnerId), the member's
round-robin counters, the timer's end and the next timer. A timer is fired by one replica once:
a crash before the commit leaves it due for the next pass; after the commit it is no longer due.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.assigner.sla import Expiry, decide_expiry, sla_to_start
from services.assigner.state import load_assigner_state
from services.common import metrics
from services.common.db import sla_store, store
from services.common.db.tables import records
from services.common.messages import AeProspectEvent, load_event
from services.common.sla import SlaPolicy, SlaTimer

log = logging.getLogger("ownersync.sla")


class SlaLoop:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        replica: str,
        interval: float = 1.0,
        batch_size: int = 50,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.engine = engine
        self.replica = replica
        self.interval = interval
        self.batch_size = batch_size
        self.clock = clock or (lambda: datetime.now(UTC))
        self.fired = 0
        self.assigned = 0  # deferred group assignments decided again

    async def run(self, stop: asyncio.Event) -> None:
        log.info("SLA loop %s started", self.replica)
        while not stop.is_set():
            try:
                fired = await self.run_once()
            except Exception:
                log.exception("SLA pass failed")
                fired = 0
            if fired:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval)
        log.info("SLA loop stopped")

    async def run_once(self) -> int:
        """One pass: fire the due timers this replica could claim; returns how many."""
        missed: list[SlaTimer] = []
        async with self.engine.begin() as conn:
            now = self.clock()
            timers = await sla_store.claim_due(conn, now, self.batch_size)
            timers = [t for t in timers if await sla_store.take(conn, t, self.replica)]
            for timer in timers:
                expiry = await self._fire(conn, timer, now)
                # Missed once, when its clock ran out (a waiting timer fires again later).
                if timer.state == "running" and expiry.state != "stopped":
                    missed.append(timer)
            for deferred in await sla_store.claim_deferred(conn, now, self.batch_size):
                await self._assign_deferred(conn, deferred, now)
                self.assigned += 1
        for timer in missed:
            metrics.SLA_TOTAL.labels(str(timer.group_id), str(timer.ae_user_id), "missed").inc()
        self.fired += len(timers)
        return len(timers)

    async def _assign_deferred(self, conn: AsyncConnection, deferred: Any, now: datetime) -> None:
        """Decide a waiting A5 action again; it waits on if still nobody is on."""
        event = load_event(json.dumps(deferred.event).encode())
        assert isinstance(event, AeProspectEvent)
        policy = (await store.load_policies(conn, [event.tenant])).get(event.tenant)
        if policy is None:
            await sla_store.settle_deferred(conn, deferred.id, now, due_again=None)
            return
        state = await load_assigner_state(conn, policy, [event])
        result = state.decide(event, already_processed=False, now=now)
        if result.wait_until is not None:
            await sla_store.settle_deferred(conn, deferred.id, now, due_again=result.wait_until)
            return
        writer = store.BatchWriter(conn, now)
        stored = await writer.apply_decision(
            policy.tenant_id, store.Cause.of(event), result.decision
        )
        await writer.flush()
        member = result.assigned_member
        if member is not None:
            await store.save_member_counters(conn, policy.tenant_id, deferred.group_id, member)
        sla = state.slas.get(deferred.group_id)
        owner = sla_to_start(result.decision, member, state.sf_user_of, sla)
        if sla is not None and owner is not None and member is not None and stored is not None:
            fresh = sla_store.new_timer(
                policy.tenant_id,
                deferred.record_id,
                deferred.group_id,
                member.ae_user_id,
                owner,
                sla,
                0,
                now,
            )
            await sla_store.add_timers(conn, [fresh])
        await sla_store.settle_deferred(conn, deferred.id, now, due_again=None)
        log.info(
            "decision",
            extra={
                "tenant": policy.tenant_id,
                "prospect": event.payload.prospect.id,
                "rule": result.decision.rule,
                "reason": result.decision.reason,
            },
        )

    async def _fire(self, conn: AsyncConnection, timer: SlaTimer, now: datetime) -> Expiry:
        tenant = timer.tenant_id
        query = select(records).where(records.c.id == timer.record_id)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        record = store.record_from_row((await conn.execute(query)).one())
        policy = (await sla_store.group_policies(conn, tenant, [timer.group_id])).get(
            timer.group_id, SlaPolicy()
        )
        members = (await store.group_members_of(conn, tenant, [timer.group_id])).get(
            timer.group_id, []
        )
        sf_user_of = await store.sf_users_connected_to(
            conn, tenant, {m.ae_user_id for m in members}
        )
        expiry = decide_expiry(
            timer, policy=policy, record=record, members=members, sf_user_of=sf_user_of, now=now
        )
        decision = expiry.decision
        writer = store.BatchWriter(conn, now)
        cause = store.Cause(None, f"sla timer {timer.id}", sla_store.SLA_EVENT_TYPE)
        await writer.apply_decision(tenant, cause, decision)
        await writer.flush()
        await sla_store.end_timer(
            conn,
            timer,
            expiry.state,
            decision.reason,
            now,
            fired_by=self.replica,
            due_again=expiry.wait_until,
        )
        member = expiry.assigned_member
        if member is not None:
            await store.save_member_counters(conn, tenant, timer.group_id, member)
        if member is not None and expiry.next_owner is not None and policy.on:
            fresh = sla_store.new_timer(
                tenant,
                timer.record_id,
                timer.group_id,
                member.ae_user_id,
                expiry.next_owner,
                policy,
                timer.escalations + 1,
                now,
            )
            await sla_store.add_timers(conn, [fresh])
        log.info(
            "decision",
            extra={
                "tenant": tenant,
                "record": record.sf_record_id,
                "sla_timer": timer.id,
                "rule": decision.rule,
                "sla_state": expiry.state,
                "reason": decision.reason,
            },
        )
        return expiry
