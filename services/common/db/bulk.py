"""The Postgres path of a batch's reads and writes, straight on asyncpg.

Writes: one statement per batch part, each table's rows passed as one JSON parameter
(`json_to_recordset`), so that the statement's text never changes with the batch size. asyncpg
then prepares each statement once per connection and Postgres plans it once, where
SQLAlchemy's multi-row VALUES and expanding IN lists make a new statement (one more prepare
round trip, one more plan) for every batch size.

Reads: the look-ups every batch makes (the tenants' policies, the inbox's processed ids, the
records and S9 candidates, the connected users, the open SLA timers of the records SF changed)
as fixed statements with `= ANY(array)`: through SQLAlchemy Core each cost about 0.5 ms of CPU
more than the query itself (compiling its cache key, the result's rows), three to five times
the asyncpg call.

All of it runs on the connection of the worker's transaction; SQLite keeps the portable
SQLAlchemy path in `store`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Container, Iterable, Sequence
from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy import Table
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.db.tables import SLA_OPEN
from services.common.sla import SlaTimer

# (column, Postgres type) of the records' rows.
RECORD = (
    ("tenant_id", "text"),
    ("prospect_id", "bigint"),
    ("sf_record_id", "text"),
    ("sf_object", "text"),
    ("email", "text"),
    ("ae_assigned_user_id", "bigint"),
    ("ae_assigned_queue_id", "text"),
    ("sf_owner_id", "text"),
    ("last_modstamp", "timestamptz"),
    ("ae_modstamp", "timestamptz"),
    ("created_at", "timestamptz"),
    ("updated_at", "timestamptz"),
)
RECORD_CHANGE = (("id", "bigint"), *RECORD[1:-2], ("updated_at", "timestamptz"))


def applies(conn: AsyncConnection) -> bool:
    """Whether `conn` is Postgres through asyncpg (else the portable path is taken)."""
    return conn.dialect.name == "postgresql" and conn.dialect.driver == "asyncpg"


async def driver(conn: AsyncConnection) -> Any:
    """The asyncpg connection under `conn`, inside the same transaction."""
    raw = await conn.get_raw_connection()
    return raw.driver_connection


def _definitions(columns: Sequence[tuple[str, str]]) -> str:
    return ", ".join(f"{name} {kind}" for name, kind in columns)


def recordset(columns: Sequence[tuple[str, str]], alias: str, param: int = 1) -> str:
    """The rows of the statement's parameter `param` (a JSON array of objects) as a table."""
    return f"json_to_recordset(${param}::json) AS {alias}({_definitions(columns)})"


def rows_json(rows: Iterable[dict[str, Any]]) -> str:
    """The rows as the one JSON parameter: orjson writes them (datetimes in ISO 8601 with their
    offset) in one call, where arrays would cost asyncpg a type check per value."""
    return orjson.dumps(list(rows)).decode()


_POSTGRES = postgresql.dialect()  # type: ignore[no-untyped-call]


def columns_of(table: Table, row: Container[str]) -> list[tuple[str, str]]:
    """The (column, Postgres type) of the table that the row gives, in the table's order."""
    return [(c.name, c.type.compile(dialect=_POSTGRES)) for c in table.columns if c.name in row]


def insert_sql(table: str, columns: Sequence[tuple[str, str]], param: int = 1) -> str:
    names = ", ".join(name for name, _ in columns)
    return f"INSERT INTO {table} ({names}) SELECT {names} FROM {recordset(columns, 'r', param)}"


_RECORD_NAMES = ", ".join(name for name, _ in RECORD)
_INSERT_RECORDS = (
    f"INSERT INTO records ({_RECORD_NAMES}) SELECT {_RECORD_NAMES} "
    f"FROM ROWS FROM (json_to_recordset($1::json) "
    f"AS ({_definitions(RECORD)})) "
    f"WITH ORDINALITY AS r({_RECORD_NAMES}, n) ORDER BY r.n RETURNING id"
)


async def insert_records(conn: AsyncConnection, rows: list[dict[str, Any]]) -> list[int]:
    """Insert the records; their new ids in the order of `rows`.

    The rows are inserted in their order and the ids come from one sequence, so the i-th
    smallest id is the i-th row's (what SQLAlchemy's sort_by_parameter_order relies on too)."""
    found = await (await driver(conn)).fetch(_INSERT_RECORDS, rows_json(rows))
    return sorted(row["id"] for row in found)


# Always the first part of `write_sql`: its rows are parameter $1.
_UPDATE_RECORDS = (
    "UPDATE records AS r SET "
    + ", ".join(f"{name} = u.{name}" for name, _ in RECORD_CHANGE[1:])
    + f" FROM {recordset(RECORD_CHANGE, 'u')} WHERE r.id = u.id"
)


