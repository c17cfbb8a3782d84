"""The Postgres engine's pool: a connection returned a moment ago is handed out again without a
ping (three round trips on asyncpg), one that sat idle is pinged, and one that died while idle is
replaced before anyone uses it; the relay's process keeps as many connections as it uses at
once; every statement is planned for its own values.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db.engine import make_engine
from services.common.runtime import POOL_SIZE, build_runtime, pool_size
from services.common.settings import Settings

pytestmark = pytest.mark.integration

IDLE = 0.3


@pytest.fixture
async def engine(migrated_database: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(migrated_database, pool_size=1, ping_idle=IDLE)
    yield engine
    await engine.dispose()


def count_pings(engine: AsyncEngine) -> list[Any]:
    pings: list[Any] = []
    dialect = engine.sync_engine.dialect
    ping = dialect.do_ping

    def counted(dbapi_connection: Any) -> bool:
        pings.append(dbapi_connection)
        return ping(dbapi_connection)

    dialect.do_ping = counted  # type: ignore[method-assign]
    return pings


async def backend(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        pid: int = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
    return pid


async def test_a_connection_returned_a_moment_ago_is_reused_without_a_ping(
    engine: AsyncEngine,
) -> None:
    pings = count_pings(engine)
    first = await backend(engine)
    assert [await backend(engine) for _ in range(5)] == [first] * 5
    assert pings == []

    await asyncio.sleep(IDLE + 0.1)
    assert await backend(engine) == first
    assert len(pings) == 1, "idle longer than ping_idle: pinged once, then used"


async def test_a_connection_that_died_while_idle_is_replaced_before_use(
    engine: AsyncEngine, migrated_database: str
) -> None:
    dead = await backend(engine)
    other = make_engine(migrated_database)
    async with other.connect() as conn:
        await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": dead})
    await other.dispose()
    await asyncio.sleep(IDLE + 0.1)

    assert await backend(engine) != dead  # the ping failed: a new connection, no error


async def test_the_relay_keeps_a_connection_for_each_thing_it_runs_at_once(
    base_settings: Settings,
) -> None:
    assert pool_size(base_settings, ["syncer"]) == POOL_SIZE
    relay = pool_size(base_settings, ["relay"])
    # claim, settle, gauges, two lanes' state reads, pruner; a slot taken and given back per
    # AE call in flight
    assert relay >= POOL_SIZE + 5 + 2 * base_settings.ae_max_concurrency
    runtime = build_runtime(base_settings, roles=["relay"])
    try:
        assert runtime.engine.pool.size() == relay  # type: ignore[attr-defined]
    finally:
        await runtime.close()


async def test_a_statement_run_many_times_is_planned_for_each_run_never_generically(
    engine: AsyncEngine,
) -> None:
    # A generic plan made while `inbox` is empty (a sequential scan) would outlive its growth.
    async with engine.connect() as conn:
        for n in range(8):
            ids = [f"no-such-event-{n}-{i}" for i in range(n + 1)]
            lookup = text("SELECT event_id FROM inbox WHERE event_id = ANY(:ids)")
            assert (await conn.execute(lookup, {"ids": ids})).all() == []
        plans = await conn.execute(
            text(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
                " WHERE statement LIKE 'SELECT event_id FROM inbox%'"
            )
        )
        assert plans.one() == (0, 8)
