"""SF users and AE users of a tenant: create, update, (de)activate, list, load in bulk.

Deactivating a user removes its connected-user mapping: ownersync must not hand records to a
user who can no longer own them. The tenant's connector user cannot be deactivated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Column, Table, and_, bindparam, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.admin.errors import Conflict, Invalid, NotFound
from services.admin.pagination import Page, decode_cursor, page_of
from services.admin.schemas import (
    AeUserCreate,
    AeUserPatch,
    AeUserView,
    SfUserCreate,
    SfUserPatch,
    SfUserView,
    UsersLoaded,
)
from services.admin.tenants import tenant_row
from services.common.db.tables import ae_users, connected_users, sf_users

ViewT = TypeVar("ViewT", SfUserView, AeUserView)


@dataclass(frozen=True)
class _Kind(Generic[ViewT]):
    label: str
    table: Table
    mapped_by: Column[Any]  # this user's id in connected_users
    partner: Column[Any]  # the other side's id in connected_users
    key_type: type
    view: Callable[[Any], ViewT]
    nullable: tuple[str, ...]  # patch fields an explicit null clears


def _sf_view(row: Any) -> SfUserView:
    return SfUserView(
        id=row.id,
        name=row.name,
        email=row.email,
        active=row.active,
        connected_ae_user_id=row.partner,
        created_at=row.created_at,
    )


def _ae_view(row: Any) -> AeUserView:
    return AeUserView(
        id=row.id,
        name=row.name,
        email=row.email,
        salesforce_user_id=row.salesforce_user_id,
        active=row.active,
        connected_sf_user_id=row.partner,
        created_at=row.created_at,
    )


SF = _Kind(
    "SF user",
    sf_users,
    connected_users.c.sf_user_id,
    connected_users.c.ae_user_id,
    str,
    _sf_view,
    ("name", "email"),
)
AE = _Kind(
    "AE user",
    ae_users,
    connected_users.c.ae_user_id,
    connected_users.c.sf_user_id,
    int,
    _ae_view,
    ("name", "email", "salesforce_user_id"),
)


def _select(kind: _Kind[ViewT], tenant_id: str) -> Any:
    t = kind.table
    joined = t.outerjoin(
        connected_users,
        and_(connected_users.c.tenant_id == t.c.tenant_id, kind.mapped_by == t.c.id),
    )
    return (
        select(t, kind.partner.label("partner"))
        .select_from(joined)
        .where(t.c.tenant_id == tenant_id)
    )


async def _one(conn: AsyncConnection, kind: _Kind[ViewT], tenant_id: str, user_id: Any) -> Any:
    row = (await conn.execute(_select(kind, tenant_id).where(kind.table.c.id == user_id))).first()
    if row is None:
        raise NotFound(f"{kind.label} {user_id} not found")
    return row


async def _list(
    conn: AsyncConnection,
    kind: _Kind[ViewT],
    tenant_id: str,
    *,
    limit: int,
    cursor: str | None,
    active: bool | None,
    email: str | None,
) -> Page[ViewT]:
    t = kind.table
    after = decode_cursor(cursor, kind.key_type)
    query = _select(kind, tenant_id).order_by(t.c.id).limit(limit + 1)
    if after is not None:
        query = query.where(t.c.id > after)
    if active is not None:
        query = query.where(t.c.active == active)
    if email is not None:
        query = query.where(func.lower(t.c.email) == email.strip().lower())
    return page_of((await conn.execute(query)).all(), limit, lambda r: r.id, kind.view)


async def _create(
    conn: AsyncConnection, kind: _Kind[ViewT], tenant_id: str, values: dict[str, Any], now: datetime
) -> ViewT:
    await tenant_row(conn, tenant_id)
    t = kind.table
    exists = await conn.execute(
        select(t.c.id).where(t.c.tenant_id == tenant_id, t.c.id == values["id"])
    )
    if exists.first():
        raise Conflict(
            f"{kind.label} {values['id']} exists", code="user_exists", details={"id": values["id"]}
        )
    await conn.execute(insert(t).values(tenant_id=tenant_id, created_at=now, **values))
    return kind.view(await _one(conn, kind, tenant_id, values["id"]))


async def _update(
    conn: AsyncConnection,
    kind: _Kind[ViewT],
    tenant_id: str,
    user_id: Any,
    patch: SfUserPatch | AeUserPatch,
) -> ViewT:
    tenant = await tenant_row(conn, tenant_id, lock=True)
    await _one(conn, kind, tenant_id, user_id)
    changes: dict[str, Any] = {}
    for name in patch.model_fields_set:
        value = getattr(patch, name)
        if value is not None or name in kind.nullable:
            changes[name] = value
    if changes.get("active") is False:
        await _deactivating(conn, kind, tenant, [user_id])
    if changes:
        t = kind.table
        await conn.execute(
            update(t).where(t.c.tenant_id == tenant_id, t.c.id == user_id).values(**changes)
        )
    return kind.view(await _one(conn, kind, tenant_id, user_id))


async def _deactivating(
    conn: AsyncConnection, kind: _Kind[ViewT], tenant: Any, user_ids: Sequence[Any]
) -> int:
    """Refuse to deactivate the connector user; remove the mappings of the others."""
    if kind is SF and tenant.connector_user_id in user_ids:
        raise Conflict(
            f"SF user {tenant.connector_user_id} is the tenant's connector user: choose another "
            "connector user first",
            code="connector_user",
            details={"sfUserId": tenant.connector_user_id},
        )
    removed = await conn.execute(
        delete(connected_users).where(
            connected_users.c.tenant_id == tenant.id, kind.mapped_by.in_(list(user_ids))
        )
    )
    return int(removed.rowcount or 0)


async def _load(
    conn: AsyncConnection,
    kind: _Kind[ViewT],
    tenant_id: str,
    users: Sequence[dict[str, Any]],
    now: datetime,
) -> UsersLoaded:
    """Create or update many users in a few statements (the CSV/JSON import path)."""
    tenant = await tenant_row(conn, tenant_id, lock=True)
    ids = [u["id"] for u in users]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})[:20]
        raise Invalid("the same user id appears twice", code="duplicate_ids", details=dupes)
    t = kind.table
    existing = set(
        (
            await conn.execute(select(t.c.id).where(t.c.tenant_id == tenant_id, t.c.id.in_(ids)))
        ).scalars()
    )
    inactive = [u["id"] for u in users if not u["active"]]
    removed = await _deactivating(conn, kind, tenant, inactive) if inactive else 0
    new = [u for u in users if u["id"] not in existing]
    old = [u for u in users if u["id"] in existing]
    if new:
        await conn.execute(
            insert(t), [{"tenant_id": tenant_id, "created_at": now, **u} for u in new]
        )
    if old:
        fields = [k for k in old[0] if k != "id"]
        await conn.execute(
            update(t)
            .where(t.c.tenant_id == tenant_id, t.c.id == bindparam("uid"))
            .values({f: bindparam(f"v_{f}") for f in fields}),
            [{"uid": u["id"], **{f"v_{f}": u[f] for f in fields}} for u in old],
        )
    return UsersLoaded(created=len(new), updated=len(old), deactivated_mappings_removed=removed)


# --- SF users ----------------------------------------------------------------------------


async def list_sf_users(
    conn: AsyncConnection,
    tenant_id: str,
    *,
    limit: int,
    cursor: str | None = None,
    active: bool | None = None,
    email: str | None = None,
) -> Page[SfUserView]:
    return await _list(conn, SF, tenant_id, limit=limit, cursor=cursor, active=active, email=email)


async def get_sf_user(conn: AsyncConnection, tenant_id: str, user_id: str) -> SfUserView:
    return _sf_view(await _one(conn, SF, tenant_id, user_id))


async def create_sf_user(
    conn: AsyncConnection, tenant_id: str, data: SfUserCreate, now: datetime
) -> SfUserView:
    return await _create(conn, SF, tenant_id, data.model_dump(by_alias=False), now)


async def update_sf_user(
    conn: AsyncConnection, tenant_id: str, user_id: str, patch: SfUserPatch
) -> SfUserView:
    return await _update(conn, SF, tenant_id, user_id, patch)


async def load_sf_users(
    conn: AsyncConnection, tenant_id: str, users: Sequence[SfUserCreate], now: datetime
) -> UsersLoaded:
    return await _load(conn, SF, tenant_id, [u.model_dump(by_alias=False) for u in users], now)


# --- AE users ----------------------------------------------------------------------------


async def list_ae_users(
    conn: AsyncConnection,
    tenant_id: str,
    *,
    limit: int,
    cursor: str | None = None,
    active: bool | None = None,
    email: str | None = None,
) -> Page[AeUserView]:
    return await _list(conn, AE, tenant_id, limit=limit, cursor=cursor, active=active, email=email)


async def get_ae_user(conn: AsyncConnection, tenant_id: str, user_id: int) -> AeUserView:
    return _ae_view(await _one(conn, AE, tenant_id, user_id))


async def create_ae_user(
    conn: AsyncConnection, tenant_id: str, data: AeUserCreate, now: datetime
) -> AeUserView:
    return await _create(conn, AE, tenant_id, data.model_dump(by_alias=False), now)


async def update_ae_user(
    conn: AsyncConnection, tenant_id: str, user_id: int, patch: AeUserPatch
) -> AeUserView:
    return await _update(conn, AE, tenant_id, user_id, patch)


async def load_ae_users(
    conn: AsyncConnection, tenant_id: str, users: Sequence[AeUserCreate], now: datetime
) -> UsersLoaded:
    return await _load(conn, AE, tenant_id, [u.model_dump(by_alias=False) for u in users], now)