@lru_cache(maxsize=64)
def write_sql(updates: bool, inserts: tuple[tuple[Table, frozenset[str]], ...]) -> str:
    """The one statement of `write`. Built once per shape: building it makes a SQLAlchemy
    dialect's type names, garbage in reference cycles (what a worker's full collections freed)."""
    parts = [_UPDATE_RECORDS] if updates else []
    for table, given in inserts:
        parts.append(insert_sql(table.name, columns_of(table, given), len(parts) + 1))
    *first, last = parts
    if not first:
        return last
    # Data-modifying statements in WITH all run, referenced or not, on one snapshot: none of
    # these reads what another writes.
    ctes = ", ".join(f"w{n} AS ({sql})" for n, sql in enumerate(first, start=1))
    return f"WITH {ctes} {last}"


async def write(
    conn: AsyncConnection,
    updates: list[dict[str, Any]],
    inserts: Sequence[tuple[Table, list[dict[str, Any]]]],
) -> None:
    """Set every column of each record in `updates` (by its `id`) and insert the rows of each
    table (the columns the first row gives), all in one statement: one round trip to Postgres
    instead of one per table. The parts must not depend on each other's writes (they see the
    same snapshot)."""
    given = [(table, rows) for table, rows in inserts if rows]
    if not updates and not given:
        return
    sql = write_sql(bool(updates), tuple((table, frozenset(rows[0])) for table, rows in given))
    params = ([rows_json(updates)] if updates else []) + [rows_json(rows) for _, rows in given]
    await (await driver(conn)).execute(sql, *params)


_POLICIES = (
    "SELECT id, connector_user_id, sync_mode, auto_create_prospects, connector_verified "
    "FROM tenants WHERE id = ANY($1::varchar[])"
)


async def policy_rows(conn: AsyncConnection, tenant_ids: Iterable[str]) -> list[Any]:
    """The policy columns of the tenants (rows indexed by column name)."""
    rows: list[Any] = await (await driver(conn)).fetch(_POLICIES, array_of(tenant_ids))
    return rows


_PROCESSED = "SELECT event_id FROM inbox WHERE event_id = ANY($1::varchar[])"


async def processed_event_ids(conn: AsyncConnection, event_ids: Iterable[str]) -> set[str]:
    rows = await (await driver(conn)).fetch(_PROCESSED, array_of(event_ids))
    return {row[0] for row in rows}


_CONNECTED = (
    "SELECT sf_user_id, ae_user_id FROM connected_users "
    "WHERE tenant_id = $1 AND sf_user_id = ANY($2::varchar[])"
)


async def ae_users_connected_to(
    conn: AsyncConnection, tenant_id: str, sf_user_ids: Iterable[str]
) -> dict[str, int]:
    rows = await (await driver(conn)).fetch(_CONNECTED, tenant_id, array_of(sf_user_ids))
    return {row[0]: row[1] for row in rows}


_UNLINKED = "email = ANY($3::text[]) AND sf_record_id IS NULL AND prospect_id IS NOT NULL"
_STATE = ", ".join(name for name, _ in RECORD_CHANGE if name != "updated_at")  # RecordState's
_RECORDS_OF_SF = (
    f"SELECT {_STATE}, created_at FROM records "
    # The ids first, each condition on its own index; then their rows by primary key, the
    # conditions checked again once locked (a row changed meanwhile must still meet them).
    "WHERE id = ANY(ARRAY("
    "SELECT id FROM records WHERE tenant_id = $1 AND sf_record_id = ANY($2::varchar[]) "
    f"UNION ALL SELECT id FROM records WHERE tenant_id = $1 AND {_UNLINKED})) "
    f"AND (sf_record_id = ANY($2::varchar[]) OR ({_UNLINKED})) "
    "ORDER BY id FOR UPDATE"
)


async def records_of_sf_events(
    conn: AsyncConnection, tenant_id: str, sf_record_ids: set[str], emails: set[str]
) -> list[Any]:
    """The tenant's records of the SF ids, and those of the emails with a prospect and no SF
    record yet, locked in id order (rows indexed by column name, `created_at` included)."""
    rows: list[Any] = await (await driver(conn)).fetch(
        _RECORDS_OF_SF, tenant_id, sorted(sf_record_ids), sorted(emails)
    )
    return rows


# The columns `SlaTimer` is made of, by the same names.
_TIMER = ", ".join(f.name for f in dataclasses.fields(SlaTimer))
# The open states as the partial index of open timers names them, so that the index serves.
_OPEN_TIMERS = (
    f"SELECT {_TIMER} FROM sla_timers "
    f"WHERE tenant_id = $1 AND record_id = ANY($2::bigint[]) AND {SLA_OPEN}"
)


async def open_timer_rows(
    conn: AsyncConnection, tenant_id: str, record_ids: Iterable[int]
) -> list[Any]:
    """The open SLA timers of the records (rows indexed by `SlaTimer`'s field names)."""
    rows: list[Any] = await (await driver(conn)).fetch(
        _OPEN_TIMERS, tenant_id, array_of(record_ids)
    )
    return rows


def array_of(values: Iterable[Any]) -> list[Any]:
    """An `= ANY` array parameter: each value once, in order, NULL left out (it equals
    nothing, in `= ANY` as in IN)."""
    return sorted({v for v in values if v is not None})
