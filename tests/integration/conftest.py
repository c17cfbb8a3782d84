from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator

import aio_pika
import asyncpg
import pytest
from sqlalchemy import make_url, text

from services.admin.tenant_file import load_tenant
from services.bootstrap import ROLES, Running, running
from services.common.broker.rabbit import RabbitBroker, purge_queues
from services.common.db.engine import make_engine, migrate
from services.common.db.tables import metadata
from services.common.runtime import build_runtime
from services.common.settings import Settings
from services.demo.replay import demo_tenant
from tests.endpoints import ACME_ENDPOINT_KEY

BASE_PG_URL = os.environ.get(
    "OWNERSYNC_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
# Under pytest-xdist every worker gets a database of its own next to the base one (`test_gw0`,
# ...), created on first use: the tier truncates and migrates its database, so workers cannot
# share one. Queues are already per process (RUN below).
WORKER = os.environ.get("PYTEST_XDIST_WORKER")
PG_URL = (
    make_url(BASE_PG_URL)
    .set(database=f"{make_url(BASE_PG_URL).database}_{WORKER}")
    .render_as_string(hide_password=False)
    if WORKER
    else BASE_PG_URL
)
AMQP_URL = os.environ.get("OWNERSYNC_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
RUN = uuid.uuid4().hex[:8]


async def _ensure_database() -> None:
    """Create this worker's database from the base one's server when it does not exist."""
    if PG_URL == BASE_PG_URL:
        return
    name = make_url(PG_URL).database
    admin = await asyncpg.connect(asyncpg_dsn(BASE_PG_URL))
    try:
        if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()


def asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _reset_schema() -> None:
    async def drop() -> None:
        await _ensure_database()
        engine = make_engine(PG_URL)
        async with engine.begin() as conn:
            await conn.execute(text("DROP SCHEMA public CASCADE"))
            await conn.execute(text("CREATE SCHEMA public"))
        await engine.dispose()

    asyncio.run(drop())
    migrate(PG_URL)


@pytest.fixture(scope="session")
def migrated_database() -> str:
    """The `test` database (or this xdist worker's), emptied and migrated once per run."""
    _reset_schema()
    return PG_URL


@pytest.fixture(scope="session")
def base_settings(migrated_database: str) -> Settings:
    return Settings(
        database_url=migrated_database,
        amqp_url=AMQP_URL,
        exchange=f"test-{RUN}.events",
        queue_prefix=f"test-{RUN}",
        delivery_limit=3,
        retry_delay_ms=500,
        retry_limit=3,
        metrics_port=0,
        batch_wait_ms=5,
        relay_interval_ms=20,
        relay_coalesce_ms=0,
        ae_base_url=None,
        sf_base_url=None,
        use_simulators=True,
    )


@pytest.fixture(scope="session")
async def topology(base_settings: Settings) -> AsyncIterator[None]:
    broker = build_runtime(base_settings).broker
    assert isinstance(broker, RabbitBroker)
    await broker.connect()
    yield
    await broker.delete_topology()
    await broker.close()


@pytest.fixture
async def clean(base_settings: Settings, topology: None) -> AsyncIterator[None]:
    """Every integration test starts with empty tables, empty queues and the acme tenant."""
    engine = make_engine(base_settings.database_url)
    names = ", ".join(t.name for t in reversed(metadata.sorted_tables))
    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        await load_tenant(conn, demo_tenant())
    await engine.dispose()
    runtime = build_runtime(base_settings)
    assert isinstance(runtime.broker, RabbitBroker)
    await purge_queues(runtime.broker)
    await runtime.close()
    yield


@pytest.fixture
async def stack(base_settings: Settings, clean: None) -> AsyncIterator[Running]:
    """Receiver, syncer and relay on the real Postgres and RabbitMQ, AE simulator over HTTP."""
    settings = base_settings.model_copy(update={"port": 0})
    stop = asyncio.Event()
    keys = {"acme": ACME_ENDPOINT_KEY} if ACME_ENDPOINT_KEY else {}
    async with running(settings, ROLES, stop, sf_endpoint_keys=keys) as live:
        yield live


async def take_dead_letters(
    settings: Settings, wanted: int, timeout: float = 30
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """`wanted` dead letters of the run, taken off the queue (TimeoutError if fewer come)."""
    connection = await aio_pika.connect(AMQP_URL)
    found: list[aio_pika.abc.AbstractIncomingMessage] = []
    async with connection, connection.channel() as channel:
        queue = await channel.declare_queue(f"{settings.queue_prefix}.dead-letters", passive=True)
        async with asyncio.timeout(timeout):
            while len(found) < wanted:
                message = await queue.get(fail=False)
                if message is None:
                    await asyncio.sleep(0.05)
                    continue
                await message.ack()
                found.append(message)
    return found
