"""`--preload N`: the tables as a long-running tenant has them, so that cost vs size shows.

Fills `records`, `inbox`, `audit_log` and `outbox` (as settled rows) with N rows each, shaped
like the rows the roles write (18-character SF ids, uuid5 event ids, owner JSON, effect
payloads), through COPY (asyncpg `copy_records_to_table`), then VACUUM ANALYZE them as
autovacuum would have. Inbox entries and settled outbox rows are spread over the 40 hours
before the run: inside the 48 h retention, as the pruner leaves them (older ones it would be
deleting during the measurement); records and audit rows over the 30 days before.

Ids are taken from each table's own sequence (advanced past the range first), so rows the roles
write meanwhile never collide with the preload's.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from bench.db import asyncpg_url
from services.common.messages import event_id_for

CHUNK = 20_000
INBOX_SPAN = timedelta(hours=40)
HISTORY_SPAN = timedelta(days=30)
PROSPECT_BASE = 10**12  # far above the ids the AE simulator hands out
RULES = ("S1", "S5", "S4", "S7", "S2")
REASON = "SF owner {owner} is connected to AE user {user}: prospect reassigned"

RECORD_COLUMNS = (
    "id",
    "tenant_id",
    "prospect_id",
    "sf_record_id",
    "sf_object",
    "email",
    "ae_assigned_user_id",
    "sf_owner_id",
    "last_modstamp",
    "ae_modstamp",
    "created_at",
    "updated_at",
)
INBOX_COLUMNS = ("event_id", "tenant_id", "type", "source_id", "processed_at")
AUDIT_COLUMNS = (
    "id",
    "tenant_id",
    "record_id",
    "event_id",
    "source_id",
    "event_type",
    "rule",
    "before",
    "after",
    "reason",
    "created_at",
)
OUTBOX_COLUMNS = (
    "id",
    "tenant_id",
    "record_id",
    "target",
    "kind",
    "payload",
    "event_id",
    "status",
    "attempts",
    "next_attempt_at",
    "created_at",
    "done_at",
)


@dataclass(frozen=True)
class Owners:
    """The tenant's connected SF users and their AE users, as the preload's owners."""

    tenant: str
    sf_users: tuple[str, ...]
    ae_users: tuple[int, ...]


def _sf_id(prefix: str, n: int) -> str:
    return f"{prefix}pre{n:09d}AAA"  # 3 + 3 + 9 + 3: never one the workload generates


def _at(end: datetime, span: timedelta, i: int, n: int) -> datetime:
    return end - span + span * (i / max(1, n))


def _records(
    o: Owners, first_id: int, start: int, count: int, n: int, end: datetime
) -> Iterator[tuple[Any, ...]]:
    for i in range(start, start + count):
        k = i % len(o.sf_users)
        at = _at(end, HISTORY_SPAN, i, n)
        sf_id = _sf_id("00Q", i)
        yield (
            first_id + i,
            o.tenant,
            PROSPECT_BASE + i,
            sf_id,
            "Lead",
            f"{sf_id.lower()}@preload.example.com",
            o.ae_users[k],
            o.sf_users[k],
            at,
            at,
            at,
            at,
        )


def _inbox(o: Owners, start: int, count: int, n: int, end: datetime) -> Iterator[tuple[Any, ...]]:
    for i in range(start, start + count):
        source = _sf_id("04l", i)
        yield (
            str(event_id_for(o.tenant, "sf", source)),
            o.tenant,
            "sf.record.reassigned" if i % 3 else "sf.record.created",
            source,
            _at(end, INBOX_SPAN, i, n),
        )


def _owner_json(i: int, o: Owners, k: int, at: datetime) -> str:
    return json.dumps(
        {
            "prospect_id": PROSPECT_BASE + i,
            "sf_record_id": _sf_id("00Q", i),
            "ae_assigned_user_id": o.ae_users[k],
            "ae_assigned_queue_id": None,
            "sf_owner_id": o.sf_users[k],
            "last_modstamp": at.isoformat(),
        }
    )


def _audit(
    o: Owners, first_id: int, first_record: int, start: int, count: int, n: int, end: datetime
) -> Iterator[tuple[Any, ...]]:
    for i in range(start, start + count):
        k = i % len(o.sf_users)
        at = _at(end, HISTORY_SPAN, i, n)
        source = _sf_id("04l", i)
        yield (
            first_id + i,
            o.tenant,
            first_record + i,
            str(event_id_for(o.tenant, "sf", source)),
            source,
            "sf.record.reassigned",
            RULES[i % len(RULES)],
            _owner_json(i, o, (k + 1) % len(o.sf_users), at),
            _owner_json(i, o, k, at),
            REASON.format(owner=o.sf_users[k], user=o.ae_users[k]),
            at,
        )


def _outbox(
    o: Owners, first_id: int, first_record: int, start: int, count: int, n: int, end: datetime
) -> Iterator[tuple[Any, ...]]:
    for i in range(start, start + count):
        k = i % len(o.sf_users)
        at = _at(end, INBOX_SPAN, i, n)
        sf_id = _sf_id("00Q", i)
        payload = {
            "assigned_user_id": o.ae_users[k],
            "assigned_queue_id": None,
            "email": f"{sf_id.lower()}@preload.example.com",
            "salesforce_id": sf_id,
            "version": 1,
        }
        yield (
            first_id + i,
            o.tenant,
            first_record + i,
            "ae",
            "ae.prospect.upsert",
            json.dumps(payload),
            str(event_id_for(o.tenant, "sf", _sf_id("04l", i))),
            "done" if i % 4 else "superseded",
            1,
            at,
            at,
            at + timedelta(milliseconds=350),
        )


async def _reserve(conn: asyncpg.Connection, table: str, count: int) -> int:
    """The first of `count` ids taken from the table's sequence (which moves past them)."""
    seq = await conn.fetchval("select pg_get_serial_sequence($1, 'id')", table)
    last = await conn.fetchval(
        "select setval($1::regclass, nextval($1::regclass) + $2)", seq, count
    )
    return int(last) - count + 1


