"""/v1/tenants/{tenant}/sf-users and /ae-users: create, update, deactivate, list, load."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from services.admin import users
from services.admin.pagination import Page
from services.admin.schemas import (
    AeUserCreate,
    AeUserPatch,
    AeUsersLoad,
    AeUserView,
    SfUserCreate,
    SfUserPatch,
    SfUsersLoad,
    SfUserView,
    UsersLoaded,
)
from services.api.auth import ReadTenant, WriteTenant
from services.api.common import AeUserPath, Paging, SfUserPath, now, paging, transaction
from services.api.errors import responses
from services.common.web import RuntimeDep

router = APIRouter()
Pages = Annotated[Paging, Depends(paging)]
ActiveFilter = Annotated[bool | None, Query(description="only active (true) or inactive users")]
EmailFilter = Annotated[
    str | None,
    Query(max_length=254, pattern=r"^[^\x00-\x1f\x7f]+$", description="case-insensitive"),
]
DEACTIVATE = (
    "Deactivating removes the user's connected-user mapping; the tenant's connector user "
    "cannot be deactivated (409)."
)
LOAD = "Up to 5000 users per call, created or updated by id. " + DEACTIVATE

# --- SF users ----------------------------------------------------------------------------


@router.get("/tenants/{tenant}/sf-users", tags=["sf users"], summary="List SF users")
async def list_sf_users(
    tenant: ReadTenant,
    runtime: RuntimeDep,
    page: Pages,
    active: ActiveFilter = None,
    email: EmailFilter = None,
) -> Page[SfUserView]:
    async with transaction(runtime) as conn:
        return await users.list_sf_users(
            conn, tenant, limit=page.limit, cursor=page.cursor, active=active, email=email
        )


@router.post(
    "/tenants/{tenant}/sf-users",
    status_code=201,
    tags=["sf users"],
    summary="Create a SF user",
    responses=responses(409),
)
async def create_sf_user(
    tenant: WriteTenant, body: SfUserCreate, runtime: RuntimeDep
) -> SfUserView:
    async with transaction(runtime) as conn:
        return await users.create_sf_user(conn, tenant, body, now())


@router.post(
    "/tenants/{tenant}/sf-users/bulk",
    tags=["sf users"],
    summary="Create or update many SF users",
    description=LOAD,
    responses=responses(409),
)
async def load_sf_users(tenant: WriteTenant, body: SfUsersLoad, runtime: RuntimeDep) -> UsersLoaded:
    async with transaction(runtime) as conn:
        return await users.load_sf_users(conn, tenant, body.users, now())


@router.get("/tenants/{tenant}/sf-users/{sf_user_id}", tags=["sf users"], summary="A SF user")
async def get_sf_user(
    tenant: ReadTenant, sf_user_id: SfUserPath, runtime: RuntimeDep
) -> SfUserView:
    async with transaction(runtime) as conn:
        return await users.get_sf_user(conn, tenant, sf_user_id)


@router.patch(
    "/tenants/{tenant}/sf-users/{sf_user_id}",
    tags=["sf users"],
    summary="Update a SF user",
    description=DEACTIVATE,
    responses=responses(409),
)
async def update_sf_user(
    tenant: WriteTenant, sf_user_id: SfUserPath, body: SfUserPatch, runtime: RuntimeDep
) -> SfUserView:
    async with transaction(runtime) as conn:
        return await users.update_sf_user(conn, tenant, sf_user_id, body)


@router.post(
    "/tenants/{tenant}/sf-users/{sf_user_id}/deactivate",
    tags=["sf users"],
    summary="Deactivate a SF user",
    description=DEACTIVATE,
    responses=responses(409),
)
async def deactivate_sf_user(
    tenant: WriteTenant, sf_user_id: SfUserPath, runtime: RuntimeDep
) -> SfUserView:
    async with transaction(runtime) as conn:
        return await users.update_sf_user(
            conn, tenant, sf_user_id, SfUserPatch.model_validate({"active": False})
        )


# --- AE users ----------------------------------------------------------------------------


@router.get("/tenants/{tenant}/ae-users", tags=["ae users"], summary="List AE users")
async def list_ae_users(
    tenant: ReadTenant,
    runtime: RuntimeDep,
    page: Pages,
    active: ActiveFilter = None,
    email: EmailFilter = None,
) -> Page[AeUserView]:
    async with transaction(runtime) as conn:
        return await users.list_ae_users(
            conn, tenant, limit=page.limit, cursor=page.cursor, active=active, email=email
        )


@router.post(
    "/tenants/{tenant}/ae-users",
    status_code=201,
    tags=["ae users"],
    summary="Create an AE user",
    responses=responses(409),
)
async def create_ae_user(
    tenant: WriteTenant, body: AeUserCreate, runtime: RuntimeDep
) -> AeUserView:
    async with transaction(runtime) as conn:
        return await users.create_ae_user(conn, tenant, body, now())


@router.post(
    "/tenants/{tenant}/ae-users/bulk",
    tags=["ae users"],
    summary="Create or update many AE users",
    description=LOAD,
    responses=responses(409),
)
async def load_ae_users(tenant: WriteTenant, body: AeUsersLoad, runtime: RuntimeDep) -> UsersLoaded:
    async with transaction(runtime) as conn:
        return await users.load_ae_users(conn, tenant, body.users, now())


@router.get("/tenants/{tenant}/ae-users/{ae_user_id}", tags=["ae users"], summary="An AE user")
async def get_ae_user(
    tenant: ReadTenant, ae_user_id: AeUserPath, runtime: RuntimeDep
) -> AeUserView:
    async with transaction(runtime) as conn:
        return await users.get_ae_user(conn, tenant, ae_user_id)


@router.patch(
    "/tenants/{tenant}/ae-users/{ae_user_id}",
    tags=["ae users"],
    summary="Update an AE user",
    description=DEACTIVATE,
    responses=responses(409),
)
async def update_ae_user(
    tenant: WriteTenant, ae_user_id: AeUserPath, body: AeUserPatch, runtime: RuntimeDep
) -> AeUserView:
    async with transaction(runtime) as conn:
        return await users.update_ae_user(conn, tenant, ae_user_id, body)


@router.post(
    "/tenants/{tenant}/ae-users/{ae_user_id}/deactivate",
    tags=["ae users"],
    summary="Deactivate an AE user",
    description=DEACTIVATE,
    responses=responses(409),
)
async def deactivate_ae_user(
    tenant: WriteTenant, ae_user_id: AeUserPath, runtime: RuntimeDep
) -> AeUserView:
    async with transaction(runtime) as conn:
        return await users.update_ae_user(
            conn, tenant, ae_user_id, AeUserPatch.model_validate({"active": False})
        )
