"""Effects in the outbox that are not sent: waiting (an outage, a spent quota), being sent, or
dead; and their discard by an operator, audited on the record.

The relay never kills an effect for a transient failure: it waits until the remote side is back
or someone discards it here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.admin.errors import Conflict, NotFound
from services.admin.pagination import Page, decode_cursor, page_of
from services.admin.schemas import EffectDiscarded, EffectState, EffectView
from services.common.db.store import Cause, audit_row
from services.common.db.tables import audit_log, outbox, records
from services.common.domain import Rule

# The API's names of the outbox states it shows.
STATUS: dict[EffectState, str] = {"waiting": "pending", "sending": "sending", "dead": "dead"}
STATE = {status: state for state, status in STATUS.items()}
DISCARD_EVENT_TYPE = "ownersync.operator"


class EffectsPage(Page[EffectView]):
    count: int = Field(description="the tenant's effects in this state, on every page")
    oldest_age_seconds: float | None = Field(
        description="age of the oldest of them; null when there is none"
    )


def _view(row: Any, now: datetime) -> EffectView:
    return EffectView(
        id=row.id,
        record_id=row.record_id,
        prospect_id=row.prospect_id,
        sf_record_id=row.sf_record_id,
        target=row.target,
        kind=row.kind,
        state=STATE[row.status],
        attempts=row.attempts,
        last_error=row.last_error,
        next_attempt_at=row.next_attempt_at,
        created_at=row.created_at,
        age_seconds=_age(now, row.created_at),
        lease_owner=row.lease_owner,
    )


def _age(now: datetime, then: datetime) -> float:
    return round(max((now - then).total_seconds(), 0.0), 3)


async def list_effects(
    conn: AsyncConnection,
    tenant_id: str,
    state: EffectState,
    *,
    now: datetime,
    limit: int,
    cursor: str | None = None,
) -> EffectsPage:
    """The tenant's effects in `state`, oldest first, with their count and the oldest's age."""
    mine = (outbox.c.tenant_id == tenant_id) & (outbox.c.status == STATUS[state])
    count, oldest = (
        await conn.execute(select(func.count(), func.min(outbox.c.created_at)).where(mine))
    ).one()
    query = (
        select(
            outbox.c.id,
            outbox.c.record_id,
            records.c.prospect_id,
            records.c.sf_record_id,
            outbox.c.target,
            outbox.c.kind,
            outbox.c.status,
            outbox.c.attempts,
            outbox.c.last_error,
            outbox.c.next_attempt_at,
            outbox.c.created_at,
            outbox.c.lease_owner,
        )
        .join(records, records.c.id == outbox.c.record_id)
        .where(mine)
        .order_by(outbox.c.id)
        .limit(limit + 1)
    )
    if (after := decode_cursor(cursor, int)) is not None:
        query = query.where(outbox.c.id > after)
    rows = (await conn.execute(query)).all()
    page = page_of(rows, limit, lambda r: r.id, lambda r: _view(r, now))
    return EffectsPage(
        items=page.items,
        next_cursor=page.next_cursor,
        count=count,
        oldest_age_seconds=_age(now, oldest) if oldest is not None else None,
    )


async def discard_effect(
    conn: AsyncConnection, tenant_id: str, effect_id: int, *, by: str, now: datetime
) -> EffectDiscarded:
    """Give up on a waiting or dead effect: it is never sent. Older waiting rows of the same
    record and kind go with it (it had replaced them). An audit row on the record says who."""
    query = select(outbox).where(outbox.c.id == effect_id, outbox.c.tenant_id == tenant_id)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = (await conn.execute(query)).first()
    if row is None or row.status not in STATUS.values():
        raise NotFound(f"no waiting, sending or dead effect {effect_id}")
    if row.status == "sending":
        raise Conflict(
            f"effect {effect_id} is being sent by relay {row.lease_owner}: try again once it "
            "is settled",
            code="effect_sending",
        )
    older = (
        await conn.execute(
            update(outbox)
            .where(
                outbox.c.record_id == row.record_id,
                outbox.c.kind == row.kind,
                outbox.c.status == "pending",
                outbox.c.id < effect_id,
            )
            .values(status="superseded", done_at=now)
            .returning(outbox.c.id)
        )
    ).all()
    await conn.execute(
        update(outbox).where(outbox.c.id == effect_id).values(status="discarded", done_at=now)
    )
    reason = (
        f"{by} discarded the {row.kind} effect {effect_id} ({STATE[row.status]}, "
        f"{row.attempts} failed tries, last error: {row.last_error or 'none'})"
    )
    cause = Cause(row.event_id, f"outbox {effect_id}", DISCARD_EVENT_TYPE)
    await conn.execute(
        audit_log.insert().values(
            audit_row(tenant_id, row.record_id, cause, Rule.RELAY, reason, None, None, now)
        )
    )
    return EffectDiscarded(discarded=effect_id, superseded=sorted(r.id for r in older))
