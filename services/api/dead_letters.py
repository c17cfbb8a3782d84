"""/v1/tenants/{tenant}/dead-letters (the tenant's) and /v1/dead-letters (all, operator)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from services.admin import dead_letters as dl
from services.admin.pagination import Page
from services.admin.schemas import DeadLetterDiscarded, DeadLettersReplayed, DeadLetterView
from services.api.auth import AdminTenant, Operator, ReadTenant
from services.api.common import DeadLetterPath, Paging, paging
from services.api.errors import responses
from services.common.web import RuntimeDep

router = APIRouter(tags=["dead letters"], responses=responses(503))
Pages = Annotated[Paging, Depends(paging)]
REPLAY = (
    "Republished to the events exchange under its event type, then removed from the dead "
    "letters; the workers' inbox makes a replay of an event already applied a no-op."
)


@router.get("/tenants/{tenant}/dead-letters", summary="The tenant's dead letters, with reasons")
async def list_dead_letters(
    tenant: ReadTenant, runtime: RuntimeDep, page: Pages
) -> Page[DeadLetterView]:
    store = dl.dead_letter_store(runtime.broker)
    return await dl.list_dead_letters(store, tenant, limit=page.limit, cursor=page.cursor)


@router.post(
    "/tenants/{tenant}/dead-letters/replay",
    summary="Replay all of the tenant's dead letters",
    description=REPLAY,
)
async def replay_all(tenant: AdminTenant, runtime: RuntimeDep) -> DeadLettersReplayed:
    return await dl.replay_dead_letters(dl.dead_letter_store(runtime.broker), tenant)


@router.post(
    "/tenants/{tenant}/dead-letters/{letter_id}/replay",
    summary="Replay one dead letter",
    description=REPLAY,
)
async def replay_one(
    tenant: AdminTenant, letter_id: DeadLetterPath, runtime: RuntimeDep
) -> DeadLettersReplayed:
    return await dl.replay_dead_letters(dl.dead_letter_store(runtime.broker), tenant, letter_id)


@router.delete("/tenants/{tenant}/dead-letters/{letter_id}", summary="Discard a dead letter")
async def discard_one(
    tenant: AdminTenant, letter_id: DeadLetterPath, runtime: RuntimeDep
) -> DeadLetterDiscarded:
    return await dl.discard_dead_letter(dl.dead_letter_store(runtime.broker), tenant, letter_id)


@router.get("/dead-letters", summary="Every dead letter, undecodable ones too (operator key)")
async def list_all(_operator: Operator, runtime: RuntimeDep, page: Pages) -> Page[DeadLetterView]:
    store = dl.dead_letter_store(runtime.broker)
    return await dl.list_dead_letters(store, None, limit=page.limit, cursor=page.cursor)


@router.post(
    "/dead-letters/{letter_id}/replay",
    summary="Replay any dead letter (operator key)",
    description=REPLAY,
)
async def replay_any(
    _operator: Operator, letter_id: DeadLetterPath, runtime: RuntimeDep
) -> DeadLettersReplayed:
    return await dl.replay_dead_letters(dl.dead_letter_store(runtime.broker), None, letter_id)


@router.delete("/dead-letters/{letter_id}", summary="Discard any dead letter (operator key)")
async def discard_any(
    _operator: Operator, letter_id: DeadLetterPath, runtime: RuntimeDep
) -> DeadLetterDiscarded:
    return await dl.discard_dead_letter(dl.dead_letter_store(runtime.broker), None, letter_id)
