"""The process runtime: settings with the engine and the broker they choose."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.broker.base import Broker
from services.common.broker.memory import MemoryBroker
from services.common.broker.rabbit import RabbitBroker
from services.common.db.engine import make_engine
from services.common.settings import Settings

T = TypeVar("T")


def build_broker(settings: Settings) -> Broker:
    if settings.amqp_url is None:
        return MemoryBroker(
            delivery_limit=settings.delivery_limit, retry_limit=settings.retry_limit
        )
    return RabbitBroker(
        settings.amqp_url,
        exchange=settings.exchange,
        queue_prefix=settings.queue_prefix,
        delivery_limit=settings.delivery_limit,
        prefetch=settings.prefetch,
        retry_delay=settings.retry_delay_ms / 1000,
        retry_limit=settings.retry_limit,
    )


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    broker: Broker
    extras: dict[str, Any] = field(default_factory=dict)

    async def close(self) -> None:
        await self.broker.close()
        await self.engine.dispose()


# Connections each process keeps in its pool for its workers, receiver and loops.
POOL_SIZE = 5


def pool_size(settings: Settings, roles: Iterable[str] = ()) -> int:
    """Connections the roles of one process keep open (opened as they are first needed).

    The relay uses many at once: its claim, its settle, the outbox gauges, the state reads of
    its AE and SF lanes, the pruner, and per AE call in flight a slot taken (`ae_slots`) and
    one given back. In a pool of 5 (+5 overflow) it ran past 5 about half the time, and every
    overflow connection was closed when returned and opened again (TLS and type introspection)
    a few milliseconds later; sized to what it runs at once, they are kept and reused."""
    size = POOL_SIZE
    if "relay" in roles:
        size += 5 + 2 * settings.ae_max_concurrency
    return size


def build_runtime(
    settings: Settings, *, broker: Broker | None = None, roles: Iterable[str] = ()
) -> Runtime:
    """The engine (its pool sized for `roles`, see `pool_size`) and the broker of `settings`."""
    engine = make_engine(
        settings.database_url,
        pool_size=pool_size(settings, roles),
        connect_timeout=settings.db_connect_timeout_s,
        command_timeout=settings.db_command_timeout_s,
        statement_timeout_ms=settings.db_statement_timeout_ms,
    )
    return Runtime(settings, engine, broker or build_broker(settings))


def freeze_startup_objects() -> int:
    """Move every object alive now (modules, classes, functions: what the imports made) to
    the collector's permanent generation; returns how many there are.

    A full collection traverses every tracked object, and a role has ~150,000 from its
    imports alone: each full collection paused the syncer's loop for 300-450 ms on the loaded
    2-core machine, in the middle of whatever batch was waiting, where the target is 100 ms
    from receipt to decision. Frozen, those objects are never traversed again (they live as
    long as the process anyway); what the role makes afterwards is collected as before."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def run_event_loop(main: Coroutine[Any, Any, T], *, uvloop: bool = True) -> T:
    """`asyncio.run(main)` on uvloop when it is installed and wanted: its loop and transports
    cost a fraction of asyncio's per message and per socket write. Else asyncio's own loop."""
    factory = _uvloop_factory() if uvloop else None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def _uvloop_factory() -> Any:
    try:
        import uvloop as module
    except ImportError:  # an optional speed-up (Linux and macOS wheels only)
        return None
    return module.new_event_loop
