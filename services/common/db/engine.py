from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

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


def make_engine(
    database_url: str,
    *,
    pool_size: int = 5,
    connect_timeout: float = 5.0,
    command_timeout: float = 30.0,
    statement_timeout_ms: int = 20000,
) -> AsyncEngine:
    """An engine whose every Postgres connection has a connect timeout, a client-side command
    timeout (a black-holed server is given up on) and a server-side statement_timeout."""
    if database_url.startswith("sqlite"):
        engine = create_async_engine(database_url, **JSON_CODEC)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    connect_args: dict[str, Any] = {
        "timeout": connect_timeout,
        "command_timeout": command_timeout,
        "server_settings": {"statement_timeout": str(statement_timeout_ms)},
    }
    return create_async_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_timeout=connect_timeout + command_timeout,
        connect_args=connect_args,
        **JSON_CODEC,
    )


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
