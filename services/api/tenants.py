"""/v1/tenants: tenants, connector settings, webhook secret rotation, API keys."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends

from services.admin import api_keys, tenants
from services.admin.pagination import Page
from services.admin.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyView,
    EndpointKeyRotated,
    EndpointKeyRotation,
    SecretRotated,
    SecretRotation,
    TenantCreate,
    TenantCreated,
    TenantPatch,
    TenantView,
)
from services.api.auth import AdminTenant, Operator, ReadTenant, Who
from services.api.common import KeyIdPath, Paging, now, paging, transaction
from services.api.errors import Forbidden, responses
from services.common.web import RuntimeDep

router = APIRouter(tags=["tenants"])
Pages = Annotated[Paging, Depends(paging)]


@router.post(
    "/tenants",
    status_code=201,
    summary="Create a tenant (operator key)",
    responses=responses(409),
)
async def create_tenant(
    body: TenantCreate, runtime: RuntimeDep, _operator: Operator
) -> TenantCreated:
    """The tenant with its connector user as its first SF user. The webhook secret is shown
    in this answer only."""
    async with transaction(runtime) as conn:
        return await tenants.create_tenant(conn, body, now())


@router.get("/tenants", summary="List tenants (operator key)")
async def list_tenants(runtime: RuntimeDep, _operator: Operator, page: Pages) -> Page[TenantView]:
    async with transaction(runtime) as conn:
        return await tenants.list_tenants(conn, limit=page.limit, cursor=page.cursor, now=now())


@router.get("/tenants/{tenant}", summary="A tenant and its connector settings")
async def get_tenant(tenant: ReadTenant, runtime: RuntimeDep) -> TenantView:
    async with transaction(runtime) as conn:
        return await tenants.get_tenant(conn, tenant, now())


@router.patch("/tenants/{tenant}", summary="Change connector settings", responses=responses(409))
async def update_tenant(
    tenant: AdminTenant, body: TenantPatch, runtime: RuntimeDep, who: Who
) -> TenantView:
    """Org id (operator key only), connector user (an active SF user of the tenant), sync
    mode, auto-create, connector verified. Omitted or null fields are left as they are."""
    async with transaction(runtime) as conn:
        if body.salesforce_org_id is not None and not who.is_operator:
            # The org id decides which SF messages belong to the tenant: a tenant that could set
            # it could claim another customer's org.
            current = await tenants.get_tenant(conn, tenant, now())
            if body.salesforce_org_id != current.salesforce_org_id:
                raise Forbidden(
                    "only the operator key may change salesforceOrgId",
                    details={"required": "operator", "field": "salesforceOrgId"},
                )
        return await tenants.update_tenant(conn, tenant, body, now())


@router.post(
    "/tenants/{tenant}/webhook-secret/rotate",
    summary="Rotate the AE webhook secret",
    responses=responses(409),
)
async def rotate_webhook_secret(
    tenant: AdminTenant, body: SecretRotation, runtime: RuntimeDep
) -> SecretRotated:
    """A new secret signs from now on; the old one stays valid for `graceSeconds` so that AE
    can be switched over without refused webhooks. The new secret is shown this once."""
    async with transaction(runtime) as conn:
        return await tenants.rotate_webhook_secret(
            conn,
            tenant,
            grace=timedelta(seconds=body.grace_seconds),
            now=now(),
            new_secret=body.webhook_secret,
        )


@router.post(
    "/tenants/{tenant}/endpoint-key/rotate",
    summary="Rotate the SF endpoint key",
    responses=responses(409),
)
async def rotate_endpoint_key(
    tenant: AdminTenant, body: EndpointKeyRotation, runtime: RuntimeDep
) -> EndpointKeyRotated:
    """A new key for the `key` query parameter of the SF outbound-message URLs; the old one
    stays valid for `graceSeconds` so that SF's actions can be switched over without refused
    deliveries. The new key is shown this once."""
    async with transaction(runtime) as conn:
        return await tenants.rotate_endpoint_key(
            conn,
            tenant,
            grace=timedelta(seconds=body.grace_seconds),
            now=now(),
            new_key=body.salesforce_endpoint_key,
        )


@router.post("/tenants/{tenant}/api-keys", status_code=201, summary="Create an API key")
async def create_api_key(
    tenant: AdminTenant, body: ApiKeyCreate, runtime: RuntimeDep
) -> ApiKeyCreated:
    """The key is shown in this answer only; ownersync keeps its hash."""
    async with transaction(runtime) as conn:
        return await api_keys.create_api_key(
            conn, tenant, name=body.name, scopes=body.scopes, now=now()
        )


@router.get("/tenants/{tenant}/api-keys", summary="List API keys (never the keys themselves)")
async def list_api_keys(tenant: AdminTenant, runtime: RuntimeDep, page: Pages) -> Page[ApiKeyView]:
    async with transaction(runtime) as conn:
        return await api_keys.list_api_keys(conn, tenant, limit=page.limit, cursor=page.cursor)


@router.delete("/tenants/{tenant}/api-keys/{key_id}", summary="Revoke an API key")
async def revoke_api_key(tenant: AdminTenant, key_id: KeyIdPath, runtime: RuntimeDep) -> ApiKeyView:
    """At once and for good: the next request with it gets 401."""
    async with transaction(runtime) as conn:
        return await api_keys.revoke_api_key(conn, tenant, key_id, now())
