"""Each tenant's connections: its Salesforce org (connected app) and its AE business unit.

Rows of `tenant_connections` hold the secrets sealed; `load_connections` opens them with the
key ring, so what it returns is ready to build the tenant's clients from
(`services.common.tenant_clients.open_tenant_clients`). Secrets are `SecretStr`: a repr, a log
line or an exception message shows `**********`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.crypto import KeyRing, Sealed, SecretsKeyMissing
from services.common.db.tables import tenant_connections

# The sealed columns: (ciphertext column, key id column). Each secret's context is its tenant
# and column, so a ciphertext moved to another row or column does not open.
CLIENT_SECRET = ("sf_client_secret_ciphertext", "sf_client_secret_key_id")
PRIVATE_KEY = ("sf_private_key_ciphertext", "sf_private_key_key_id")
SEALED_COLUMNS = (CLIENT_SECRET, PRIVATE_KEY)


def secret_context(tenant_id: str, column: str) -> str:
    return f"tenant_connections/{tenant_id}/{column}"


def sealed_in(row: Mapping[Any, Any], columns: tuple[str, str]) -> Sealed | None:
    ciphertext, key_id = columns
    if row[ciphertext] is None:
        return None
    return Sealed(row[key_id], row[ciphertext])


@dataclass(frozen=True)
class SalesforceConnection:
    """A connected app of the tenant's org: client credentials (`client_secret`), or the JWT
    bearer flow (`private_key` and `username`) once that flow is built."""

    login_url: str
    client_id: str
    client_secret: SecretStr | None
    username: str | None = None
    private_key: SecretStr | None = None

    @property
    def token_url(self) -> str:
        return f"{self.login_url.rstrip('/')}/services/oauth2/token"


@dataclass(frozen=True)
class EngagementConnection:
    base_url: str
    business_unit_id: str


@dataclass(frozen=True)
class TenantConnections:
    tenant_id: str
    salesforce: SalesforceConnection
    engagement: EngagementConnection
    updated_at: datetime


def connections_from_row(row: Mapping[Any, Any], ring: KeyRing | None) -> TenantConnections:
    """The row with its secrets opened. SecretsKeyMissing without a ring when the row holds a
    secret; SecretUnreadable when a secret's key is not in the ring or the ciphertext is bad."""
    tenant_id = row["tenant_id"]

    def opened(columns: tuple[str, str]) -> SecretStr | None:
        sealed = sealed_in(row, columns)
        if sealed is None:
            return None
        if ring is None:
            raise SecretsKeyMissing()
        return SecretStr(ring.open(sealed, context=secret_context(tenant_id, columns[0])))

    return TenantConnections(
        tenant_id=tenant_id,
        salesforce=SalesforceConnection(
            login_url=row["sf_login_url"],
            client_id=row["sf_client_id"],
            client_secret=opened(CLIENT_SECRET),
            username=row["sf_username"],
            private_key=opened(PRIVATE_KEY),
        ),
        engagement=EngagementConnection(
            base_url=row["ae_base_url"], business_unit_id=row["ae_business_unit_id"]
        ),
        updated_at=row["updated_at"],
    )


async def load_connections(
    conn: AsyncConnection, tenant_id: str, ring: KeyRing | None
) -> TenantConnections | None:
    """The tenant's connections with their secrets opened, or None when none are stored."""
    query = select(tenant_connections).where(tenant_connections.c.tenant_id == tenant_id)
    row = (await conn.execute(query)).mappings().first()
    return None if row is None else connections_from_row(row, ring)


async def load_all_connections(
    conn: AsyncConnection, ring: KeyRing | None
) -> dict[str, TenantConnections]:
    """Every tenant's stored connections, by tenant id."""
    rows = (await conn.execute(select(tenant_connections))).mappings()
    return {row["tenant_id"]: connections_from_row(row, ring) for row in rows}
