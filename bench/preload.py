"""`--preload N`: the tables as a long-running tenant has them, so that cost vs size shows.

Fills `records`, `inbox`, `audit_log` and `outbox` (as settled rows) with N rows each, shaped
like the rows the roles write (18-character SF ids, uuid-shaped event ids, owner JSON, effect
payloads), then VACUUM ANALYZEs them as autovacuum would have. Inbox entries and settled outbox
rows are spread over the 40 hours before the run: inside the 48 h retention, as the pruner
leaves them (older ones it would be deleting during the measurement); records and audit rows
over the 30 days before.

The rows are generated inside Postgres (`INSERT ... SELECT FROM generate_series`, a million
rows a statement, two tables at a time on their own connections): nothing crosses the wire,
so 10 million rows each take minutes, not the better part of an hour. The indexes and the
constraints that need an index or a per-row check (primary keys, unique and foreign keys) are
dropped first and built again once the rows are in, as a bulk load does: one sort per index
instead of a B-tree insert per row. They are built
from their own definitions, read from the catalog before the drop, and the schema afterwards
is compared with the one before: a difference fails the preload. The outbox's partial indexes
stay (see below). The roles are running but idle meanwhile (the bench drains them first).

Ids are taken from each table's own sequence (advanced past the range first), so rows the roles
write meanwhile never collide with the preload's.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from bench.db import asyncpg_url
from services.common.messages import EVENT_NAMESPACE, with_serial
from services.common.sfid import serial, to18

TABLES = ("records", "inbox", "audit_log", "outbox")
STATEMENT_ROWS = 1_000_000  # rows per INSERT: large, yet each commits and shows progress
WORKERS = 2  # tables loaded (and indexes built) at once: the development machine's cores
MAINTENANCE_WORK_MEM = "512MB"  # per index build: sorts in memory, not in temporary files
INBOX_SPAN = timedelta(hours=40)
HISTORY_SPAN = timedelta(days=30)
PROSPECT_BASE = 10**12  # far above the ids the AE simulator hands out
RULES = ("S1", "S5", "S4", "S7", "S2")
# Bytes on disk per row of each table, all four together, indexes included (1.65 KB measured at
# 200k and 1M rows), times 1.25 for the WAL and the index builds' sorts meanwhile.
DISK_BYTES_PER_ROW = 1700 * 1.25

RECORD_PREFIX, NOTIFICATION_PREFIX = "00Q", "04l"  # a Lead's and an outbound message's


def sf_id(prefix: str, i: int) -> str:
    """Preloaded row i's SF id: 3 + 3 + 9 characters (never one the workload generates) and
    the suffix of their case, so that it is already in the 18-character form the roles store
    and look records up by."""
    return to18(f"{prefix}pre{i:09d}")


def event_id(tenant: str, i: int) -> str:
    """Preloaded notification i's event id: shaped as the roles shape it (`event_id_for`: the
    notification's serial, then bits of a hash), with the uuid3 (md5, which Postgres has) of
    the name for the hash."""
    notification = sf_id(NOTIFICATION_PREFIX, i)
    number = serial(notification)
    assert number is not None
    return str(with_serial(number, uuid.uuid3(EVENT_NAMESPACE, f"{tenant}/sf/{notification}")))


# The serial (`services.common.sfid.serial`) of the preloaded id i: its 9 decimal digits read
# in base 62.
_SERIAL_SQL = " + ".join(
    f"substr(lpad(i::text, 9, '0'), {k + 1}, 1)::bigint * {62 ** (8 - k)}" for k in range(9)
)


def _sf_id_sql(prefix: str) -> str:
    # The suffix encodes which of the 15 characters are upper case: the prefix's alone here.
    return f"'{prefix}pre' || lpad(i::text, 9, '0') || '{sf_id(prefix, 0)[15:]}'"


# Session-local SQL functions (pg_temp: gone with the connection, never in the schema), inlined
# into the INSERTs. The JSON is written as text, as Python's json.dumps writes it (and faster
# than json_build_object).
FUNCTIONS = f"""
create function pg_temp.record_sf_id(i bigint) returns text
  language sql immutable as $$ select {_sf_id_sql(RECORD_PREFIX)} $$;
create function pg_temp.notification_id(i bigint) returns text
  language sql immutable as $$ select {_sf_id_sql(NOTIFICATION_PREFIX)} $$;
