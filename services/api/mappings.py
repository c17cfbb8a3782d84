"""/v1/tenants/{tenant}/connected-users and /user-sync."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from services.admin import mappings, user_sync
from services.admin.pagination import Page
from services.admin.schemas import (
    BigId,
    MappingCreate,
    MappingView,
    SfUserId,
    UserSyncReport,
    UserSyncRequest,
)
from services.api.auth import ReadTenant, WriteTenant
from services.api.common import AeUserPath, Paging, now, paging, transaction
from services.api.errors import responses
from services.common.web import RuntimeDep

router = APIRouter(tags=["connected users"])


@router.get("/tenants/{tenant}/connected-users", summary="List connected users")
async def list_mappings(
    tenant: ReadTenant,
    runtime: RuntimeDep,
    page: Annotated[Paging, Depends(paging)],
    ae_user_id: Annotated[BigId | None, Query(alias="aeUserId")] = None,
    sf_user_id: Annotated[SfUserId | None, Query(alias="sfUserId")] = None,
) -> Page[MappingView]:
    async with transaction(runtime) as conn:
        return await mappings.list_mappings(
            conn,
            tenant,
            limit=page.limit,
            cursor=page.cursor,
            ae_user_id=ae_user_id,
            sf_user_id=sf_user_id,
        )


@router.post(
    "/tenants/{tenant}/connected-users",
    status_code=201,
    summary="Connect an AE user to a SF user",
    responses={
        200: {"model": MappingView, "description": "That exact mapping already held"},
        **responses(409),
    },
)
async def create_mapping(
    tenant: WriteTenant, body: MappingCreate, runtime: RuntimeDep, response: Response
) -> MappingView:
    """Each AE user and each SF user is in one mapping at most: a mapping that contradicts one
    that holds is refused with 409 `mapping_conflict`, and `details.holding` names it. Both
    users must exist (422 `unknown_user`) and be active (409 `user_inactive`)."""
    async with transaction(runtime) as conn:
        view, created = await mappings.create_mapping(
            conn, tenant, ae_user_id=body.ae_user_id, sf_user_id=body.sf_user_id, now=now()
        )
    if not created:
        response.status_code = 200
    return view


@router.delete(
    "/tenants/{tenant}/connected-users/{ae_user_id}",
    summary="Disconnect an AE user (returns the mapping removed)",
)
async def delete_mapping(
    tenant: WriteTenant, ae_user_id: AeUserPath, runtime: RuntimeDep
) -> MappingView:
    async with transaction(runtime) as conn:
        return await mappings.delete_mapping(conn, tenant, ae_user_id=ae_user_id)


@router.post(
    "/tenants/{tenant}/user-sync",
    summary="Connect AE users to SF users by SF user id or email",
)
async def run_user_sync(
    tenant: WriteTenant, body: UserSyncRequest, runtime: RuntimeDep
) -> UserSyncReport:
    """Like Salesforce User Sync: each AE user not yet connected is matched to the SF user AE
    knows it as (its SF user id) or else to the SF user with the same email, compared
    case-insensitively. Only active users are connected. An SF user already connected to
    someone else, or wanted by several AE users, or an email several active SF users share, is
    reported as conflicting and left for a person to settle. With `dryRun` nothing changes."""
    async with transaction(runtime) as conn:
        return await user_sync.run_user_sync(conn, tenant, dry_run=body.dry_run, now=now())
