"""/v1/tenants/{tenant}/queues and /groups (round robin: members, weights, caps, pause)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response

from services.admin import groups
from services.admin.pagination import Page
from services.admin.schemas import (
    GroupCreate,
    GroupMemberPut,
    GroupMemberView,
    GroupPatch,
    GroupSlaPut,
    GroupView,
    QueueCreate,
    QueuePatch,
    QueueView,
)
from services.api.auth import ReadTenant, WriteTenant
from services.api.common import AeUserPath, GroupPath, Paging, SfQueuePath, paging, transaction
from services.api.errors import responses
from services.common.web import RuntimeDep

router = APIRouter()
Pages = Annotated[Paging, Depends(paging)]

# --- queues ------------------------------------------------------------------------------


@router.get("/tenants/{tenant}/queues", tags=["queues"], summary="List SF lead queues")
async def list_queues(tenant: ReadTenant, runtime: RuntimeDep, page: Pages) -> Page[QueueView]:
    async with transaction(runtime) as conn:
        return await groups.list_queues(conn, tenant, limit=page.limit, cursor=page.cursor)


@router.post(
    "/tenants/{tenant}/queues",
    status_code=201,
    tags=["queues"],
    summary="Add a SF lead queue AE may assign to",
    responses=responses(409),
)
async def create_queue(tenant: WriteTenant, body: QueueCreate, runtime: RuntimeDep) -> QueueView:
    async with transaction(runtime) as conn:
        return await groups.create_queue(conn, tenant, queue_id=body.id, name=body.name)


@router.patch("/tenants/{tenant}/queues/{queue_id}", tags=["queues"], summary="Rename a queue")
async def rename_queue(
    tenant: WriteTenant, queue_id: SfQueuePath, body: QueuePatch, runtime: RuntimeDep
) -> QueueView:
    async with transaction(runtime) as conn:
        return await groups.rename_queue(conn, tenant, queue_id, name=body.name)


@router.delete("/tenants/{tenant}/queues/{queue_id}", tags=["queues"], summary="Remove a queue")
async def delete_queue(
    tenant: WriteTenant, queue_id: SfQueuePath, runtime: RuntimeDep
) -> QueueView:
    """AE can no longer assign to it; records already on it stay as they are."""
    async with transaction(runtime) as conn:
        return await groups.delete_queue(conn, tenant, queue_id)


# --- groups ------------------------------------------------------------------------------


@router.get("/tenants/{tenant}/groups", tags=["groups"], summary="List round-robin groups")
async def list_groups(tenant: ReadTenant, runtime: RuntimeDep, page: Pages) -> Page[GroupView]:
    async with transaction(runtime) as conn:
        return await groups.list_groups(conn, tenant, limit=page.limit, cursor=page.cursor)


@router.post(
    "/tenants/{tenant}/groups",
    status_code=201,
    tags=["groups"],
    summary="Create a round-robin group",
    responses=responses(409),
)
async def create_group(tenant: WriteTenant, body: GroupCreate, runtime: RuntimeDep) -> GroupView:
    async with transaction(runtime) as conn:
        return await groups.create_group(conn, tenant, body)


@router.get("/tenants/{tenant}/groups/{group_id}", tags=["groups"], summary="A group")
async def get_group(tenant: ReadTenant, group_id: GroupPath, runtime: RuntimeDep) -> GroupView:
    async with transaction(runtime) as conn:
        return await groups.get_group(conn, tenant, group_id)


@router.patch("/tenants/{tenant}/groups/{group_id}", tags=["groups"], summary="Rename a group")
async def rename_group(
    tenant: WriteTenant, group_id: GroupPath, body: GroupPatch, runtime: RuntimeDep
) -> GroupView:
    async with transaction(runtime) as conn:
        return await groups.rename_group(conn, tenant, group_id, name=body.name)


@router.delete("/tenants/{tenant}/groups/{group_id}", tags=["groups"], summary="Delete a group")
async def delete_group(tenant: WriteTenant, group_id: GroupPath, runtime: RuntimeDep) -> GroupView:
    async with transaction(runtime) as conn:
        return await groups.delete_group(conn, tenant, group_id)


@router.put(
    "/tenants/{tenant}/groups/{group_id}/sla",
    tags=["groups"],
    summary="Set the group's follow-up SLA (slaSeconds null: off)",
)
async def set_group_sla(
    tenant: WriteTenant, group_id: GroupPath, body: GroupSlaPut, runtime: RuntimeDep
) -> GroupView:
    async with transaction(runtime) as conn:
        return await groups.set_group_sla(conn, tenant, group_id, body)


@router.put(
    "/tenants/{tenant}/groups/{group_id}/members/{ae_user_id}",
    tags=["groups"],
    summary="Add a member, or set its weight, daily cap and working hours",
    responses={201: {"model": GroupMemberView, "description": "Member added"}, **responses(409)},
)
async def put_member(
    tenant: WriteTenant,
    group_id: GroupPath,
    ae_user_id: AeUserPath,
    body: GroupMemberPut,
    runtime: RuntimeDep,
    response: Response,
) -> GroupMemberView:
    """200 when the member's settings were replaced, 201 when it was added."""
    async with transaction(runtime) as conn:
        member, added = await groups.put_member(conn, tenant, group_id, ae_user_id, body)
    if added:
        response.status_code = 201
    return member


@router.delete(
    "/tenants/{tenant}/groups/{group_id}/members/{ae_user_id}",
    tags=["groups"],
    summary="Remove a member",
)
async def remove_member(
    tenant: WriteTenant, group_id: GroupPath, ae_user_id: AeUserPath, runtime: RuntimeDep
) -> GroupMemberView:
    async with transaction(runtime) as conn:
        return await groups.remove_member(conn, tenant, group_id, ae_user_id)


@router.post(
    "/tenants/{tenant}/groups/{group_id}/members/{ae_user_id}/pause",
    tags=["groups"],
    summary="Pause a member (the round robin skips it)",
)
async def pause_member(
    tenant: WriteTenant, group_id: GroupPath, ae_user_id: AeUserPath, runtime: RuntimeDep
) -> GroupMemberView:
    async with transaction(runtime) as conn:
        return await groups.set_member_paused(conn, tenant, group_id, ae_user_id, paused=True)


@router.post(
    "/tenants/{tenant}/groups/{group_id}/members/{ae_user_id}/resume",
    tags=["groups"],
    summary="Resume a paused member",
)
async def resume_member(
    tenant: WriteTenant, group_id: GroupPath, ae_user_id: AeUserPath, runtime: RuntimeDep
) -> GroupMemberView:
    async with transaction(runtime) as conn:
        return await groups.set_member_paused(conn, tenant, group_id, ae_user_id, paused=False)
