"""SF lead queues and AE round-robin groups (members, weights, daily caps, pause/resume)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.admin.errors import Conflict, Invalid, NotFound
from services.admin.pagination import Page, decode_cursor, page_of
from services.admin.schemas import (
    GroupCreate,
    GroupMemberPut,
    GroupMemberView,
    GroupSlaPut,
    GroupSlaView,
    GroupView,
    QueueView,
)
from services.admin.tenants import tenant_row
from services.assigner.round_robin import pick_member
from services.common.db import store
from services.common.db.tables import ae_users, group_members, groups, queues
from services.common.hours import WorkingHours

# --- queues ------------------------------------------------------------------------------


def _queue_view(row: Any) -> QueueView:
    return QueueView(id=row.id, name=row.name)


async def list_queues(
    conn: AsyncConnection, tenant_id: str, *, limit: int, cursor: str | None = None
) -> Page[QueueView]:
    after = decode_cursor(cursor, str)
    query = select(queues).where(queues.c.tenant_id == tenant_id).order_by(queues.c.id)
    if after is not None:
        query = query.where(queues.c.id > after)
    rows = (await conn.execute(query.limit(limit + 1))).all()
    return page_of(rows, limit, lambda r: r.id, _queue_view)


async def _queue(conn: AsyncConnection, tenant_id: str, queue_id: str) -> Any:
    row = (
        await conn.execute(
            select(queues).where(queues.c.tenant_id == tenant_id, queues.c.id == queue_id)
        )
    ).first()
    if row is None:
        raise NotFound(f"queue {queue_id} not found")
    return row


async def create_queue(
    conn: AsyncConnection, tenant_id: str, *, queue_id: str, name: str
) -> QueueView:
    await tenant_row(conn, tenant_id)
    with_id = select(queues.c.id).where(queues.c.tenant_id == tenant_id, queues.c.id == queue_id)
    if (await conn.execute(with_id)).first():
        raise Conflict(f"queue {queue_id} exists", code="queue_exists", details={"id": queue_id})
    await conn.execute(insert(queues).values(tenant_id=tenant_id, id=queue_id, name=name))
    return _queue_view(await _queue(conn, tenant_id, queue_id))


async def rename_queue(
    conn: AsyncConnection, tenant_id: str, queue_id: str, *, name: str
) -> QueueView:
    await _queue(conn, tenant_id, queue_id)
    await conn.execute(
        update(queues)
        .where(queues.c.tenant_id == tenant_id, queues.c.id == queue_id)
        .values(name=name)
    )
    return _queue_view(await _queue(conn, tenant_id, queue_id))


async def delete_queue(conn: AsyncConnection, tenant_id: str, queue_id: str) -> QueueView:
    """The queue is no longer one AE may assign to; records already on it stay as they are."""
    row = await _queue(conn, tenant_id, queue_id)
    await conn.execute(
        delete(queues).where(queues.c.tenant_id == tenant_id, queues.c.id == queue_id)
    )
    return _queue_view(row)


# --- groups ------------------------------------------------------------------------------


def _member_view(row: Any) -> GroupMemberView:
    return GroupMemberView(
        ae_user_id=row.ae_user_id,
        weight=row.weight,
        daily_cap=row.daily_cap,
        paused=row.paused,
        last_assigned_at=row.last_assigned_at,
        assigned_today=row.assigned_today,
        assigned_total=row.assigned_total,
        time_zone=row.time_zone,
        weekly_hours=row.weekly_hours,
        away_dates=row.away_dates or [],
    )


def _sla_view(row: Any) -> GroupSlaView:
    return GroupSlaView(
        sla_seconds=row.sla_seconds,
        sla_business_hours=row.sla_business_hours,
        assign_when_closed=row.assign_when_closed,
        max_escalations=row.max_escalations,
        fallback_owner_id=row.fallback_owner_id,
    )


def _hours_values(data: GroupMemberPut) -> dict[str, Any]:
    """The member's working hours as stored: weekly hours in their canonical text form."""
    hours = WorkingHours.parse(data.time_zone, data.weekly_hours, data.away_dates)
    return {
        "time_zone": data.time_zone,
        "weekly_hours": hours.weekly_text(),
        "away_dates": sorted(d.isoformat() for d in hours.away) or None,
    }


