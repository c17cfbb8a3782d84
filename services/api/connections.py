"""/v1/tenants/{tenant}/connections: the tenant's SF org and AE business unit. Reading them
(masked) takes `read`, like every GET; setting, rotating and checking take `admin`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from services.admin import connections
from services.admin.schemas import (
    ClientSecretRotation,
    ConnectionsCheck,
    ConnectionsSet,
    ConnectionsView,
    ErrorResponse,
)
from services.api.auth import AdminTenant, ReadTenant
from services.api.common import now, transaction
from services.api.errors import responses
from services.common.crypto import KeyRing
from services.common.settings import Settings
from services.common.web import RuntimeDep

router = APIRouter(tags=["connections"])
_NO_KEY: dict[int | str, dict[str, Any]] = {
    503: {
        "model": ErrorResponse,
        "description": "OWNERSYNC_SECRETS_KEY is not set, or no longer opens a stored secret",
    }
}


def _keyring(settings: Settings) -> KeyRing | None:
    return settings.keyring if settings.secrets_key is not None else None


@router.get(
    "/tenants/{tenant}/connections",
    summary="The SF and AE connections, secrets masked",
)
async def show_connections(tenant: ReadTenant, runtime: RuntimeDep) -> ConnectionsView:
    """Whether a client secret is stored and the id of the key sealing it: never the secret."""
    async with transaction(runtime) as conn:
        return await connections.show_connections(conn, tenant)


@router.put(
    "/tenants/{tenant}/connections",
    summary="Set the SF and AE connections",
    responses={**responses(409), **_NO_KEY},
)
async def set_connections(
    tenant: AdminTenant, body: ConnectionsSet, runtime: RuntimeDep
) -> ConnectionsView:
    """Both connections, replaced whole. The client secret is write-only: sealed with
    OWNERSYNC_SECRETS_KEY, never answered; omitted on a replace, the stored one stays."""
    async with transaction(runtime) as conn:
        return await connections.set_connections(
            conn, tenant, body, _keyring(runtime.settings), now()
        )


@router.post(
    "/tenants/{tenant}/connections/client-secret/rotate",
    summary="Rotate the SF connected app's client secret",
    responses={**responses(409), **_NO_KEY},
)
async def rotate_client_secret(
    tenant: AdminTenant, body: ClientSecretRotation, runtime: RuntimeDep
) -> ConnectionsView:
    """The consumer secret SF's rotation gave (and its consumer key, when that changed too):
    used from now on. Check the connections afterwards (`…/connections/check`)."""
    async with transaction(runtime) as conn:
        return await connections.rotate_client_secret(
            conn, tenant, body, _keyring(runtime.settings), now()
        )


@router.post(
    "/tenants/{tenant}/connections/check",
    summary="Check the connections against SF and AE",
    responses=_NO_KEY,
)
async def check_connections(tenant: AdminTenant, runtime: RuntimeDep) -> ConnectionsCheck:
    """Gets an access token from the tenant's connected app, reads the connector user from SF
    and one user from AE, and says per system `ok` or `failed` with the reason
    (`invalid_client`, `unauthorized`, `missing_scope`, `unreachable`, …)."""
    async with transaction(runtime) as conn:
        stored, sf_user = await connections.connections_for_check(
            conn, tenant, _keyring(runtime.settings)
        )
    return await connections.check_connections(stored, sf_user, now())