create function pg_temp.serial(i bigint) returns bigint
  language sql immutable as $$ select {_SERIAL_SQL} $$;
create function pg_temp.event_id(n bigint, h text) returns text
  language sql immutable as $$
    select substr(a, 1, 8) || '-' || substr(a, 9, 4) || '-8'
      || lpad(to_hex(((n & 63) << 6) | (('x' || substr(h, 15, 2))::bit(8)::int & 63)), 3, '0')
      || '-' || substr('89ab', ('x' || substr(h, 17, 1))::bit(4)::int % 4 + 1, 1)
      || substr(h, 18, 3) || '-' || substr(h, 21, 12)
    from (select lpad(to_hex(n >> 6), 12, '0') as a) as x $$;
create function pg_temp.owner(i bigint, sf_id text, ae_user bigint, sf_owner text,
                              at timestamptz) returns json
  language sql stable as $$
    select ('{{"prospect_id": ' || {PROSPECT_BASE} + i || ', "sf_record_id": "' || sf_id
      || '", "ae_assigned_user_id": ' || ae_user || ', "ae_assigned_queue_id": null, '
      || '"sf_owner_id": "' || sf_owner || '", "last_modstamp": ' || to_json(at) || '}}')::json
  $$;
create function pg_temp.upsert(ae_user bigint, sf_id text) returns json
  language sql stable as $$
    select ('{{"assigned_user_id": ' || ae_user || ', "assigned_queue_id": null, "email": "'
      || lower(sf_id) || '@preload.example.com", "salesforce_id": "' || sf_id
      || '", "version": 1}}')::json $$;
"""

# Parameters of every INSERT: $1 tenant, $2 connected SF users, $3 their AE users, $4 the first
# row, $5 how many, $6 the preload's size once done (spreads the timestamps), $7 its end, $8 the
# first id of the table's range (row i gets $8 + i), $9 the first record id (rows of audit_log
# and outbox belong to record $9 + i). Row i's owner is the k-th connected user.
_ROWS = """
from (select $1::text as tenant, $2::text[] as sf_users, $3::bigint[] as ae_users,
             $8::bigint as first_id, $9::bigint as first_record) as p,
     generate_series($4::bigint, $4::bigint + $5 - 1) as i,
     lateral (select 1 + i % cardinality(p.sf_users) as k,
                     $7::timestamptz - '{span}'::interval
                       + '{span}'::interval * (i::float8 / $6::bigint) as at) as g
"""
# The md5 of the notification's event name (the name of its uuid5 in the roles): a subquery of
# its own (OFFSET 0 keeps it one), so that event_id() is inlined on a column, not on md5(...).
_EVENT = f"""
cross join lateral (
  select md5(decode('{EVENT_NAMESPACE.hex}', 'hex')
             || convert_to(p.tenant || '/sf/' || pg_temp.notification_id(i), 'UTF8')) as event_md5
  offset 0) as e
"""
_HISTORY = _ROWS.format(span=f"{HISTORY_SPAN.days} days")
_RECENT = _ROWS.format(span=f"{INBOX_SPAN.total_seconds():.0f} seconds")
_BEFORE = "1 + k % cardinality(p.sf_users)"  # the previous owner: the next connected user
INSERTS = {
    "records": f"""
insert into records (id, tenant_id, prospect_id, sf_record_id, sf_object, email,
                     ae_assigned_user_id, sf_owner_id, last_modstamp, ae_modstamp,
                     created_at, updated_at)
select p.first_id + i, p.tenant, {PROSPECT_BASE} + i, pg_temp.record_sf_id(i), 'Lead',
       lower(pg_temp.record_sf_id(i)) || '@preload.example.com', p.ae_users[k],
       p.sf_users[k], at, at, at, at
{_HISTORY}""",
    "inbox": f"""
insert into inbox (event_id, tenant_id, type, source_id, processed_at)
select pg_temp.event_id(pg_temp.serial(i), event_md5), p.tenant,
       case when i % 3 = 0 then 'sf.record.created' else 'sf.record.reassigned' end,
       pg_temp.notification_id(i), at
{_RECENT}{_EVENT}""",
    "audit_log": f"""
insert into audit_log (id, tenant_id, record_id, event_id, source_id, event_type, rule,
                       before, after, reason, created_at)
