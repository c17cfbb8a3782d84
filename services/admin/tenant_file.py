"""`ownersync tenant load FILE`: a tenant, its users, connected users, queues and groups.

The file's fields have the types of the API's inputs, so a file the API would answer 422 is
not a tenant file; what is stored goes through the same admin operations as the API, so a file
that contradicts their rules (a mapping another user holds, an unknown group member, an org of
another tenant, …) is refused with the same AdminError, and nothing of it is kept.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import BaseModel, ConfigDict, SecretStr, model_validator
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncConnection

from services.admin import connections, groups, mappings, tenants, users
from services.admin.errors import NotFound
from services.admin.schemas import (
    AeUserCreate,
    BigId,
    ConnectionsSet,
    EndpointKey,
    GroupCreate,
    GroupMemberPut,
    GroupSlaPut,
    Name,
    Secret,
    SfOrgId,
    SfQueueId,
    SfUserCreate,
    SfUserId,
    SyncMode,
    TenantCreate,
    TenantKey,
    TenantPatch,
)
from services.common.crypto import KeyRing
from services.common.db import tables
from services.common.keys import key_hash
from services.common.sfid import SfId
from services.common.sla import DEFAULT_MAX_ESCALATIONS


class ConnectedUser(BaseModel):
    model_config = ConfigDict(extra="forbid")
    engagement_user: BigId
    salesforce_user: SfUserId


class MemberHours(BaseModel):
    """A member's working hours (the round robin skips members who are off)."""

    model_config = ConfigDict(extra="forbid")
    time_zone: str | None = None
    weekly_hours: dict[str, str] | None = None  # {"mon": "09:00-17:00", …}
    away_dates: list[str] = []


