"""Follow-up SLA timers in Postgres (`sla_timers`): created, started, ended and claimed when due.

The clock of a record starts when SF confirms the owner ownersync set through a group (the
relay's answer, `start_confirmed`), ends when SF reports the record worked or moved by anyone
else (`observe_sf_updates`, from the syncer), and is claimed when due with FOR UPDATE SKIP
LOCKED (`claim_due`) by the SLA loop, which fires it once in the transaction that writes its
audit, its outbox effect and the next timer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common import metrics
from services.common.db import bulk, store
from services.common.db.tables import (
    audit_log,
    deferred_assignments,
    group_members,
    groups,
    records,
    sla_timers,
    tenants,
)
from services.common.domain import Rule
from services.common.hours import HoursError, WorkingHours
from services.common.sla import (
    DEFAULT_UNTOUCHED_STATUSES,
    OPEN_STATES,
    SfUpdate,
    SlaPolicy,
    SlaTimer,
    due_time,
    on_sf_update,
)

SLA_EVENT_TYPE = "ownersync.sla"


def hours_from_row(row: Any) -> WorkingHours | None:
    """A group member's working hours as stored (None: always on)."""
    if row.time_zone is None and row.weekly_hours is None and not row.away_dates:
        return None
    try:
        return WorkingHours.parse(row.time_zone, row.weekly_hours, row.away_dates)
    except HoursError:
        return None  # the API refuses these; a row written by hand must not stop assignments


def policy_from_row(row: Any) -> SlaPolicy:
    return SlaPolicy(
        seconds=row.sla_seconds,
        business_hours=row.sla_business_hours,
        assign_when_closed=row.assign_when_closed,
        max_escalations=row.max_escalations,
        fallback_owner_id=row.fallback_owner_id,
    )


def timer_from_row(row: Any) -> SlaTimer:
    return SlaTimer(
        id=row.id,
        tenant_id=row.tenant_id,
        record_id=row.record_id,
        group_id=row.group_id,
        ae_user_id=row.ae_user_id,
        sf_owner_id=row.sf_owner_id,
        state=row.state,
        escalations=row.escalations,
        seconds=row.seconds,
        business_hours=row.business_hours,
        started_at=row.started_at,
        due_at=row.due_at,
    )


async def group_policies(
    conn: AsyncConnection, tenant_id: str, group_ids: Iterable[int]
) -> dict[int, SlaPolicy]:
    ids = set(group_ids)
    if not ids:
        return {}
    rows = await conn.execute(
        select(groups).where(groups.c.tenant_id == tenant_id, groups.c.id.in_(ids))
    )
    return {row.id: policy_from_row(row) for row in rows}


async def untouched_statuses(conn: AsyncConnection, tenant_id: str) -> tuple[str, ...]:
    value = (
        await conn.execute(select(tenants.c.untouched_statuses).where(tenants.c.id == tenant_id))
    ).scalar()
    return DEFAULT_UNTOUCHED_STATUSES if value is None else tuple(value)


def new_timer(
    tenant_id: str,
    record_id: int,
    group_id: int,
    ae_user_id: int,
    sf_owner_id: str,
    policy: SlaPolicy,
    escalations: int,
    now: datetime,
) -> dict[str, Any]:
    """A `pending` timer row: it starts when SF confirms `sf_owner_id`."""
    assert policy.seconds is not None
    return {
        "tenant_id": tenant_id,
        "record_id": record_id,
        "group_id": group_id,
        "ae_user_id": ae_user_id,
        "sf_owner_id": sf_owner_id,
        "state": "pending",
        "escalations": escalations,
        "seconds": policy.seconds,
        "business_hours": policy.business_hours,
        "created_at": now,
    }


