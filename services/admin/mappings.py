"""Connected users: the AE user <-> SF user mappings the owner decisions go through.

Each AE user and each SF user is in one mapping at most; a request that contradicts a mapping
that holds is refused with that mapping named, never silently moved.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from services.admin.errors import Conflict, Invalid, NotFound
from services.admin.pagination import Page, decode_cursor, page_of
from services.admin.schemas import MappingView
from services.admin.tenants import tenant_row
from services.common.db.tables import ae_users, connected_users, sf_users


def _view(row: Any) -> MappingView:
    return MappingView(
        ae_user_id=row.ae_user_id, sf_user_id=row.sf_user_id, created_at=row.created_at
    )


def holding(row: Any) -> dict[str, Any]:
    return {"aeUserId": row.ae_user_id, "sfUserId": row.sf_user_id}


async def list_mappings(
    conn: AsyncConnection,
    tenant_id: str,
    *,
    limit: int,
    cursor: str | None = None,
    ae_user_id: int | None = None,
    sf_user_id: str | None = None,
) -> Page[MappingView]:
    after = decode_cursor(cursor, int)
    c = connected_users.c
    query = select(connected_users).where(c.tenant_id == tenant_id).order_by(c.ae_user_id)
    if after is not None:
        query = query.where(c.ae_user_id > after)
    if ae_user_id is not None:
        query = query.where(c.ae_user_id == ae_user_id)
    if sf_user_id is not None:
        query = query.where(c.sf_user_id == sf_user_id)
    rows = (await conn.execute(query.limit(limit + 1))).all()
    return page_of(rows, limit, lambda r: r.ae_user_id, _view)


async def create_mapping(
    conn: AsyncConnection, tenant_id: str, *, ae_user_id: int, sf_user_id: str, now: datetime
) -> tuple[MappingView, bool]:
    """The mapping, and whether it was created (False: that exact mapping already held)."""
    await tenant_row(conn, tenant_id, lock=True)
    c = connected_users.c
    held = (
        await conn.execute(
            select(connected_users).where(
                c.tenant_id == tenant_id,
                or_(c.ae_user_id == ae_user_id, c.sf_user_id == sf_user_id),
            )
        )
    ).all()
    for row in held:
        if (row.ae_user_id, row.sf_user_id) == (ae_user_id, sf_user_id):
            return _view(row), False
    for row in held:
        side = f"AE user {ae_user_id}" if row.ae_user_id == ae_user_id else f"SF user {sf_user_id}"
        raise Conflict(
            f"{side} is already connected: mapping AE user {row.ae_user_id} <-> SF user "
            f"{row.sf_user_id} holds; delete it first",
            code="mapping_conflict",
            details={"holding": holding(row)},
        )
    await _usable(conn, tenant_id, ae_user_id, sf_user_id)
    await conn.execute(
        insert(connected_users).values(
            tenant_id=tenant_id, ae_user_id=ae_user_id, sf_user_id=sf_user_id, created_at=now
        )
    )
    row = (
        await conn.execute(
            select(connected_users).where(c.tenant_id == tenant_id, c.ae_user_id == ae_user_id)
        )
    ).one()
    return _view(row), True


async def delete_mapping(
    conn: AsyncConnection,
    tenant_id: str,
    *,
    ae_user_id: int | None = None,
    sf_user_id: str | None = None,
) -> MappingView:
    """Remove the mapping of that AE user (or SF user); returns what was removed."""
    await tenant_row(conn, tenant_id, lock=True)
    c = connected_users.c
    where = c.ae_user_id == ae_user_id if ae_user_id is not None else c.sf_user_id == sf_user_id
    row = (
        await conn.execute(select(connected_users).where(c.tenant_id == tenant_id, where))
    ).first()
    if row is None:
        who = f"AE user {ae_user_id}" if ae_user_id is not None else f"SF user {sf_user_id}"
        raise NotFound(f"{who} is not connected")
    await conn.execute(
        delete(connected_users).where(c.tenant_id == tenant_id, c.ae_user_id == row.ae_user_id)
    )
    return _view(row)


async def _usable(conn: AsyncConnection, tenant_id: str, ae_user_id: int, sf_user_id: str) -> None:
    ae = (
        await conn.execute(
            select(ae_users.c.active).where(
                ae_users.c.tenant_id == tenant_id, ae_users.c.id == ae_user_id
            )
        )
    ).first()
    sf = (
        await conn.execute(
            select(sf_users.c.active).where(
                sf_users.c.tenant_id == tenant_id, sf_users.c.id == sf_user_id
            )
        )
    ).first()
    if ae is None or sf is None:
        names = [n for n, row in (("AE user", ae), ("SF user", sf)) if row is None]
        raise Invalid(
            f"unknown {' and '.join(names)}",
            code="unknown_user",
            details={
                "aeUserId": ae_user_id if ae is None else None,
                "sfUserId": sf_user_id if sf is None else None,
            },
        )
    inactive = [n for n, row in (("AE user", ae), ("SF user", sf)) if not row.active]
    if inactive:
        raise Conflict(
            f"{' and '.join(inactive)} inactive: only active users can be connected",
            code="user_inactive",
            details={"aeUserId": ae_user_id, "sfUserId": sf_user_id},
        )
