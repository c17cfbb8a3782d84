"""Reads and writes of the decision state, used inside the worker's one transaction per batch."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.common.db.tables import (
    ae_users,
    audit_log,
    connected_users,
    group_members,
    groups,
    inbox,
    outbox,
    queues,
    records,
    tenants,
)
from services.common.domain import Decision, Member, RecordState, TenantPolicy
from services.common.messages import AeProspectEvent, SfRecordEvent

_RECORD_FIELDS = (
    "id",
    "prospect_id",
    "sf_record_id",
    "sf_object",
    "email",
    "ae_assigned_user_id",
    "ae_assigned_queue_id",
    "sf_owner_id",
    "last_modstamp",
)


def record_from_row(row: Any) -> RecordState:
    """The record of a row that selected the `records` table (alone or joined: keyed by column)."""
    m = row._mapping
    return RecordState(**{name: m[records.c[name]] for name in _RECORD_FIELDS})


async def load_policies(
    conn: AsyncConnection, tenant_ids: Iterable[str]
) -> dict[str, TenantPolicy]:
    rows = await conn.execute(select(tenants).where(tenants.c.id.in_(set(tenant_ids))))
    return {
        r.id: TenantPolicy(
            tenant_id=r.id,
            connector_user_id=r.connector_user_id,
            sync_mode=r.sync_mode,
            auto_create_prospects=r.auto_create_prospects,
            connector_verified=r.connector_verified,
        )
        for r in rows
    }


async def processed_event_ids(conn: AsyncConnection, event_ids: Iterable[str]) -> set[str]:
    rows = await conn.execute(select(inbox.c.event_id).where(inbox.c.event_id.in_(set(event_ids))))
    return {r.event_id for r in rows}


async def records_by(
    conn: AsyncConnection, tenant_id: str, column: str, keys: Iterable[Any]
) -> dict[Any, RecordState]:
    """Records of a tenant keyed by `sf_record_id` or `prospect_id`, locked for this batch."""
    keys = set(keys)
    if not keys:
        return {}
    col = records.c[column]
    query = select(records).where(records.c.tenant_id == tenant_id, col.in_(keys))
    if conn.dialect.name == "postgresql":
        # Two workers applying events of the same record must not both read the old state.
        query = query.order_by(records.c.id).with_for_update()
    return {getattr(r, column): record_from_row(r) for r in await conn.execute(query)}


async def ae_users_connected_to(
    conn: AsyncConnection, tenant_id: str, sf_user_ids: Iterable[str]
) -> dict[str, int]:
    rows = await conn.execute(
        select(connected_users.c.sf_user_id, connected_users.c.ae_user_id).where(
            connected_users.c.tenant_id == tenant_id,
            connected_users.c.sf_user_id.in_(set(sf_user_ids)),
        )
    )
    return {r.sf_user_id: r.ae_user_id for r in rows}


async def sf_users_connected_to(
    conn: AsyncConnection, tenant_id: str, ae_user_ids: Iterable[int]
) -> dict[int, str]:
    rows = await conn.execute(
        select(connected_users.c.ae_user_id, connected_users.c.sf_user_id).where(
            connected_users.c.tenant_id == tenant_id,
            connected_users.c.ae_user_id.in_(set(ae_user_ids)),
        )
    )
    return {r.ae_user_id: r.sf_user_id for r in rows}


async def oldest_unlinked_by_email(
    conn: AsyncConnection, tenant_id: str, emails: Iterable[str | None]
) -> dict[str, RecordState]:
    wanted = {e.lower() for e in emails if e}
    if not wanted:
        return {}
    rows = await conn.execute(
        select(records)
        .where(
            records.c.tenant_id == tenant_id,
            records.c.sf_record_id.is_(None),
            records.c.prospect_id.is_not(None),
            records.c.email.in_(wanted),
        )
        .order_by(records.c.created_at, records.c.id)
    )
    found: dict[str, RecordState] = {}
    for row in rows:
        found.setdefault(row.email, record_from_row(row))
    return found


Event = SfRecordEvent | AeProspectEvent


@dataclass
class BatchWriter:
    """Collects what one batch of decisions changes and writes it in a few statements."""

    conn: AsyncConnection
    now: datetime
    _inbox: list[dict[str, Any]] = field(default_factory=list)
    _audit: list[dict[str, Any]] = field(default_factory=list)
    _outbox: list[dict[str, Any]] = field(default_factory=list)
    _updates: dict[int, RecordState] = field(default_factory=dict)
    _new: dict[int, tuple[str, RecordState]] = field(default_factory=dict)

    async def apply(self, tenant_id: str, event: Event, decision: Decision) -> RecordState | None:
        """Stage the decision; returns the record state to keep using in this batch, or None.

        A record created in this batch carries a temporary negative id until `flush`."""
        self._inbox.append(
            {
                "event_id": str(event.event_id),
                "tenant_id": tenant_id,
                "type": event.type,
                "source_id": event.source_id,
                "processed_at": self.now,
            }
        )
        after = await self._store_record(tenant_id, decision.after)
        if decision.audited:
            record_id = (after or decision.before or RecordState()).id
            self._audit.append(
                {
                    "tenant_id": tenant_id,
                    "record_id": record_id,
                    "event_id": str(event.event_id),
                    "source_id": event.source_id,
                    "event_type": event.type,
                    "rule": decision.rule,
                    "before": _jsonable(decision.before),
                    "after": _jsonable(after),
                    "reason": decision.reason,
                    "created_at": self.now,
                }
            )
        for effect in decision.effects:
            assert after is not None and after.id is not None, "an effect needs a stored record"
            self._outbox.append(
                {
                    "tenant_id": tenant_id,
                    "record_id": after.id,
                    "target": effect.target,
                    "kind": effect.kind,
                    "payload": effect.payload(),
                    "event_id": str(event.event_id),
                    "status": "pending",
                    "attempts": 0,
                    "next_attempt_at": self.now,
                    "created_at": self.now,
                }
            )
        return after

    async def _store_record(self, tenant_id: str, state: RecordState | None) -> RecordState | None:
        """Stage the record; a new one gets a temporary negative id until `flush` inserts it."""
        if state is None:
            return None
        if state.email and state.email != state.email.lower():
            state = state.evolve(email=state.email.lower())
        if state.id is None:
            state = state.evolve(id=-(len(self._new) + 1))
        if state.id < 0:
            self._new[state.id] = (tenant_id, state)
        else:
            self._updates[state.id] = state
        return state

    async def flush(self) -> None:
        """Write the batch: new records in one INSERT … RETURNING, then everything else."""
        real_id: dict[int, int] = {}
        if self._new:
            staged = list(self._new.items())
            inserted = await self.conn.execute(
                insert(records).returning(records.c.id, sort_by_parameter_order=True),
                [
                    {
                        "tenant_id": tenant_id,
                        "created_at": self.now,
                        "updated_at": self.now,
                        **_record_values(state),
                    }
                    for _, (tenant_id, state) in staged
                ],
            )
            real_id = {tmp: new for (tmp, _), new in zip(staged, inserted.scalars(), strict=True)}
        if self._updates:
            await self.conn.execute(
                update(records).where(records.c.id == bindparam("rid")),
                [
                    {"rid": s.id, "updated_at": self.now, **_record_values(s)}
                    for s in self._updates.values()
                ],
            )
        for rows in (self._audit, self._outbox):
            for row in rows:
                if row["record_id"] is not None and row["record_id"] < 0:
                    row["record_id"] = real_id[row["record_id"]]
        for table, rows in ((inbox, self._inbox), (audit_log, self._audit), (outbox, self._outbox)):
            if rows:
                await self.conn.execute(insert(table), rows)


def _record_values(state: RecordState) -> dict[str, Any]:
    return {name: getattr(state, name) for name in _RECORD_FIELDS if name != "id"}


def _jsonable(state: RecordState | None) -> dict[str, Any] | None:
    return state.owners() if state is not None else None  # owners() holds JSON types only


async def group_members_of(
    conn: AsyncConnection, tenant_id: str, group_ids: Iterable[int]
) -> dict[int, list[Member]]:
    """Round-robin members per group, locked so two workers never pick from stale counters."""
    group_ids = set(group_ids)
    if not group_ids:
        return {}
    known = await conn.execute(
        select(groups.c.id).where(groups.c.tenant_id == tenant_id, groups.c.id.in_(group_ids))
    )
    found: dict[int, list[Member]] = {row.id: [] for row in known}
    query = (
        select(group_members, ae_users.c.active, ae_users.c.created_at)
        .join(
            ae_users,
            and_(
                ae_users.c.tenant_id == group_members.c.tenant_id,
                ae_users.c.id == group_members.c.ae_user_id,
            ),
        )
        .where(group_members.c.tenant_id == tenant_id, group_members.c.group_id.in_(group_ids))
        .order_by(ae_users.c.created_at, ae_users.c.id)
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(of=group_members)
    for order, row in enumerate(await conn.execute(query)):
        found[row.group_id].append(
            Member(
                ae_user_id=row.ae_user_id,
                created_order=order,
                weight=row.weight,
                daily_cap=row.daily_cap,
                paused=row.paused,
                active=row.active,
                last_assigned_at=row.last_assigned_at,
                assigned_today=row.assigned_today,
                assigned_total=row.assigned_total,
            )
        )
    return found


async def save_member_counters(
    conn: AsyncConnection, tenant_id: str, group_id: int, member: Member
) -> None:
    await conn.execute(
        update(group_members)
        .where(
            group_members.c.tenant_id == tenant_id,
            group_members.c.group_id == group_id,
            group_members.c.ae_user_id == member.ae_user_id,
        )
        .values(
            last_assigned_at=member.last_assigned_at,
            assigned_today=member.assigned_today,
            assigned_total=member.assigned_total,
            counted_on=member.last_assigned_at.date().isoformat()
            if member.last_assigned_at
            else None,
        )
    )


async def tenant_queue_ids(conn: AsyncConnection, tenant_id: str) -> set[str]:
    rows = await conn.execute(select(queues.c.id).where(queues.c.tenant_id == tenant_id))
    return {r.id for r in rows}


async def pending_effects(engine: AsyncEngine) -> int:
    """Effects the relay has still to send (or retry)."""
    async with engine.connect() as conn:
        return int(
            (
                await conn.execute(
                    select(func.count()).select_from(outbox).where(outbox.c.status == "pending")
                )
            ).scalar_one()
        )