async def add_timers(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """New pending timers; a record's open timer, if any, is ended first (stopped)."""
    if not rows:
        return
    await conn.execute(
        update(sla_timers)
        .where(
            sla_timers.c.record_id.in_({r["record_id"] for r in rows}),
            sla_timers.c.state.in_(OPEN_STATES),
        )
        .values(state="stopped", ended_at=rows[0]["created_at"], reason="a new assignment")
    )
    await conn.execute(insert(sla_timers), list(rows))


async def add_timers_by_prospect(
    conn: AsyncConnection, timers: Sequence[tuple[str, int, dict[str, Any]]]
) -> None:
    """`add_timers` for records known by their prospect id (made in the same transaction)."""
    record_ids = await _record_ids(conn, {(t, p) for t, p, _ in timers})
    rows = [{**timer, "record_id": record_ids[(t, p)]} for t, p, timer in timers]
    await add_timers(conn, rows)


async def _record_ids(
    conn: AsyncConnection, keys: set[tuple[str, int]]
) -> dict[tuple[str, int], int]:
    """The record id of each (tenant, prospect), in one query (one prepared statement
    whatever the number of keys, see `store.one_of`)."""
    if not keys:
        return {}
    rows = await conn.execute(
        select(records.c.tenant_id, records.c.prospect_id, records.c.id).where(
            store.one_of(conn, records.c.tenant_id, {k[0] for k in keys}),
            store.one_of(conn, records.c.prospect_id, {k[1] for k in keys}),
        )
    )
    return {
        (r.tenant_id, r.prospect_id): r.id for r in rows if (r.tenant_id, r.prospect_id) in keys
    }


async def start_confirmed(conn: AsyncConnection, owners: Mapping[int, str], now: datetime) -> None:
    """Start the pending timers of the records whose SF owner the relay just confirmed."""
    if not owners:
        return
    query = select(sla_timers).where(
        store.one_of(conn, sla_timers.c.record_id, owners), sla_timers.c.state == "pending"
    )
    pending = [
        timer_from_row(r)
        for r in await conn.execute(query)
        if owners.get(r.record_id) == r.sf_owner_id
    ]
    if not pending:
        return
    hours = await _member_hours(conn, pending)
    audit = []
    for timer in pending:
        due = due_time(
            now, timer.seconds, timer.business_hours, hours.get((timer.group_id, timer.ae_user_id))
        )
        await conn.execute(
            update(sla_timers)
            .where(sla_timers.c.id == timer.id, sla_timers.c.state == "pending")
            .values(state="running", started_at=now, due_at=due)
        )
        reason = (
            f"SLA started: SF confirmed owner {timer.sf_owner_id} (AE user {timer.ae_user_id}); "
            f"due {due.isoformat()}"
        )
        audit.append(_audit(timer, reason, now))
    await conn.execute(insert(audit_log), audit)


async def open_timers_of(
    conn: AsyncConnection, tenant_id: str, record_ids: Iterable[int]
) -> list[SlaTimer]:
    """The open timers of the records: a look-up every syncer batch makes, straight through
    asyncpg on Postgres (`bulk`), through Core elsewhere."""
    if bulk.applies(conn):
        return [SlaTimer(**row) for row in await bulk.open_timer_rows(conn, tenant_id, record_ids)]
    rows = await conn.execute(
        select(sla_timers).where(
            sla_timers.c.tenant_id == tenant_id,
            store.one_of(conn, sla_timers.c.record_id, record_ids),
            sla_timers.c.state.in_(OPEN_STATES),
        )
    )
    return [timer_from_row(r) for r in rows]


async def observe_sf_updates(
    conn: AsyncConnection,
    tenant_id: str,
    updates: Sequence[tuple[int, SfUpdate]],
    now: datetime,
) -> None:
    """End the open timers that SF's notifications show worked (met) or moved (stopped)."""
    by_record = dict(updates)  # the newest update of a record is the last one
    if not by_record:
        return
    timers = await open_timers_of(conn, tenant_id, by_record)
    if not timers:
        return
    untouched = await untouched_statuses(conn, tenant_id)
    audit = []
    for timer in timers:
        ended = on_sf_update(timer, by_record[timer.record_id], untouched)
        if ended is None:
            continue
        await conn.execute(
            update(sla_timers)
            .where(sla_timers.c.id == timer.id)
            .values(state=ended.state, ended_at=now, reason=ended.reason)
        )
        audit.append(_audit(timer, f"SLA {ended.state}: {ended.reason}", now))
        if ended.state == "met":
            metrics.SLA_TOTAL.labels(str(timer.group_id), str(timer.ae_user_id), "met").inc()
    if audit:
        await conn.execute(insert(audit_log), audit)


async def claim_due(conn: AsyncConnection, now: datetime, limit: int) -> list[SlaTimer]:
    """Due timers, locked for this transaction; another replica's claim skips them."""
    query = (
        select(sla_timers)
        .where(sla_timers.c.state.in_(("running", "waiting")), sla_timers.c.due_at <= now)
        .order_by(sla_timers.c.due_at, sla_timers.c.id)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return [timer_from_row(r) for r in await conn.execute(query)]


async def add_deferred_by_prospect(
    conn: AsyncConnection,
    waits: Sequence[tuple[str, int, int, dict[str, Any], datetime]],
    now: datetime,
) -> None:
    """A5 actions waiting for a member to come on: (tenant, prospect, group, event, due)."""
    record_ids = await _record_ids(conn, {(w[0], w[1]) for w in waits})
    for tenant_id, prospect_id, group_id, event, due in waits:
        await conn.execute(
            insert(deferred_assignments).values(
                tenant_id=tenant_id,
                record_id=record_ids[(tenant_id, prospect_id)],
                group_id=group_id,
                event=event,
                due_at=due,
                created_at=now,
            )
        )


async def claim_deferred(conn: AsyncConnection, now: datetime, limit: int) -> list[Any]:
    """Due waiting assignments, locked for this transaction (SKIP LOCKED on Postgres)."""
    query = (
        select(deferred_assignments)
        .where(deferred_assignments.c.done_at.is_(None), deferred_assignments.c.due_at <= now)
        .order_by(deferred_assignments.c.due_at, deferred_assignments.c.id)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    claimed = []
    for row in await conn.execute(query):
        # Fenced as timers are: on SQLite a second writer fails or finds it changed.
        taken = await conn.execute(
            update(deferred_assignments)
            .where(
                deferred_assignments.c.id == row.id,
                deferred_assignments.c.done_at.is_(None),
                deferred_assignments.c.due_at == row.due_at,
            )
            .values(due_at=row.due_at)
        )
        if taken.rowcount == 1:
            claimed.append(row)
    return claimed


async def settle_deferred(
    conn: AsyncConnection, deferred_id: int, now: datetime, *, due_again: datetime | None
) -> None:
    values = {"due_at": due_again} if due_again is not None else {"done_at": now}
    await conn.execute(
        update(deferred_assignments).where(deferred_assignments.c.id == deferred_id).values(values)
    )


async def take(conn: AsyncConnection, timer: SlaTimer, replica: str) -> bool:
    """Fence a claimed timer: only one transaction can take it as it was claimed (on SQLite,
    which has no SKIP LOCKED, the second writer fails or finds it changed)."""
    taken = await conn.execute(
        update(sla_timers)
        .where(
            sla_timers.c.id == timer.id,
            sla_timers.c.state == timer.state,
            sla_timers.c.due_at == timer.due_at,
        )
        .values(fired_by=replica)
    )
    return taken.rowcount == 1


async def end_timer(
    conn: AsyncConnection,
    timer: SlaTimer,
    state: str,
    reason: str,
    now: datetime,
    *,
    fired_by: str,
    due_again: datetime | None = None,
) -> None:
    values: dict[str, Any] = {"state": state, "reason": reason, "fired_by": fired_by}
    if due_again is not None:
        values["due_at"] = due_again
    else:
        values["ended_at"] = now
    await conn.execute(update(sla_timers).where(sla_timers.c.id == timer.id).values(values))


async def timers_of_record(conn: AsyncConnection, record_id: int) -> list[Any]:
    rows = await conn.execute(
        select(sla_timers).where(sla_timers.c.record_id == record_id).order_by(sla_timers.c.id)
    )
    return list(rows)


async def _member_hours(
    conn: AsyncConnection, timers: Sequence[SlaTimer]
) -> dict[tuple[int, int], WorkingHours | None]:
    keys = {(t.tenant_id, t.group_id, t.ae_user_id) for t in timers}
    rows = await conn.execute(
        select(group_members).where(
            and_(
                group_members.c.tenant_id.in_({k[0] for k in keys}),
                group_members.c.group_id.in_({k[1] for k in keys}),
                group_members.c.ae_user_id.in_({k[2] for k in keys}),
            )
        )
    )
    return {
        (r.group_id, r.ae_user_id): hours_from_row(r)
        for r in rows
        if (r.tenant_id, r.group_id, r.ae_user_id) in keys
    }


def _audit(timer: SlaTimer, reason: str, now: datetime) -> dict[str, Any]:
    cause = store.Cause(None, f"sla timer {timer.id}", SLA_EVENT_TYPE)
    return store.audit_row(
        timer.tenant_id, timer.record_id, cause, Rule.SLA, reason, None, None, now
    )
