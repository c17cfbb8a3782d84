"""`python -m bench --preload`: the tables filled through COPY with rows shaped like the roles',
continuing a smaller preload, ids taken from each table's sequence, inbox entries inside the
retention (the pruner leaves them)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from bench import preload
from bench.db import asyncpg_url
from services.common.settings import Settings

pytestmark = pytest.mark.integration

OWNERS = preload.Owners("acme", ("0055g0000Zti3ElAQI", "0055g0000M6fuVCAQY"), (101, 102))


async def test_preload_fills_every_table_and_a_second_level_continues_the_first(
    base_settings: Settings, clean: None
) -> None:
    url = base_settings.database_url

    await preload.preload(url, OWNERS, 0, 3000)
    await preload.preload(url, OWNERS, 3000, 2000)

    conn = await asyncpg.connect(asyncpg_url(url))
    try:
        for table in ("records", "inbox", "audit_log", "outbox"):
            assert await conn.fetchval(f"select count(*) from {table}") == 5000, table
        assert await conn.fetchval("select count(distinct sf_record_id) from records") == 5000
        # Every audit and outbox row belongs to a preloaded record (the foreign keys held).
        orphans = await conn.fetchval(
            "select count(*) from audit_log a left join records r on r.id = a.record_id "
            "where r.id is null"
        )
        assert orphans == 0
        assert await conn.fetchval("select count(*) from outbox where status = 'pending'") == 0
        # Inside the retention: the pruner would otherwise delete them during the measurement.
        now = datetime.now(UTC)
        for query in (
            "select min(processed_at), max(processed_at) from inbox",
            "select min(done_at), max(done_at) from outbox",
        ):
            oldest, newest = await conn.fetchrow(query)
            assert now - timedelta(hours=48) < oldest and newest < now - timedelta(minutes=30)
        # The roles' next rows get ids past the preload's: the sequences moved.
        top = await conn.fetchval("select max(id) from records")
        fresh = await conn.fetchval(
            "insert into records (tenant_id, created_at, updated_at) values ('acme', now(), now()) "
            "returning id"
        )
        assert fresh > top
    finally:
        await conn.close()