async def _members(
    conn: AsyncConnection, tenant_id: str, group_ids: list[int]
) -> dict[int, list[GroupMemberView]]:
    found: dict[int, list[GroupMemberView]] = defaultdict(list)
    if group_ids:
        rows = await conn.execute(
            select(group_members)
            .where(group_members.c.tenant_id == tenant_id, group_members.c.group_id.in_(group_ids))
            .order_by(group_members.c.group_id, group_members.c.ae_user_id)
        )
        for row in rows:
            found[row.group_id].append(_member_view(row))
    return found


async def list_groups(
    conn: AsyncConnection, tenant_id: str, *, limit: int, cursor: str | None = None
) -> Page[GroupView]:
    after = decode_cursor(cursor, int)
    query = select(groups).where(groups.c.tenant_id == tenant_id).order_by(groups.c.id)
    if after is not None:
        query = query.where(groups.c.id > after)
    rows = (await conn.execute(query.limit(limit + 1))).all()
    members = await _members(conn, tenant_id, [r.id for r in rows[:limit]])
    return page_of(
        rows,
        limit,
        lambda r: r.id,
        lambda r: GroupView(id=r.id, name=r.name, members=members[r.id], sla=_sla_view(r)),
    )


async def get_group(conn: AsyncConnection, tenant_id: str, group_id: int) -> GroupView:
    row = (
        await conn.execute(
            select(groups).where(groups.c.tenant_id == tenant_id, groups.c.id == group_id)
        )
    ).first()
    if row is None:
        raise NotFound(f"group {group_id} not found")
    members = await _members(conn, tenant_id, [group_id])
    return GroupView(id=row.id, name=row.name, members=members[group_id], sla=_sla_view(row))


async def create_group(conn: AsyncConnection, tenant_id: str, data: GroupCreate) -> GroupView:
    await tenant_row(conn, tenant_id)
    with_id = select(groups.c.id).where(groups.c.tenant_id == tenant_id, groups.c.id == data.id)
    if (await conn.execute(with_id)).first():
        raise Conflict(f"group {data.id} exists", code="group_exists", details={"id": data.id})
    member_ids = list(dict.fromkeys(data.members))
    await _known_ae_users(conn, tenant_id, member_ids)
    await conn.execute(insert(groups).values(tenant_id=tenant_id, id=data.id, name=data.name))
    if member_ids:
        await conn.execute(
            insert(group_members),
            [_new_member(tenant_id, data.id, uid, GroupMemberPut()) for uid in member_ids],
        )
    return await get_group(conn, tenant_id, data.id)


async def rename_group(
    conn: AsyncConnection, tenant_id: str, group_id: int, *, name: str
) -> GroupView:
    await get_group(conn, tenant_id, group_id)
    await conn.execute(
        update(groups)
        .where(groups.c.tenant_id == tenant_id, groups.c.id == group_id)
        .values(name=name)
    )
    return await get_group(conn, tenant_id, group_id)


async def delete_group(conn: AsyncConnection, tenant_id: str, group_id: int) -> GroupView:
    group = await get_group(conn, tenant_id, group_id)
    await conn.execute(
        delete(groups).where(groups.c.tenant_id == tenant_id, groups.c.id == group_id)
    )
    return group


async def set_group_sla(
    conn: AsyncConnection, tenant_id: str, group_id: int, data: GroupSlaPut
) -> GroupView:
    """Set the group's follow-up SLA (all of it). Timers already running keep their length."""
    await get_group(conn, tenant_id, group_id)
    await conn.execute(
        update(groups)
        .where(groups.c.tenant_id == tenant_id, groups.c.id == group_id)
        .values(**data.model_dump(by_alias=False))
    )
    return await get_group(conn, tenant_id, group_id)


