from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

MIGRATIONS_DIR = Path(__file__).resolve().parents[3] / "migrations"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the receiver read while a worker writes; foreign keys are off by default in SQLite.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _json_text(value: Any) -> str:
    # The JSON columns (audit before/after, outbox payloads) are written for every decision.
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


JSON_CODEC: dict[str, Any] = {"json_serializer": _json_text, "json_deserializer": orjson.loads}


# A pooled connection returned less than this long ago is handed out without a ping.
PING_IDLE_S = 1.0
_RETURNED_AT = "ownersync_returned_at"


def _ping_when_idle(engine: AsyncEngine, idle: float) -> None:
    """Ping a pooled connection before it is handed out, as `pool_pre_ping` does, unless it
    was opened or returned less than `idle` seconds ago: then it just worked, and the ping
    (BEGIN, a query, ROLLBACK on asyncpg: three round trips) would be most of the cost of a
    short read. A connection that fails its ping is replaced; one that dies right after its
    last use fails that use, and SQLAlchemy then replaces every pooled connection."""
    sync = engine.sync_engine
    dialect = sync.dialect

    def stamp(_dbapi_connection: Any, record: Any, *_: Any) -> None:
        record.info[_RETURNED_AT] = time.monotonic()

    def ping(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        returned = record.info.get(_RETURNED_AT)
        if returned is not None and time.monotonic() - returned < idle:
            return
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError(f"pooled connection failed its ping: {exc!r}") from exc

    event.listen(sync, "connect", stamp)
    event.listen(sync, "checkin", stamp)
    event.listen(sync, "checkout", ping)


def make_engine(
    database_url: str,
    *,
    pool_size: int = 5,
    connect_timeout: float = 5.0,
    command_timeout: float = 30.0,
    statement_timeout_ms: int = 20000,
    ping_idle: float = PING_IDLE_S,
) -> AsyncEngine:
    """An engine whose every Postgres connection has a connect timeout, a client-side command
    timeout (a black-holed server is given up on), a server-side statement_timeout and plans
    made for each statement's values, and is pinged before use when it sat in the pool longer
    than `ping_idle` seconds."""
    if database_url.startswith("sqlite"):
        engine = create_async_engine(database_url, **JSON_CODEC)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    connect_args: dict[str, Any] = {
        "timeout": connect_timeout,
        "command_timeout": command_timeout,
        "server_settings": {
            "statement_timeout": str(statement_timeout_ms),
            # asyncpg prepares every statement, and after 5 runs Postgres may keep one generic
            # plan for it. Chosen while a table is small (a fresh tenant, a new install), that
            # plan is a sequential scan that stays until the next ANALYZE: the bench saw the
            # syncer's inbox look-up at 21% of its time in the first seconds. The roles run a
            # few statements per batch, so planning each one for its own values costs little.
            "plan_cache_mode": "force_custom_plan",
        },
    }
    engine = create_async_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=connect_timeout + command_timeout,
        connect_args=connect_args,
        **JSON_CODEC,
    )
    _ping_when_idle(engine, ping_idle)
    return engine


@asynccontextmanager
async def single_statements(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection for statements that are each a transaction of their own: on Postgres in
    autocommit, one round trip per statement where BEGIN and COMMIT (or ROLLBACK) made three."""
    async with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execution_options(isolation_level="AUTOCOMMIT")
        yield conn


def alembic_config(database_url: str) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def migrate(database_url: str, revision: str = "head") -> None:
    """Apply the Alembic migrations (synchronously; call it before starting the loop)."""
    from alembic import command

    command.upgrade(alembic_config(database_url), revision)
