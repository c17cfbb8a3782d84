"""What every `ownersync` command shares: settings, one transaction per command, refusals shown
the same way, tables, paging through every page, the broker's dead letters."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncConnection

from services.admin.errors import AdminError
from services.admin.pagination import Page
from services.common.broker.dead_letters import DeadLetterStore, dead_letter_store
from services.common.broker.memory import MemoryBroker
from services.common.db.engine import make_engine, migrate
from services.common.logs import configure_logging
from services.common.runtime import build_broker
from services.common.settings import Settings
from services.common.tracing import configure_tracing

console = Console(emoji=False, highlight=False)
err = Console(stderr=True)
T = TypeVar("T")
Item = TypeVar("Item")
Input = TypeVar("Input", bound=BaseModel)
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]

TenantOpt = Annotated[
    str, typer.Option("--tenant", "-t", envvar="OWNERSYNC_TENANT", help="the tenant id")
]


def load_settings(
    host: str | None = None, port: int | None = None, *, log_level: LogLevel | None = None
) -> Settings:
    """The settings from the environment, `host` and `port` given here winning; logging at
    `log_level`, else at the configured level."""
    try:
        settings = Settings()
    except ValidationError as exc:
        err.print(f"[red]invalid configuration:[/red]\n{exc}")
        raise typer.Exit(2) from None
    updates = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    settings = settings.model_copy(update=updates)
    configure_logging(log_level or settings.log_level, settings.log_format)
    configure_tracing()
    return settings


def migrate_embedded(settings: Settings) -> None:
    if settings.is_sqlite:
        migrate(settings.database_url)  # the embedded store migrates itself


def refused(exc: AdminError) -> typer.Exit:
    """Show an admin refusal as the API names it (code, message, details); exit 1."""
    err.print(f"[red]{exc.code}[/red]: {exc.message}")
    if exc.details:
        err.print(json.dumps(exc.details, default=str))
    return typer.Exit(1)


def in_transaction(settings: Settings, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """Run `work` in one transaction: committed if it returns, rolled back if it raises."""

    async def main() -> T:
        engine = make_engine(settings.database_url)
        try:
            async with engine.begin() as conn:
                return await work(conn)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(main())
    except AdminError as exc:
        raise refused(exc) from None


def run_admin(work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """An operator command's `work`, in one transaction on the configured store."""
    settings = load_settings(log_level="WARNING")
    migrate_embedded(settings)
    return in_transaction(settings, work)


def run_on_dead_letters(work: Callable[[DeadLetterStore], Awaitable[T]]) -> T:
    """`work` on the configured broker's dead letters (RabbitMQ only: see the refusal)."""
    settings = load_settings(log_level="WARNING")
    broker = build_broker(settings)
    if isinstance(broker, MemoryBroker):
        err.print(
            "[red]the in-process broker keeps its dead letters inside `ownersync run`[/red]: set "
            "OWNERSYNC_AMQP_URL, or use the API of the running process (/v1/.../dead-letters)"
        )
        raise typer.Exit(2)

    async def main() -> T:
        try:
            return await work(dead_letter_store(broker))
        finally:
            await broker.close()

    try:
        return asyncio.run(main())
    except AdminError as exc:
        raise refused(exc) from None


def parse_input(model: type[Input], values: dict[str, Any]) -> Input:
    """Build an API input model from CLI values (camelCase names, None left out)."""
    try:
        return model.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        err.print(f"[red]invalid input[/red]\n{exc}")
        raise typer.Exit(2) from None


def ae_user_id(value: str) -> int:
    if not value.isdigit():
        err.print(f"[red]an AE user id is a number, not {value!r}[/red]")
        raise typer.Exit(2)
    return int(value)


def now() -> datetime:
    return datetime.now(UTC)


async def all_pages(fetch: Callable[[str | None], Awaitable[Page[Item]]]) -> list[Item]:
    items: list[Item] = []
    cursor: str | None = None
    while True:
        page = await fetch(cursor)
        items += page.items
        cursor = page.next_cursor
        if cursor is None:
            return items


def table(title: str, columns: Iterable[str], rows: Iterable[Iterable[Any]]) -> Table:
    shown = Table(title=title)
    for column in columns:
        shown.add_column(column)
    for row in rows:
        shown.add_row(*("" if v is None else str(v) for v in row))
    return shown


def ae_owner(after: dict[str, Any] | None) -> str:
    """The AE owner an audit row's or a change's owners give, in words."""
    after = after or {}
    if after.get("ae_assigned_user_id") is not None:
        return f"user {after['ae_assigned_user_id']}"
    if after.get("ae_assigned_queue_id") is not None:
        return f"queue {after['ae_assigned_queue_id']}"
    return "unassigned"
