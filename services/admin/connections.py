"""A tenant's connections to its SF org and AE business unit: set, shown masked, the client
secret rotated, checked against both systems, and every stored secret resealed under the
current key.

Secrets arrive as `SecretStr`, are sealed before they reach a row and leave this module only
inside the clients a check builds: no view, error or log line carries one.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.admin.errors import Conflict, Invalid, Unavailable
from services.admin.schemas import (
    ClientSecretRotation,
    ConnectionsCheck,
    ConnectionsSet,
    ConnectionsView,
    EngagementConnectionView,
    SalesforceConnectionView,
    SecretsResealed,
    SystemCheck,
)
from services.admin.tenants import tenant_row
from services.common.ae_client import (
    AeError,
    AeQuotaExhausted,
    AeRequestRejected,
    AeTransientError,
)
from services.common.connections import (
    CLIENT_SECRET,
    SEALED_COLUMNS,
    TenantConnections,
    connections_from_row,
    sealed_in,
    secret_context,
)
from services.common.crypto import KeyRing, SecretsKeyMissing, SecretUnreadable
from services.common.db.tables import tenant_connections
from services.common.sf_auth import SfCredentialsRefused, SfToken
from services.common.sf_client import SfApiError, SfTransientError
from services.common.tenant_clients import TenantClients

CHECK_TIMEOUT = 10.0
_NOT_SET = SystemCheck(status="not_set", message="no connection stored for this tenant")


async def show_connections(conn: AsyncConnection, tenant_id: str) -> ConnectionsView:
    await tenant_row(conn, tenant_id)
    return _view(await _row(conn, tenant_id))


async def set_connections(
    conn: AsyncConnection,
    tenant_id: str,
    body: ConnectionsSet,
    ring: KeyRing | None,
    now: datetime,
) -> ConnectionsView:
    """Set or replace both connections. A client secret sent is sealed under the current key;
    none sent keeps the stored one (a first setting must send one)."""
    await tenant_row(conn, tenant_id, lock=True)
    current = await _row(conn, tenant_id)
    sf, ae = body.salesforce, body.engagement
    await _business_unit_is_free(conn, ae.business_unit_id, tenant_id)
    values: dict[str, Any] = {
        "sf_login_url": sf.login_url,
        "sf_client_id": sf.client_id,
        "ae_base_url": ae.base_url,
        "ae_business_unit_id": ae.business_unit_id,
        "updated_at": now,
    }
    if sf.client_secret is not None:
        values |= _sealed_secret(tenant_id, sf.client_secret.get_secret_value(), ring)
    elif current is None or current["sf_client_secret_ciphertext"] is None:
        raise Invalid(
            "salesforce.clientSecret is required: no client secret is stored for this tenant",
            code="client_secret_required",
        )
    if current is None:
        await conn.execute(insert(tenant_connections).values(tenant_id=tenant_id, **values))
    else:
        await conn.execute(_update(tenant_id).values(**values))
    return _view(await _row(conn, tenant_id))


async def rotate_client_secret(
    conn: AsyncConnection,
    tenant_id: str,
    body: ClientSecretRotation,
    ring: KeyRing | None,
    now: datetime,
) -> ConnectionsView:
    """The connected app's new consumer secret (and key, when SF's rotation changed it)."""
    await tenant_row(conn, tenant_id, lock=True)
    current = await _row(conn, tenant_id)
    if current is None:
        raise Invalid(
            "no connections are stored for this tenant: set them first (PUT …/connections)",
            code="connections_not_set",
        )
    new_secret = body.client_secret.get_secret_value()
    stored = connections_from_row(current, _required(ring)).salesforce.client_secret
    if stored is not None and hmac.compare_digest(
        new_secret.encode(), stored.get_secret_value().encode()
    ):
        raise Conflict("the new client secret is the current one", code="same_secret")
    values: dict[str, Any] = {"updated_at": now, **_sealed_secret(tenant_id, new_secret, ring)}
    if body.client_id is not None:
        values["sf_client_id"] = body.client_id
    await conn.execute(_update(tenant_id).values(**values))
    return _view(await _row(conn, tenant_id))


async def connections_for_check(
    conn: AsyncConnection, tenant_id: str, ring: KeyRing | None
) -> tuple[TenantConnections | None, str]:
    """What a check needs from the store: the opened connections and the user SF is read for
    (the tenant's connector user). Read in a short transaction: the check calls out after it."""
    tenant = await tenant_row(conn, tenant_id)
    row = await _row(conn, tenant_id)
    if row is None:
        return None, tenant.connector_user_id
    try:
        return connections_from_row(row, _required(ring)), tenant.connector_user_id
    except SecretUnreadable as exc:
        raise Unavailable(str(exc), code="secret_unreadable") from None


async def check_connections(
    connections: TenantConnections | None,
    sf_user_id: str,
    now: datetime,
    *,
    http_timeout: float = CHECK_TIMEOUT,
) -> ConnectionsCheck:
    """Get a token, read one SF user and one AE user; each system's verdict with the reason.
    One attempt each (no retries): the answer is about now."""
    if connections is None:
        return ConnectionsCheck(salesforce=_NOT_SET, engagement=_NOT_SET, checked_at=now)
    try:
        clients = TenantClients.open(
            connections,
            timeout=http_timeout,
            sf_options={"max_attempts": 1},
            ae_options={"max_attempts": 1},
        )
    except ValueError as exc:  # a connection this version cannot use (no client secret)
        unusable = _failed("unsupported", str(exc))
        return ConnectionsCheck(salesforce=unusable, engagement=unusable, checked_at=now)
    async with clients:
        try:
            token = await clients.tokens.token()
        except SfApiError as exc:
            refused = _sf_failure(exc)
            no_token = _failed("no_token", f"no Salesforce access token: {refused.message}")
            return ConnectionsCheck(salesforce=refused, engagement=no_token, checked_at=now)
        return ConnectionsCheck(
            salesforce=await _check_sf(clients, sf_user_id),
            engagement=await _check_ae(clients, token),
            checked_at=now,
        )


async def reseal_secrets(conn: AsyncConnection, ring: KeyRing | None) -> SecretsResealed:
    """Seal every stored secret under the ring's current key (after a new key was put first in
    OWNERSYNC_SECRETS_KEY); the old key can be dropped once this has run."""
    ring = _required(ring)
    rows = (await conn.execute(select(tenant_connections).with_for_update())).mappings().all()
    resealed = 0
    for row in rows:
        changes: dict[str, str] = {}
        for columns in SEALED_COLUMNS:
            sealed = sealed_in(row, columns)
            if sealed is None:
                continue
            context = secret_context(row["tenant_id"], columns[0])
            try:
                fresh = ring.reseal(sealed, context=context)
            except SecretUnreadable as exc:
                raise Unavailable(
                    f"tenant {row['tenant_id']}: {exc}", code="secret_unreadable"
                ) from None
            if fresh is not None:
                changes |= {columns[0]: fresh.ciphertext, columns[1]: fresh.key_id}
                resealed += 1
        if changes:
            await conn.execute(_update(row["tenant_id"]).values(**changes))
    return SecretsResealed(resealed=resealed, key_id=ring.current_key_id)


# --- the parts ------------------------------------------------------------------------------


def _required(ring: KeyRing | None) -> KeyRing:
    if ring is None:
        raise Unavailable(str(SecretsKeyMissing()), code="secrets_key_missing")
    return ring


def _sealed_secret(tenant_id: str, secret: str, ring: KeyRing | None) -> dict[str, str]:
    ciphertext, key_id = CLIENT_SECRET
    sealed = _required(ring).seal(secret, context=secret_context(tenant_id, ciphertext))
    return {ciphertext: sealed.ciphertext, key_id: sealed.key_id}


def _update(tenant_id: str) -> Any:
    return update(tenant_connections).where(tenant_connections.c.tenant_id == tenant_id)


async def _row(conn: AsyncConnection, tenant_id: str) -> Mapping[Any, Any] | None:
    query = select(tenant_connections).where(tenant_connections.c.tenant_id == tenant_id)
    return (await conn.execute(query)).mappings().first()


async def _business_unit_is_free(conn: AsyncConnection, unit: str, tenant_id: str) -> None:
    holder = (
        await conn.execute(
            select(tenant_connections.c.tenant_id).where(
                tenant_connections.c.ae_business_unit_id == unit
            )
        )
    ).scalar_one_or_none()
    if holder is not None and holder != tenant_id:
        raise Conflict(
            f"AE business unit {unit} belongs to another tenant",
            code="business_unit_in_use",
            details={"businessUnitId": unit},
        )


def _view(row: Mapping[Any, Any] | None) -> ConnectionsView:
    if row is None:
        return ConnectionsView(salesforce=None, engagement=None, updated_at=None)
    return ConnectionsView(
        salesforce=SalesforceConnectionView(
            login_url=row["sf_login_url"],
            client_id=row["sf_client_id"],
            client_secret_set=row["sf_client_secret_ciphertext"] is not None,
            client_secret_key_id=row["sf_client_secret_key_id"],
        ),
        engagement=EngagementConnectionView(
            base_url=row["ae_base_url"], business_unit_id=row["ae_business_unit_id"]
        ),
        updated_at=row["updated_at"],
    )


def _failed(code: str, message: str) -> SystemCheck:
    return SystemCheck(status="failed", code=code, message=message)


async def _check_sf(clients: TenantClients, user_id: str) -> SystemCheck:
    try:
        user = await clients.sf.get_user(user_id)
    except SfApiError as exc:
        return _sf_failure(exc)
    return SystemCheck(status="ok", user=str(user.get("Id", user_id)))


async def _check_ae(clients: TenantClients, token: SfToken) -> SystemCheck:
    try:
        user = await clients.ae.first_user()
    except SfApiError as exc:  # the token was refused by AE, and SF refused to renew it
        return _sf_failure(exc)
    except AeQuotaExhausted as exc:
        return _failed("quota_exhausted", str(exc))
    except AeRequestRejected as exc:
        if exc.status == 401 and "pardot_api" not in token.scopes:
            return _failed(
                "missing_scope",
                f"{exc}; the connected app's token lacks the pardot_api scope "
                f"(it has: {', '.join(sorted(token.scopes)) or 'none'})",
            )
        return _failed("unauthorized" if exc.status == 401 else "rejected", str(exc))
    except AeTransientError as exc:
        return _failed("unreachable" if exc.status is None else "unavailable", str(exc))
    except AeError as exc:
        return _failed("invalid_response", str(exc))
    return SystemCheck(status="ok", user=str(user.id) if user is not None else None)


def _sf_failure(exc: SfApiError) -> SystemCheck:
    if isinstance(exc, SfCredentialsRefused):
        return _failed(exc.error_code or "refused", f"Salesforce refused the connected app: {exc}")
    if isinstance(exc, SfTransientError):
        return _failed("unreachable" if exc.status is None else "unavailable", str(exc))
    codes = {401: "unauthorized", 403: "forbidden", 404: "not_found"}
    return _failed(codes.get(exc.status or 0, "rejected"), str(exc))
