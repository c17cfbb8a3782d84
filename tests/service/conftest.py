"""The service tier: the real roles (`services.bootstrap.running`) on a SQLite store, the
in-process broker and the SF and AE simulators served over loopback HTTP, as the embedded
default runs them. Nothing here reaches Postgres or RabbitMQ.

The store is migrated by Alembic and seeded with the demo tenant once per run; each test
gets a copy of that file.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.admin.tenant_file import load_tenant
from services.bootstrap import ROLES, Running, running
from services.common.db.engine import make_engine, migrate
from services.common.runtime import Runtime, build_runtime
from services.common.settings import Settings
from services.demo.replay import demo_tenant
from tests.endpoints import ACME_ENDPOINT_KEY


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture(scope="session")
def seeded_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite store at the head revision holding the acme tenant of tenant.json."""
    path = tmp_path_factory.mktemp("seeded") / "ownersync.db"
    migrate(sqlite_url(path))

    async def seed() -> None:
        engine = make_engine(sqlite_url(path))
        async with engine.begin() as conn:
            await load_tenant(conn, demo_tenant())
        await engine.dispose()  # checkpoints the WAL: the file alone is the whole store

    asyncio.run(seed())
    return path


@pytest.fixture
def store_url(seeded_store: Path, tmp_path: Path) -> str:
    """This test's own copy of the seeded store."""
    copy = tmp_path / "ownersync.db"
    shutil.copyfile(seeded_store, copy)
    return sqlite_url(copy)


@pytest.fixture
def service_settings(store_url: str) -> Settings:
    return Settings(
        database_url=store_url,
        amqp_url=None,
        delivery_limit=3,
        batch_wait_ms=5,
        relay_interval_ms=20,
        relay_coalesce_ms=0,
        ae_base_url=None,
        sf_base_url=None,
        use_simulators=True,
        port=0,  # any free port, held from the start: test workers run side by side
        metrics_port=0,
    )


@pytest.fixture
async def runtime(service_settings: Settings) -> AsyncIterator[Runtime]:
    """The store and the in-process broker alone, for tests that drive a role by hand."""
    built = build_runtime(service_settings)
    yield built
    await built.close()


@pytest.fixture
async def stack(service_settings: Settings) -> AsyncIterator[Running]:
    """Receiver, assigner, syncer and relay in this process, the SF and AE simulators over
    HTTP; the SF simulator's outbound messages come back to the receiver with acme's key."""
    stop = asyncio.Event()
    keys = {"acme": ACME_ENDPOINT_KEY} if ACME_ENDPOINT_KEY else {}
    async with running(service_settings, ROLES, stop, sf_endpoint_keys=keys) as live:
        yield live