async def put_member(
    conn: AsyncConnection, tenant_id: str, group_id: int, ae_user_id: int, data: GroupMemberPut
) -> tuple[GroupMemberView, bool]:
    """Add the member or set its weight and cap; returns it and whether it was added."""
    await get_group(conn, tenant_id, group_id)
    await _known_ae_users(conn, tenant_id, [ae_user_id])
    where = _member_where(tenant_id, group_id, ae_user_id)
    exists = (await conn.execute(select(group_members.c.ae_user_id).where(where))).first()
    if exists:
        await conn.execute(
            update(group_members)
            .where(where)
            .values(weight=data.weight, daily_cap=data.daily_cap, **_hours_values(data))
        )
    else:
        await conn.execute(
            insert(group_members).values(_new_member(tenant_id, group_id, ae_user_id, data))
        )
    return await _member(conn, tenant_id, group_id, ae_user_id), not exists


async def remove_member(
    conn: AsyncConnection, tenant_id: str, group_id: int, ae_user_id: int
) -> GroupMemberView:
    member = await _member(conn, tenant_id, group_id, ae_user_id)
    await conn.execute(delete(group_members).where(_member_where(tenant_id, group_id, ae_user_id)))
    return member


async def set_member_paused(
    conn: AsyncConnection, tenant_id: str, group_id: int, ae_user_id: int, *, paused: bool
) -> GroupMemberView:
    """A paused member is skipped by the round robin until resumed; its counters are kept."""
    await _member(conn, tenant_id, group_id, ae_user_id)
    await conn.execute(
        update(group_members)
        .where(_member_where(tenant_id, group_id, ae_user_id))
        .values(paused=paused)
    )
    return await _member(conn, tenant_id, group_id, ae_user_id)


def _member_where(tenant_id: str, group_id: int, ae_user_id: int) -> Any:
    return (
        (group_members.c.tenant_id == tenant_id)
        & (group_members.c.group_id == group_id)
        & (group_members.c.ae_user_id == ae_user_id)
    )


async def _member(
    conn: AsyncConnection, tenant_id: str, group_id: int, ae_user_id: int
) -> GroupMemberView:
    await get_group(conn, tenant_id, group_id)
    row = (
        await conn.execute(
            select(group_members).where(_member_where(tenant_id, group_id, ae_user_id))
        )
    ).first()
    if row is None:
        raise NotFound(f"AE user {ae_user_id} is not a member of group {group_id}")
    return _member_view(row)


def _new_member(
    tenant_id: str, group_id: int, ae_user_id: int, data: GroupMemberPut
) -> dict[str, Any]:
    return {
        "tenant_id": tenant_id,
        "group_id": group_id,
        "ae_user_id": ae_user_id,
        "weight": data.weight,
        "daily_cap": data.daily_cap,
        "paused": False,
        "assigned_today": 0,
        "assigned_total": 0,
        **_hours_values(data),
    }


async def _known_ae_users(conn: AsyncConnection, tenant_id: str, ids: list[int]) -> None:
    if not ids:
        return
    found = set(
        (
            await conn.execute(
                select(ae_users.c.id).where(
                    ae_users.c.tenant_id == tenant_id, ae_users.c.id.in_(ids)
                )
            )
        ).scalars()
    )
    missing = [i for i in ids if i not in found]
    if missing:
        raise Invalid(
            f"unknown AE user{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))}",
            code="unknown_user",
            details={"aeUserIds": missing},
        )


@dataclass(frozen=True)
class NextPick:
    ae_user_id: int | None
    reason: str


async def next_picks(
    conn: AsyncConnection, tenant_id: str, group_ids: list[int], now: datetime
) -> dict[int, NextPick]:
    """Who the round robin would give each group's next prospect to, by the assigner's own
    pick on the members as they stand (groups not found are left out). Run it in a
    transaction that is rolled back or ends at once: the members are read locked, as the
    assigner reads them."""
    members = await store.group_members_of(conn, tenant_id, group_ids)
    picks = {group_id: pick_member(held, now) for group_id, held in members.items()}
    return {
        group_id: NextPick(pick.member.ae_user_id if pick.member else None, pick.reason)
        for group_id, pick in picks.items()
    }
