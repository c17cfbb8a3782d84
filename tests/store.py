"""Reading the store the way the tests check it: table counts, rows, and the decisions' audit
rows. Works on any running stack (SQLite or Postgres)."""

from __future__ import annotations

from typing import Any, Protocol

from sqlalchemy import Table, func, select

from services.common.db.tables import audit_log, metadata, records
from services.common.domain import Rule
from services.common.runtime import Runtime


class HasRuntime(Protocol):
    @property
    def runtime(self) -> Runtime: ...


async def table_counts(live: HasRuntime) -> dict[str, int]:
    counts: dict[str, int] = {}
    async with live.runtime.engine.connect() as conn:
        for table in metadata.sorted_tables:
            counts[table.name] = (
                await conn.execute(select(func.count()).select_from(table))
            ).scalar_one()
    return counts


async def table_rows(live: HasRuntime, table: Table) -> list[dict[str, Any]]:
    async with live.runtime.engine.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(select(table))]


async def decision_rows(live: HasRuntime) -> list[dict[str, Any]]:
    """The audit rows of decisions, oldest first (not the rows of what the relay learned)."""
    rows = await table_rows(live, audit_log)
    return sorted((r for r in rows if r["rule"] != Rule.RELAY), key=lambda r: r["id"])


async def record_where(live: HasRuntime, **where: Any) -> dict[str, Any]:
    """The one record whose columns have the values given."""
    query = select(records)
    for column, value in where.items():
        query = query.where(records.c[column] == value)
    async with live.runtime.engine.connect() as conn:
        return dict((await conn.execute(query)).one()._mapping)