select p.first_id + i, p.tenant, p.first_record + i,
       pg_temp.event_id(pg_temp.serial(i), event_md5), pg_temp.notification_id(i),
       'sf.record.reassigned', (array{list(RULES)!r})[1 + i % {len(RULES)}],
       pg_temp.owner(i, pg_temp.record_sf_id(i), p.ae_users[{_BEFORE}],
                     p.sf_users[{_BEFORE}], at),
       pg_temp.owner(i, pg_temp.record_sf_id(i), p.ae_users[k], p.sf_users[k], at),
       format('SF owner %s is connected to AE user %s: prospect reassigned',
              p.sf_users[k], p.ae_users[k]),
       at
{_HISTORY}{_EVENT}""",
    "outbox": f"""
insert into outbox (id, tenant_id, record_id, target, kind, payload, event_id, status,
                    attempts, next_attempt_at, created_at, done_at)
select p.first_id + i, p.tenant, p.first_record + i, 'ae', 'ae.prospect.upsert',
       pg_temp.upsert(p.ae_users[k], pg_temp.record_sf_id(i)),
       pg_temp.event_id(pg_temp.serial(i), event_md5),
       case when i % 4 = 0 then 'superseded' else 'done' end, 1, at, at,
       at + interval '350 milliseconds'
{_RECENT}{_EVENT}""",
}


@dataclass(frozen=True)
class Owners:
    """The tenant's connected SF users and their AE users, as the preload's owners."""

    tenant: str
    sf_users: tuple[str, ...]
    ae_users: tuple[int, ...]


class PreloadRefused(RuntimeError):
    """The preload would not fit on the database server's disk."""


@dataclass(frozen=True)
class Schema:
    """What the preload drops and builds again: the indexes and constraints of its tables and
    the foreign keys into them, as the catalog defines them."""

    indexes: tuple[tuple[str, str, str, bool, bool], ...]  # table, name, def, partial, valid
    constraints: tuple[tuple[str, str, str, str, bool], ...]  # table, name, type, def, validated


async def schema(conn: asyncpg.Connection) -> Schema:
    """The preloaded tables' indexes and constraints (foreign keys into them included)."""
    indexes = await conn.fetch(
        "select t.relname, i.relname, pg_get_indexdef(x.indexrelid), x.indpred is not null, "
        "x.indisvalid and x.indisready "
        "from pg_index x join pg_class i on i.oid = x.indexrelid "
        "join pg_class t on t.oid = x.indrelid "
        "where t.relnamespace = 'public'::regnamespace and t.relname = any($1::text[]) "
        "order by 1, 2",
        list(TABLES),
    )
    constraints = await conn.fetch(
        "select c.conrelid::regclass::text, c.conname, c.contype::text, "
        "pg_get_constraintdef(c.oid), c.convalidated "
        "from pg_constraint c "
        "where c.connamespace = 'public'::regnamespace and c.contype in ('p', 'u', 'f', 'c') "
        "and (c.conrelid::regclass::text = any($1::text[]) "
        "or c.confrelid::regclass::text = any($1::text[])) "
        "order by 1, 2",
        list(TABLES),
    )
    return Schema(
        tuple((r[0], r[1], r[2], r[3], r[4]) for r in indexes),
        tuple((r[0], r[1], r[2], r[3], r[4]) for r in constraints),
    )


def _dropped(s: Schema) -> tuple[list[tuple[str, str, str, str]], list[tuple[str, str, str]]]:
    """The constraints (table, name, type, definition) and plain indexes (table, name,
    definition) the load goes faster without: keys and foreign keys, every index but those
    kept. Check constraints stay (cheap per row, no index), and so do the partial indexes:
    their predicates do not survive a round trip through pg_get_indexdef (`status IN (...)`
    comes back with its casts moved, which the schema check rightly calls a difference), and
    they cost the load little: no preloaded row is unsettled, and the settled rows arrive in
    done_at order (appended at the index's right edge). The relay's claims and outbox gauge
    also read through the unsettled one every 200 ms while the load runs."""
    constraints = [(t, n, k, d) for t, n, k, d, _ in s.constraints if k in ("p", "u", "f")]
    backed = {n for _, n, k, _ in constraints if k in ("p", "u")}
    indexes = [(t, n, d) for t, n, d, partial, _ in s.indexes if n not in backed and not partial]
    return constraints, indexes


def _difference(before: Schema, after: Schema) -> str:
    old = {*before.indexes, *before.constraints}
    new = {*after.indexes, *after.constraints}
    return f"lost {sorted(old - new, key=str)}, gained {sorted(new - old, key=str)}"