class Group(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    members: list[BigId]
    # The follow-up SLA (services/common/sla.py); off without sla_seconds.
    sla_seconds: int | None = None
    sla_business_hours: bool = False
    assign_when_closed: bool = False
    max_escalations: int = DEFAULT_MAX_ESCALATIONS
    fallback_owner: str | None = None  # SF queue or user id
    member_hours: dict[BigId, MemberHours] = {}

    def sla(self) -> GroupSlaPut:
        return GroupSlaPut.model_validate(
            {
                "slaSeconds": self.sla_seconds,
                "slaBusinessHours": self.sla_business_hours,
                "assignWhenClosed": self.assign_when_closed,
                "maxEscalations": self.max_escalations,
                "fallbackOwnerId": self.fallback_owner,
            }
        )


class SalesforceConnectionFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    login_url: str
    client_id: str
    client_secret: SecretStr


class EngagementConnectionFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base_url: str = "https://pi.pardot.com"
    business_unit_id: str


class ConnectionsFile(BaseModel):
    """The tenant's SF connected app and AE business unit, as `PUT …/connections` takes them."""

    model_config = ConfigDict(extra="forbid")
    salesforce: SalesforceConnectionFile
    engagement: EngagementConnectionFile

    def as_input(self) -> ConnectionsSet:
        return ConnectionsSet.model_validate(
            {
                "salesforce": {
                    "loginUrl": self.salesforce.login_url,
                    "clientId": self.salesforce.client_id,
                    "clientSecret": self.salesforce.client_secret.get_secret_value(),
                },
                "engagement": {
                    "baseUrl": self.engagement.base_url,
                    "businessUnitId": self.engagement.business_unit_id,
                },
            }
        )


class TenantFile(BaseModel):
    """The format of `fixtures/salesforce/tenant.json`."""

    model_config = ConfigDict(extra="forbid")
    tenant: TenantKey
    salesforce_org_id: SfOrgId
    connector_user: SfUserId
    sync_mode: SyncMode
    auto_create_prospects: bool
    connector_verified: bool
    webhook_secret: Secret
    # The `key` of the SF outbound-message URLs; without it SF messages are refused until an
    # operator sets one (`ownersync tenant rotate-endpoint-key`).
    salesforce_endpoint_key: EndpointKey | None = None
    salesforce_users: dict[Name, SfUserId]
    engagement_users: dict[Name, BigId]
    connected_users: list[ConnectedUser] = []
    queues: dict[Name, SfQueueId] = {}
    groups: dict[BigId, Group] = {}
    outbound_message_actions: dict[str, SfId] = {}
    connections: ConnectionsFile | None = None
    untouched_statuses: list[str] | None = None  # null: ["Open - Not Contacted"]

    @model_validator(mode="after")
    def _lists_its_connector_user(self) -> TenantFile:
        # The file lists every SF user of the tenant, so its connector user is one of them.
        if self.connector_user not in self.salesforce_users.values():
            raise ValueError("connector_user is not one of salesforce_users")
        return self

    @classmethod
    def read(cls, path: Path) -> TenantFile:
        return cls.model_validate(json.loads(path.read_text()))

    @property
    def connector_user_name(self) -> str:
        return next(n for n, i in self.salesforce_users.items() if i == self.connector_user)


async def load_tenant(
    conn: AsyncConnection, data: TenantFile, ring: KeyRing | None = None
) -> dict[str, int]:
    """Create or replace the tenant's settings, users, mappings, queues, groups and, when the
    file has them, connections (their client secret sealed with `ring`).

    Run it in one transaction: an AdminError leaves the tenant as it was."""
    now = datetime.now(UTC)
    t = data.tenant
    try:
        stored = await tenants.tenant_row(conn, t, lock=True)
    except NotFound:
        stored = None
        await tenants.create_tenant(conn, _tenant_create(data), now)
        if data.salesforce_endpoint_key is None:
            await tenants.clear_endpoint_key(conn, t)
    else:
        await _forget_directory(conn, t)
    await users.load_sf_users(
        conn,
        t,
        [
            SfUserCreate.model_validate({"id": i, "name": n})
            for n, i in data.salesforce_users.items()
        ],
        now,
    )
    if stored is not None:
        # After the SF users: the connector user must be one of them.
        await tenants.update_tenant(conn, t, _tenant_patch(data), now)
        # The file replaces the tenant: its secret and key are the only ones valid, no grace.
        if stored.webhook_secret != data.webhook_secret:
            await tenants.rotate_webhook_secret(
                conn, t, grace=timedelta(0), now=now, new_secret=data.webhook_secret
            )
        key = data.salesforce_endpoint_key
        if key is not None and stored.endpoint_key_hash != key_hash(key):
            await tenants.rotate_endpoint_key(conn, t, grace=timedelta(0), now=now, new_key=key)
    await users.load_ae_users(
        conn,
        t,
        [
            AeUserCreate.model_validate({"id": i, "name": n})
            for n, i in data.engagement_users.items()
        ],
        now,
    )
    connected = 0
    for c in data.connected_users:
        _, created = await mappings.create_mapping(
            conn, t, ae_user_id=c.engagement_user, sf_user_id=c.salesforce_user, now=now
        )
        connected += int(created)
    for name, queue_id in data.queues.items():
        await groups.create_queue(conn, t, queue_id=queue_id, name=name)
    for group_id, group in data.groups.items():
        await groups.create_group(
            conn,
            t,
            GroupCreate.model_validate(
                {"id": group_id, "name": group.name, "members": group.members}
            ),
        )
        await groups.set_group_sla(conn, t, group_id, group.sla())
        for member, hours in group.member_hours.items():
            member_put = GroupMemberPut.model_validate(
                {
                    "timeZone": hours.time_zone,
                    "weeklyHours": hours.weekly_hours,
                    "awayDates": hours.away_dates,
                }
            )
            await groups.put_member(conn, t, group_id, member, member_put)
    await tenants.set_untouched_statuses(conn, t, data.untouched_statuses)
    loaded: dict[str, int] = {}
    if data.connections is not None:
        await connections.set_connections(conn, t, data.connections.as_input(), ring, now)
        loaded["connections"] = 1
    return {
        **loaded,
        "salesforce_users": len(data.salesforce_users),
        "engagement_users": len(data.engagement_users),
        "connected_users": connected,
        "queues": len(data.queues),
        "groups": len(data.groups),
    }


def _tenant_create(data: TenantFile) -> TenantCreate:
    return TenantCreate.model_validate(
        {
            "id": data.tenant,
            "salesforceOrgId": data.salesforce_org_id,
            "connectorUserId": data.connector_user,
            "connectorUserName": data.connector_user_name,
            "syncMode": data.sync_mode,
            "autoCreateProspects": data.auto_create_prospects,
            "connectorVerified": data.connector_verified,
            "webhookSecret": data.webhook_secret,
            "salesforceEndpointKey": data.salesforce_endpoint_key,
        }
    )


def _tenant_patch(data: TenantFile) -> TenantPatch:
    return TenantPatch.model_validate(
        {
            "salesforceOrgId": data.salesforce_org_id,
            "connectorUserId": data.connector_user,
            "syncMode": data.sync_mode,
            "autoCreateProspects": data.auto_create_prospects,
            "connectorVerified": data.connector_verified,
        }
    )


async def _forget_directory(conn: AsyncConnection, tenant_id: str) -> None:
    """Replacing a tenant starts from no users, mappings, queues or groups; its records, audit
    and API keys stay."""
    for table in (
        tables.group_members,
        tables.groups,
        tables.connected_users,
        tables.queues,
        tables.ae_users,
        tables.sf_users,
    ):
        await conn.execute(delete(table).where(table.c.tenant_id == tenant_id))
