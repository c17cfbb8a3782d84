"""`ownersync tenant load FILE`: a tenant, its users, connected users, queues and groups."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.db.tables import (
    ae_users,
    connected_users,
    group_members,
    groups,
    queues,
    sf_users,
    tenants,
)
from services.common.keys import key_hash
from services.common.sfid import SfId


class ConnectedUser(BaseModel):
    model_config = ConfigDict(extra="forbid")
    engagement_user: int
    salesforce_user: SfId


class Group(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    members: list[int]


class TenantFile(BaseModel):
    """The format of `fixtures/salesforce/tenant.json`."""

    model_config = ConfigDict(extra="forbid")
    tenant: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    salesforce_org_id: SfId
    connector_user: SfId
    sync_mode: Literal["leads", "contacts"]
    auto_create_prospects: bool
    connector_verified: bool
    webhook_secret: str = Field(min_length=16)
    # The `key` of the SF outbound-message URLs; without it SF messages are refused until an
    # operator sets one (`ownersync tenant rotate-endpoint-key`).
    salesforce_endpoint_key: str | None = Field(
        None, min_length=32, max_length=200, pattern=r"^[A-Za-z0-9_~.-]+$"
    )
    salesforce_users: dict[str, SfId]
    engagement_users: dict[str, int]
    connected_users: list[ConnectedUser] = []
    queues: dict[str, SfId] = {}
    groups: dict[int, Group] = {}
    outbound_message_actions: dict[str, SfId] = {}

    @model_validator(mode="after")
    def _consistent(self) -> TenantFile:
        sf = set(self.salesforce_users.values())
        ae = set(self.engagement_users.values())
        if self.connector_user not in sf:
            raise ValueError("connector_user is not one of salesforce_users")
        seen_ae: set[int] = set()
        seen_sf: set[str] = set()
        for c in self.connected_users:
            if c.engagement_user not in ae or c.salesforce_user not in sf:
                raise ValueError(f"connected user {c} names an unknown user")
            if c.engagement_user in seen_ae or c.salesforce_user in seen_sf:
                raise ValueError(f"connected user {c}: each user may be connected once")
            seen_ae.add(c.engagement_user)
            seen_sf.add(c.salesforce_user)
        for gid, g in self.groups.items():
            if not set(g.members) <= ae:
                raise ValueError(f"group {gid} has members that are not engagement_users")
        return self

    @classmethod
    def read(cls, path: Path) -> TenantFile:
        return cls.model_validate(json.loads(path.read_text()))


async def load_tenant(conn: AsyncConnection, data: TenantFile) -> dict[str, int]:
    """Create or replace the tenant's settings, users, mappings, queues and groups."""
    now = datetime.now(UTC)
    t = data.tenant
    settings = {
        "salesforce_org_id": data.salesforce_org_id,
        "connector_user_id": data.connector_user,
        "sync_mode": data.sync_mode,
        "auto_create_prospects": data.auto_create_prospects,
        "connector_verified": data.connector_verified,
        "webhook_secret": data.webhook_secret,
    }
    if data.salesforce_endpoint_key is not None:
        settings["endpoint_key_hash"] = key_hash(data.salesforce_endpoint_key)
    exists = (await conn.execute(select(tenants.c.id).where(tenants.c.id == t))).first()
    if exists:
        await conn.execute(update(tenants).where(tenants.c.id == t).values(**settings))
    else:
        await conn.execute(insert(tenants).values(id=t, created_at=now, **settings))
    for table in (group_members, groups, connected_users, queues, ae_users, sf_users):
        await conn.execute(delete(table).where(table.c.tenant_id == t))
    await conn.execute(
        insert(sf_users),
        [
            {"tenant_id": t, "id": i, "name": n, "active": True, "created_at": now}
            for n, i in data.salesforce_users.items()
        ],
    )
    await conn.execute(
        insert(ae_users),
        [
            {"tenant_id": t, "id": i, "name": n, "active": True, "created_at": now}
            for n, i in data.engagement_users.items()
        ],
    )
    rows = {
        connected_users: [
            {
                "tenant_id": t,
                "ae_user_id": c.engagement_user,
                "sf_user_id": c.salesforce_user,
                "created_at": now,
            }
            for c in data.connected_users
        ],
        queues: [{"tenant_id": t, "id": i, "name": n} for n, i in data.queues.items()],
        groups: [{"tenant_id": t, "id": gid, "name": g.name} for gid, g in data.groups.items()],
        group_members: [
            {
                "tenant_id": t,
                "group_id": gid,
                "ae_user_id": m,
                "weight": 1,
                "paused": False,
                "assigned_today": 0,
                "assigned_total": 0,
            }
            for gid, g in data.groups.items()
            for m in g.members
        ],
    }
    for table, values in rows.items():
        if values:
            await conn.execute(insert(table), values)
    return {
        "salesforce_users": len(data.salesforce_users),
        "engagement_users": len(data.engagement_users),
        "connected_users": len(data.connected_users),
        "queues": len(data.queues),
        "groups": len(data.groups),
    }
