"""Tenants and their connector settings, webhook secret rotation included."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.admin.errors import Conflict, Invalid, NotFound
from services.admin.pagination import Page, decode_cursor, page_of
from services.admin.schemas import (
    EndpointKeyRotated,
    SecretRotated,
    TenantCreate,
    TenantCreated,
    TenantPatch,
    TenantView,
)
from services.common.db.tables import sf_users, tenants
from services.common.keys import key_hash, new_endpoint_key
from services.common.sla import DEFAULT_UNTOUCHED_STATUSES

NOT_FOUND = "not found"  # the same words whether the tenant is missing or someone else's


class WebhookSecrets(Protocol):
    webhook_secret: str
    previous_webhook_secret: str | None
    previous_secret_expires_at: datetime | None


def valid_webhook_secrets(tenant_row: WebhookSecrets, now: datetime) -> list[str]:
    """The secrets an AE webhook of this tenant may be signed with at `now`: the current one,
    then the previous one while its grace period lasts."""
    valid = [tenant_row.webhook_secret]
    previous, expires = tenant_row.previous_webhook_secret, tenant_row.previous_secret_expires_at
    if previous and expires is not None and now < expires:
        valid.append(previous)
    return valid


def new_webhook_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


async def tenant_row(conn: AsyncConnection, tenant_id: str, *, lock: bool = False) -> Any:
    """The tenant's row; NotFound otherwise. `lock` serialises changes to its users and mappings
    (Postgres only: SQLite has one writer anyway)."""
    query = select(tenants).where(tenants.c.id == tenant_id)
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = (await conn.execute(query)).first()
    if row is None:
        raise NotFound(NOT_FOUND)
    return row


def tenant_view(row: Any, now: datetime | None = None) -> TenantView:
    expires = row.previous_secret_expires_at
    if now is not None and expires is not None and expires <= now:
        expires = None
    return TenantView(
        id=row.id,
        salesforce_org_id=row.salesforce_org_id,
        connector_user_id=row.connector_user_id,
        sync_mode=row.sync_mode,
        auto_create_prospects=row.auto_create_prospects,
        connector_verified=row.connector_verified,
        previous_secret_expires_at=expires,
        salesforce_endpoint_key_set=row.endpoint_key_hash is not None,
        previous_endpoint_key_expires_at=_unexpired(row.previous_endpoint_key_expires_at, now),
        untouched_statuses=row.untouched_statuses or list(DEFAULT_UNTOUCHED_STATUSES),
        created_at=row.created_at,
    )


def _unexpired(expires: datetime | None, now: datetime | None) -> datetime | None:
    return None if now is not None and expires is not None and expires <= now else expires


async def get_tenant(conn: AsyncConnection, tenant_id: str, now: datetime) -> TenantView:
    return tenant_view(await tenant_row(conn, tenant_id), now)


async def list_tenants(
    conn: AsyncConnection, *, limit: int, cursor: str | None, now: datetime
) -> Page[TenantView]:
    after = decode_cursor(cursor, str)
    query = select(tenants).order_by(tenants.c.id).limit(limit + 1)
    if after is not None:
        query = query.where(tenants.c.id > after)
    rows = (await conn.execute(query)).all()
    return page_of(rows, limit, lambda r: r.id, lambda r: tenant_view(r, now))


async def create_tenant(conn: AsyncConnection, data: TenantCreate, now: datetime) -> TenantCreated:
    """A new tenant with its connector user as its first SF user."""
    if (await conn.execute(select(tenants.c.id).where(tenants.c.id == data.id))).first():
        raise Conflict(f"tenant {data.id!r} exists", code="tenant_exists")
    await _org_is_free(conn, data.salesforce_org_id, data.id)
    secret = data.webhook_secret or new_webhook_secret()
    endpoint_key = data.salesforce_endpoint_key or new_endpoint_key()
    await conn.execute(
        insert(tenants).values(
            id=data.id,
            endpoint_key_hash=key_hash(endpoint_key),
            salesforce_org_id=data.salesforce_org_id,
            connector_user_id=data.connector_user_id,
            sync_mode=data.sync_mode,
            auto_create_prospects=data.auto_create_prospects,
            connector_verified=data.connector_verified,
            webhook_secret=secret,
            created_at=now,
        )
    )
    await conn.execute(
        insert(sf_users).values(
            tenant_id=data.id,
            id=data.connector_user_id,
            name=data.connector_user_name,
            active=True,
            created_at=now,
        )
    )
    return TenantCreated(
        tenant=await get_tenant(conn, data.id, now),
        webhook_secret=secret,
        salesforce_endpoint_key=endpoint_key,
    )


async def update_tenant(
    conn: AsyncConnection, tenant_id: str, patch: TenantPatch, now: datetime
) -> TenantView:
    await tenant_row(conn, tenant_id, lock=True)
    changes = {k: v for k, v in patch.model_dump(by_alias=False).items() if v is not None}
    if "salesforce_org_id" in changes:
        await _org_is_free(conn, changes["salesforce_org_id"], tenant_id)
    if "connector_user_id" in changes:
        user = (
            await conn.execute(
                select(sf_users.c.active).where(
                    sf_users.c.tenant_id == tenant_id,
                    sf_users.c.id == changes["connector_user_id"],
                )
            )
        ).first()
        if user is None or not user.active:
            raise Invalid(
                f"connector user {changes['connector_user_id']} is not an active SF user of "
                "this tenant",
                code="unknown_user",
                details={"sfUserId": changes["connector_user_id"]},
            )
    if changes:
        await conn.execute(update(tenants).where(tenants.c.id == tenant_id).values(**changes))
    return await get_tenant(conn, tenant_id, now)


async def set_untouched_statuses(
    conn: AsyncConnection, tenant_id: str, statuses: list[str] | None
) -> None:
    """The SF Statuses of a record nobody worked (None: the default)."""
    if statuses is not None:
        statuses = TenantPatch.model_validate({"untouchedStatuses": statuses}).untouched_statuses
    await conn.execute(
        update(tenants).where(tenants.c.id == tenant_id).values(untouched_statuses=statuses)
    )


async def rotate_webhook_secret(
    conn: AsyncConnection,
    tenant_id: str,
    *,
    grace: timedelta,
    now: datetime,
    new_secret: str | None = None,
) -> SecretRotated:
    """A new current secret; the old one stays valid for `grace` (not at all when zero)."""
    row = await tenant_row(conn, tenant_id, lock=True)
    secret = new_secret or new_webhook_secret()
    if secret == row.webhook_secret:
        raise Conflict("the new secret is the current one", code="same_secret")
    expires = now + grace if grace > timedelta(0) else None
    await conn.execute(
        update(tenants)
        .where(tenants.c.id == tenant_id)
        .values(
            webhook_secret=secret,
            previous_webhook_secret=row.webhook_secret if expires else None,
            previous_secret_expires_at=expires,
        )
    )
    return SecretRotated(webhook_secret=secret, previous_secret_expires_at=expires)


async def rotate_endpoint_key(
    conn: AsyncConnection,
    tenant_id: str,
    *,
    grace: timedelta,
    now: datetime,
    new_key: str | None = None,
) -> EndpointKeyRotated:
    """A new SF endpoint key; the old one stays valid for `grace` (not at all when zero), so
    that SF's outbound-message URLs can be switched over without refused deliveries."""
    row = await tenant_row(conn, tenant_id, lock=True)
    key = new_key or new_endpoint_key()
    if key_hash(key) == row.endpoint_key_hash:
        raise Conflict("the new key is the current one", code="same_key")
    expires = now + grace if grace > timedelta(0) and row.endpoint_key_hash else None
    await conn.execute(
        update(tenants)
        .where(tenants.c.id == tenant_id)
        .values(
            endpoint_key_hash=key_hash(key),
            previous_endpoint_key_hash=row.endpoint_key_hash if expires else None,
            previous_endpoint_key_expires_at=expires,
        )
    )
    return EndpointKeyRotated(salesforce_endpoint_key=key, previous_endpoint_key_expires_at=expires)


async def clear_endpoint_key(conn: AsyncConnection, tenant_id: str) -> None:
    """No SF endpoint key at all: the tenant's SF outbound messages are refused until one is
    set with `rotate_endpoint_key` (a tenant file that names none)."""
    await tenant_row(conn, tenant_id, lock=True)
    await conn.execute(
        update(tenants)
        .where(tenants.c.id == tenant_id)
        .values(
            endpoint_key_hash=None,
            previous_endpoint_key_hash=None,
            previous_endpoint_key_expires_at=None,
        )
    )


async def _org_is_free(conn: AsyncConnection, org_id: str, tenant_id: str) -> None:
    holder = (
        await conn.execute(select(tenants.c.id).where(tenants.c.salesforce_org_id == org_id))
    ).scalar_one_or_none()
    if holder is not None and holder != tenant_id:
        raise Conflict(
            f"SF org {org_id} belongs to another tenant",
            code="org_in_use",
            details={"salesforceOrgId": org_id},
        )
