"""Dead letters: list them with their reason, replay one or all, discard.

The broker side is `services.common.broker.dead_letters`; this layer pages, filters by tenant
and answers in the API's shapes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from services.admin.errors import NotFound, Unavailable
from services.admin.pagination import Page, decode_cursor, encode_cursor
from services.admin.schemas import DeadLetterDiscarded, DeadLettersReplayed, DeadLetterView
from services.common.broker.base import BrokerUnavailable
from services.common.broker.dead_letters import (
    SCAN_LIMIT,
    DeadLetterStore,
    Parked,
    Select,
    dead_letter_store,
)

log = logging.getLogger("ownersync.admin")

__all__ = ["SCAN_LIMIT", "dead_letter_store", "discard_dead_letter", "list_dead_letters"]


@asynccontextmanager
async def _broker_answers() -> AsyncIterator[None]:
    try:
        yield
    except BrokerUnavailable as exc:
        # The broker's words name its host and port: they go to the log, not to the caller.
        log.error("dead letters: the broker did not answer: %s", exc)
        raise Unavailable(
            "the broker did not answer; retry later", code="broker_unavailable"
        ) from exc


def _view(parked: Parked) -> DeadLetterView:
    try:
        body: Any = json.loads(parked.body)
    except ValueError:
        body = parked.body.decode("utf-8", "replace")
    return DeadLetterView(
        id=parked.id,
        queue=parked.queue,
        reason=parked.reason,
        event_type=parked.event_type,
        tenant=parked.tenant,
        source_id=parked.source_id,
        body=body,
    )


def _of(tenant_id: str | None) -> Select:
    return lambda p: tenant_id is None or p.tenant == tenant_id


async def list_dead_letters(
    store: DeadLetterStore, tenant_id: str | None, *, limit: int, cursor: str | None = None
) -> Page[DeadLetterView]:
    """`tenant_id` None: every dead letter (operators only), undecodable ones included."""
    offset = decode_cursor(cursor, int) or 0
    async with _broker_answers():
        parked = await store.peek(SCAN_LIMIT)
    mine = [p for p in parked if _of(tenant_id)(p)]
    page = mine[offset : offset + limit]
    more = len(mine) > offset + limit
    return Page[DeadLetterView](
        items=[_view(p) for p in page], next_cursor=encode_cursor(offset + limit) if more else None
    )


async def replay_dead_letters(
    store: DeadLetterStore, tenant_id: str | None, letter_id: str | None = None
) -> DeadLettersReplayed:
    """Replay one (by id) or all of the tenant's dead letters."""
    select = _of(tenant_id)
    async with _broker_answers():
        if letter_id is not None:
            replayed, kept = await store.replay(lambda p: select(p) and p.id == letter_id, 1)
        else:
            replayed, kept = await store.replay(select, SCAN_LIMIT)
    if letter_id is not None and not replayed and not kept:
        raise NotFound(f"dead letter {letter_id} not found")
    return DeadLettersReplayed(replayed=replayed, not_replayable=kept)


async def discard_dead_letter(
    store: DeadLetterStore, tenant_id: str | None, letter_id: str
) -> DeadLetterDiscarded:
    select = _of(tenant_id)
    async with _broker_answers():
        dropped = await store.discard(lambda p: select(p) and p.id == letter_id, 1)
    if not dropped:
        raise NotFound(f"dead letter {letter_id} not found")
    return DeadLetterDiscarded(discarded=dropped[0])