async def _connect(url: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(asyncpg_url(url))
    await conn.execute("set synchronous_commit = off")
    await conn.execute(f"set maintenance_work_mem = '{MAINTENANCE_WORK_MEM}'")
    return conn


async def _at_most(workers: int, jobs: list[Callable[[], Awaitable[None]]]) -> None:
    gate = asyncio.Semaphore(workers)

    async def one(job: Callable[[], Awaitable[None]]) -> None:
        async with gate:
            await job()

    await asyncio.gather(*(one(j) for j in jobs))


async def _reserve(conn: asyncpg.Connection, table: str, count: int) -> int:
    """The first of `count` ids taken from the table's sequence (which moves past them)."""
    seq = await conn.fetchval("select pg_get_serial_sequence($1, 'id')", table)
    last = await conn.fetchval(
        "select setval($1::regclass, nextval($1::regclass) + $2)", seq, count
    )
    return int(last) - count + 1


async def _drop(conn: asyncpg.Connection, s: Schema) -> None:
    constraints, indexes = _dropped(s)
    async with conn.transaction():
        for table, name, _, _ in sorted(constraints, key=lambda c: c[2] != "f"):
            await conn.execute(f'alter table {table} drop constraint "{name}"')
        for _, name, _ in indexes:
            await conn.execute(f'drop index "{name}"')


async def _rebuild(url: str, s: Schema) -> None:
    """Every dropped index and key built again from its definition: the tables' own keys and
    indexes (two tables at a time), then the foreign keys, which need the keys. One that
    cannot be built does not stop the others; what failed is raised at the end."""
    constraints, indexes = _dropped(s)
    failed: list[str] = []

    async def build(conn: asyncpg.Connection, statement: str) -> None:
        try:
            await conn.execute(statement)
        except asyncpg.PostgresError as exc:
            failed.append(f"{statement}: {exc}")

    def table_job(table: str) -> Callable[[], Awaitable[None]]:
        async def job() -> None:
            conn = await _connect(url)
            try:
                for t, name, kind, definition in constraints:
                    if t == table and kind != "f":
                        await build(conn, f'alter table {t} add constraint "{name}" {definition}')
                for t, _, definition in indexes:
                    if t == table:
                        await build(conn, definition)
            finally:
                await conn.close()

        return job

    await _at_most(WORKERS, [table_job(t) for t in TABLES])
    conn = await _connect(url)
    try:
        for table, name, kind, definition in constraints:
            if kind == "f":
                await build(conn, f'alter table {table} add constraint "{name}" {definition}')
    finally:
        await conn.close()
    if failed:
        raise RuntimeError("the preload could not build again: " + "; ".join(failed))


async def _check_range(conn: asyncpg.Connection, tenant: str, start: int, count: int) -> None:
    """With the keys dropped nothing would refuse a duplicate until they are built again (and
    then fail to build): an unknown tenant or rows already loaded are refused up front."""
    if not await conn.fetchval("select exists (select 1 from tenants where id = $1)", tenant):
        raise ValueError(f"preload: no tenant {tenant!r}")
    ends = (start, start + count - 1)
    ids = [sf_id(RECORD_PREFIX, i) for i in ends]
    events = [event_id(tenant, i) for i in ends]
    if await conn.fetchval(
        "select exists (select 1 from records where tenant_id = $1 and sf_record_id = any($2)) "
        "or exists (select 1 from inbox where event_id = any($3))",
        tenant,
        ids,
        events,
    ):
        raise ValueError(f"preload: rows {start:,} .. {start + count - 1:,} are already loaded")


async def _fill(url: str, table: str, args: tuple[Any, ...], start: int, count: int) -> None:
    conn = await _connect(url)
    try:
        await conn.execute(FUNCTIONS)
        for first in range(start, start + count, STATEMENT_ROWS):
            rows = min(STATEMENT_ROWS, start + count - first)
            await conn.execute(INSERTS[table], *args[:3], first, rows, *args[3:])
    finally:
        await conn.close()


async def preload(url: str, owners: Owners, start: int, count: int) -> dict[str, float | None]:
    """Rows `start` .. `start + count - 1` of each table (a bigger preload continues a smaller
    one); returns the seconds spent inserting, building the indexes again, vacuuming and
    analyzing, and checkpointing."""
    if start + count > 10**9:
        raise ValueError("at most 999,999,999 rows: the preload's SF ids have 9 digits")
    n, o = start + count, owners  # n, the preload's size once done, spreads the timestamps
    end = datetime.now(UTC) - timedelta(hours=1)
    conn = await _connect(url)
    try:
        await _check_range(conn, o.tenant, start, count)
        before = await schema(conn)
        rec = await _reserve(conn, "records", count) - start
        aud = await _reserve(conn, "audit_log", count) - start
        out = await _reserve(conn, "outbox", count) - start
        common = (o.tenant, list(o.sf_users), list(o.ae_users))
        began = time.monotonic()
        await _drop(conn, before)
        try:
            await _at_most(
                WORKERS,  # the biggest first, so that the last one to finish is a small one
                [
                    lambda: _fill(url, "audit_log", (*common, n, end, aud, rec), start, count),
                    lambda: _fill(url, "outbox", (*common, n, end, out, rec), start, count),
                    lambda: _fill(url, "records", (*common, n, end, rec, rec), start, count),
                    lambda: _fill(url, "inbox", (*common, n, end, 0, 0), start, count),
                ],
            )
            loaded = time.monotonic()
        finally:
            await _rebuild(url, before)  # also after a failed load: the schema comes back
        indexed = time.monotonic()
        after = await schema(conn)
        if after != before:
            raise RuntimeError(f"the preload changed the schema: {_difference(before, after)}")
        await _at_most(WORKERS, [_vacuum(url, t) for t in TABLES])
        analyzed = time.monotonic()
        # A long-running database has long since flushed these rows: without a checkpoint here
        # the one the load's WAL made due writes and fsyncs gigabytes during the measured phase.
        checkpointed = await _checkpoint(conn)
    finally:
        await conn.close()
    return {
        "load_seconds": loaded - began,
        "index_seconds": indexed - loaded,
        "vacuum_analyze_seconds": analyzed - indexed,
        "checkpoint_seconds": checkpointed,
    }


async def _checkpoint(conn: asyncpg.Connection) -> float | None:
    """CHECKPOINT, and the seconds it took; None where the bench's user may not (it needs
    superuser or pg_checkpoint): then the phase pays for the flush, and the report says so."""
    began = time.monotonic()
    try:
        await conn.execute("checkpoint")
    except asyncpg.InsufficientPrivilegeError:
        return None
    return time.monotonic() - began


def _vacuum(url: str, table: str) -> Callable[[], Awaitable[None]]:
    async def job() -> None:
        conn = await _connect(url)
        try:
            await conn.execute(f"vacuum analyze {table}")
        finally:
            await conn.close()

    return job


async def data_directory(url: str) -> str | None:
    """The database server's data directory, if this machine has it (the development machine
    runs Postgres locally)."""
    conn = await asyncpg.connect(asyncpg_url(url))
    try:
        data: str | None = await conn.fetchval("select current_setting('data_directory', true)")
    finally:
        await conn.close()
    here = bool(data) and await asyncio.to_thread(os.path.isdir, data or "")
    return data if here else None


def check_disk(data: str | None, rows: int) -> str:
    """Refuses (PreloadRefused) a preload of `rows` more rows each that would not fit in the
    free space of the disk holding `data` (the server's data directory); else says what it
    estimated. None: the data directory is elsewhere, and nothing can be checked."""
    need = rows * DISK_BYTES_PER_ROW
    if data is None:
        return f"preload: about {need / 2**30:.1f} GB; the server's free disk was not checked"
    free = shutil.disk_usage(data).free
    said = (
        f"{rows:,} rows each need about {need / 2**30:.1f} GB on the database server's disk "
        f"({DISK_BYTES_PER_ROW:.0f} bytes a row, WAL and index sorts included); "
        f"{free / 2**30:.1f} GB free under {data}"
    )
    if need > free:
        raise PreloadRefused(f"preload refused: {said}. Free some space or preload fewer rows.")
    return f"preload: {said}"


async def table_sizes(url: str) -> dict[str, dict[str, float]]:
    conn = await asyncpg.connect(asyncpg_url(url))
    try:
        rows = await conn.fetch(
            "select relname, reltuples::float8, pg_total_relation_size(oid)::float8 / 1048576 "
            "from pg_class where relname = any($1::text[])",
            list(TABLES),
        )
    finally:
        await conn.close()
    return {r[0]: {"rows": r[1], "mb": r[2]} for r in rows}
