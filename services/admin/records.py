"""Records as ownersync knows them, and their audit timeline: why is this prospect owned by X?"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from services.admin.errors import Invalid, NotFound
from services.admin.pagination import Page, decode_cursor, page_of
from services.admin.schemas import AuditEntry, RecordView, SlaTimerView
from services.common.db import sla_store
from services.common.db.tables import audit_log, connected_users, records
from services.common.domain import describe_ae_owner
from services.common.messages import MAX_ID
from services.common.sfid import is_queue, to18

RecordKey = Literal["prospect", "sf"]


def _owner_ae_user_id() -> Any:
    return (
        select(connected_users.c.ae_user_id)
        .where(
            connected_users.c.tenant_id == records.c.tenant_id,
            connected_users.c.sf_user_id == records.c.sf_owner_id,
        )
        .scalar_subquery()
        .label("owner_ae_user_id")
    )


async def record_row(conn: AsyncConnection, tenant_id: str, by: RecordKey, key: Any) -> Any:
    column = records.c.prospect_id if by == "prospect" else records.c.sf_record_id
    owner_ae = _owner_ae_user_id()
    row = (
        await conn.execute(
            select(records, owner_ae).where(records.c.tenant_id == tenant_id, column == key)
        )
    ).first()
    if row is None:
        what = "prospect" if by == "prospect" else "SF record"
        raise NotFound(f"no record of {what} {key}")
    return row


def owners_agree(row: Any) -> bool | None:
    """Whether AE's owner is what the connected users give for the SF owner (None: unknowable)."""
    if row.sf_owner_id is None:
        return None
    if is_queue(row.sf_owner_id):
        return row.ae_assigned_queue_id == row.sf_owner_id and row.ae_assigned_user_id is None
    if row.owner_ae_user_id is None:
        return None
    return row.ae_assigned_user_id == row.owner_ae_user_id and row.ae_assigned_queue_id is None


def ae_owner_in(owners: Mapping[str, Any] | None) -> str:
    """AE's owner in an audit entry's `before` or `after`, as the timeline shows it."""
    owners = owners or {}
    return describe_ae_owner(
        owners.get("ae_assigned_user_id"),
        owners.get("ae_assigned_queue_id"),
        unassigned="unassigned",
    )


def record_view(row: Any) -> RecordView:
    return RecordView(
        id=row.id,
        prospect_id=row.prospect_id,
        sf_record_id=row.sf_record_id,
        sf_object=row.sf_object,
        email=row.email,
        ae_assigned_user_id=row.ae_assigned_user_id,
        ae_assigned_queue_id=row.ae_assigned_queue_id,
        sf_owner_id=row.sf_owner_id,
        last_modstamp=row.last_modstamp,
        owners_agree=owners_agree(row),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def search_key(query: str) -> tuple[RecordKey | Literal["email"], Any] | None:
    """What a search box's text names: a prospect id (digits), a SF record id (15 or 18
    characters) or an email (has an @); None for anything else."""
    text = query.strip()
    if text.isdigit() and 0 < len(text) <= 18 and int(text) <= MAX_ID:
        return "prospect", int(text)
    if "@" in text and len(text) <= 254:
        return "email", text
    try:
        return "sf", to18(text)
    except ValueError:
        return None


async def find_records(
    conn: AsyncConnection, tenant_id: str, query: str, *, limit: int = 20
) -> list[RecordView]:
    """The records a prospect id, a SF record id or an email (case-insensitive) finds."""
    key = search_key(query)
    if key is None:
        raise Invalid(
            "search by a prospect id (digits), a SF record id (15 or 18 characters) or an email",
            code="invalid_search",
        )
    by, value = key
    if by != "email":
        try:
            return [await get_record(conn, tenant_id, by, value)]
        except NotFound:
            return []
    owner_ae = _owner_ae_user_id()
    rows = await conn.execute(
        select(records, owner_ae)
        .where(records.c.tenant_id == tenant_id, func.lower(records.c.email) == value.lower())
        .order_by(records.c.id)
        .limit(limit)
    )
    return [record_view(row) for row in rows]


async def get_record(conn: AsyncConnection, tenant_id: str, by: RecordKey, key: Any) -> RecordView:
    row = await record_row(conn, tenant_id, by, key)
    timers = [
        SlaTimerView(
            id=t.id,
            state=t.state,
            group_id=t.group_id,
            ae_user_id=t.ae_user_id,
            sf_owner_id=t.sf_owner_id,
            escalations=t.escalations,
            sla_seconds=t.seconds,
            business_hours=t.business_hours,
            started_at=t.started_at,
            due_at=t.due_at,
            ended_at=t.ended_at,
            reason=t.reason,
        )
        for t in await sla_store.timers_of_record(conn, row.id)
    ]
    return record_view(row).model_copy(update={"sla": timers})


def _audit_view(row: Any) -> AuditEntry:
    return AuditEntry(
        id=row.id,
        rule=row.rule,
        reason=row.reason,
        before=row.before,
        after=row.after,
        event_id=row.event_id,
        event_type=row.event_type,
        source_id=row.source_id,
        # Added with the traces (a nullable column): rows and schemas without it read as None.
        trace_id=row._mapping.get("trace_id"),
        created_at=row.created_at,
    )


async def record_audit(
    conn: AsyncConnection,
    tenant_id: str,
    by: RecordKey,
    key: Any,
    *,
    limit: int,
    cursor: str | None = None,
) -> Page[AuditEntry]:
    """Every decision about the record, oldest first."""
    after = decode_cursor(cursor, int)
    record = await record_row(conn, tenant_id, by, key)
    query = (
        select(audit_log)
        .where(audit_log.c.tenant_id == tenant_id, audit_log.c.record_id == record.id)
        .order_by(audit_log.c.id)
        .limit(limit + 1)
    )
    if after is not None:
        query = query.where(audit_log.c.id > after)
    return page_of((await conn.execute(query)).all(), limit, lambda r: r.id, _audit_view)
