"""/v1/tenants/{tenant}/effects: effects not sent yet (waiting, sending) or dead, and discard."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from services.admin import effects
from services.admin.effects import EffectsPage
from services.admin.schemas import EffectDiscarded, EffectState
from services.api.auth import ReadTenant, Who, WriteTenant
from services.api.common import Paging, now, paging, transaction
from services.api.errors import responses
from services.common.web import RuntimeDep

router = APIRouter(tags=["effects"])
Pages = Annotated[Paging, Depends(paging)]
EffectPath = Annotated[int, Path(ge=1, le=9_223_372_036_854_775_807, description="outbox id")]


@router.get(
    "/tenants/{tenant}/effects",
    summary="Effects waiting to be sent, being sent, or dead, oldest first, with the oldest's age",
    description="An outage makes effects wait, it does not kill them: they are retried, backing "
    "off up to OWNERSYNC_RELAY_BACKOFF_MAX_SECONDS, until they are sent or discarded here.",
)
async def list_effects(
    tenant: ReadTenant,
    runtime: RuntimeDep,
    page: Pages,
    state: Annotated[EffectState, Query(description="which effects")] = "waiting",
) -> EffectsPage:
    async with transaction(runtime) as conn:
        return await effects.list_effects(
            conn, tenant, state, now=now(), limit=page.limit, cursor=page.cursor
        )


@router.delete(
    "/tenants/{tenant}/effects/{effect_id}",
    summary="Discard a waiting or dead effect: it is never sent (audited on its record)",
    description="409 `effect_sending` while a relay is sending it: try again once it is settled.",
    responses=responses(409),
)
async def discard_effect(
    tenant: WriteTenant, effect_id: EffectPath, who: Who, runtime: RuntimeDep
) -> EffectDiscarded:
    by = "the operator key" if who.is_operator else f"API key {who.key_id}"
    async with transaction(runtime) as conn:
        return await effects.discard_effect(conn, tenant, effect_id, by=by, now=now())
