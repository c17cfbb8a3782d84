"""API keys: per tenant, scoped, stored as a SHA-256 hash and shown once at creation.

A key reads `osk_<id>_<secret>`; `<id>` finds the row, the hash of the whole key proves it.
The keys are 256-bit random, so a plain SHA-256 is as good as a slow hash here.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.admin.errors import NotFound
from services.admin.pagination import Page, decode_cursor, page_of
from services.admin.schemas import ApiKeyCreated, ApiKeyView, Scope
from services.admin.tenants import tenant_row
from services.common.db.tables import api_keys

PREFIX = "osk"
_KEY_ID = re.compile(r"[0-9a-f]{16}")
_IMPLIED: dict[str, frozenset[str]] = {
    "read": frozenset({"read"}),
    "write": frozenset({"read", "write"}),
    "admin": frozenset({"read", "write", "admin"}),
}


def effective_scopes(scopes: list[str]) -> frozenset[str]:
    """`write` includes `read`, `admin` includes both."""
    return frozenset().union(*(_IMPLIED.get(s, frozenset()) for s in scopes))


@dataclass(frozen=True)
class KeyOwner:
    key_id: str
    tenant_id: str
    scopes: frozenset[str]


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _view(row: Any) -> ApiKeyView:
    return ApiKeyView(
        id=row.id,
        name=row.name,
        scopes=row.scopes,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


async def create_api_key(
    conn: AsyncConnection, tenant_id: str, *, name: str, scopes: list[Scope], now: datetime
) -> ApiKeyCreated:
    await tenant_row(conn, tenant_id)
    key_id = secrets.token_hex(8)
    key = f"{PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    ordered = [s for s in ("read", "write", "admin") if s in set(scopes)]
    await conn.execute(
        insert(api_keys).values(
            id=key_id,
            tenant_id=tenant_id,
            name=name,
            scopes=ordered,
            key_hash=_hash(key),
            created_at=now,
        )
    )
    row = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).one()
    return ApiKeyCreated(api_key=_view(row), key=key)


async def list_api_keys(
    conn: AsyncConnection, tenant_id: str, *, limit: int, cursor: str | None
) -> Page[ApiKeyView]:
    after = decode_cursor(cursor, str)
    query = (
        select(api_keys)
        .where(api_keys.c.tenant_id == tenant_id)
        .order_by(api_keys.c.id)
        .limit(limit + 1)
    )
    if after is not None:
        query = query.where(api_keys.c.id > after)
    return page_of((await conn.execute(query)).all(), limit, lambda r: r.id, _view)


async def revoke_api_key(
    conn: AsyncConnection, tenant_id: str, key_id: str, now: datetime
) -> ApiKeyView:
    """Revoked at once and for good; revoking twice keeps the first time."""
    where = (api_keys.c.tenant_id == tenant_id) & (api_keys.c.id == key_id)
    row = (await conn.execute(select(api_keys).where(where))).first()
    if row is None:
        raise NotFound(f"API key {key_id!r} not found")
    if row.revoked_at is None:
        await conn.execute(update(api_keys).where(where).values(revoked_at=now))
        row = (await conn.execute(select(api_keys).where(where))).one()
    return _view(row)


async def authenticate(conn: AsyncConnection, presented: str) -> KeyOwner | None:
    """The owner of a live key, or None for anything else (unknown, malformed, revoked)."""
    parts = presented.split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not _KEY_ID.fullmatch(parts[1]):
        return None
    row = (await conn.execute(select(api_keys).where(api_keys.c.id == parts[1]))).first()
    if row is None or row.revoked_at is not None:
        return None
    if not hmac.compare_digest(row.key_hash, _hash(presented)):
        return None
    return KeyOwner(row.id, row.tenant_id, effective_scopes(row.scopes))