async def _copy(
    url: str, table: str, columns: tuple[str, ...], chunks: Iterator[list[tuple[Any, ...]]]
) -> None:
    conn = await asyncpg.connect(asyncpg_url(url))
    try:
        await conn.execute("set synchronous_commit = off")
        for rows in chunks:
            await conn.copy_records_to_table(table, records=rows, columns=columns)
    finally:
        await conn.close()


Rows = Callable[[int, int], Iterator[tuple[Any, ...]]]  # (first row, how many) -> rows


def _chunks(rows: Rows, start: int, count: int) -> Iterator[list[tuple[Any, ...]]]:
    for offset in range(start, start + count, CHUNK):
        yield list(rows(offset, min(CHUNK, start + count - offset)))


async def preload(url: str, owners: Owners, start: int, count: int) -> dict[str, float]:
    """Rows `start` .. `start + count - 1` of each table (a bigger preload continues a smaller
    one); returns the seconds spent loading, and vacuuming and analyzing."""
    n, o = start + count, owners  # n, the preload's size once done, spreads the timestamps
    end = datetime.now(UTC) - timedelta(hours=1)
    conn = await asyncpg.connect(asyncpg_url(url))
    began = time.monotonic()
    try:
        rec = await _reserve(conn, "records", count) - start
        aud = await _reserve(conn, "audit_log", count) - start
        out = await _reserve(conn, "outbox", count) - start

        def copy(table: str, columns: tuple[str, ...], rows: Rows) -> Awaitable[None]:
            return _copy(url, table, columns, _chunks(rows, start, count))

        await asyncio.gather(  # records first: audit and outbox rows refer to them
            copy("records", RECORD_COLUMNS, lambda i, c: _records(o, rec, i, c, n, end)),
            copy("inbox", INBOX_COLUMNS, lambda i, c: _inbox(o, i, c, n, end)),
        )
        await asyncio.gather(
            copy("audit_log", AUDIT_COLUMNS, lambda i, c: _audit(o, aud, rec, i, c, n, end)),
            copy("outbox", OUTBOX_COLUMNS, lambda i, c: _outbox(o, out, rec, i, c, n, end)),
        )
        loaded = time.monotonic()
        await conn.execute("vacuum analyze records, inbox, audit_log, outbox")
        analyzed = time.monotonic()
    finally:
        await conn.close()
    return {"load_seconds": loaded - began, "vacuum_analyze_seconds": analyzed - loaded}


async def table_sizes(url: str) -> dict[str, dict[str, float]]:
    conn = await asyncpg.connect(asyncpg_url(url))
    try:
        rows = await conn.fetch(
            "select relname, reltuples::float8, pg_total_relation_size(oid)::float8 / 1048576 "
            "from pg_class where relname = any($1::text[])",
            ["records", "inbox", "audit_log", "outbox"],
        )
    finally:
        await conn.close()
    return {r[0]: {"rows": r[1], "mb": r[2]} for r in rows}
