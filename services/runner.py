"""Starts roles (receiver, syncer, relay, …) in this process, with the simulators when embedded."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

from sqlalchemy import select

from services.common.ae_client import AeClient
from services.common.bootstrap import Runtime, build_runtime
from services.common.broker.base import QueueRole
from services.common.broker.memory import MemoryBroker
from services.common.db.tables import ae_users
from services.common.settings import Settings
from services.common.worker import WorkerStats, run_worker
from services.receiver.app import create_app
from services.relay.relay import Relay
from services.relay.senders import ae_prospect_sender
from services.sim.ae import AeSimState, create_ae_app
from services.sim.server import serve_app
from services.syncer.worker import apply_sf_events

log = logging.getLogger("ownersync")

ROLES = ("receiver", "syncer", "relay")


class ConfigurationError(Exception):
    pass


@dataclass
class Running:
    """What a started set of roles exposes to its caller (the CLI, the demo, tests)."""

    runtime: Runtime
    receiver_url: str | None = None
    ae_url: str | None = None
    ae_sim: AeSimState | None = None
    relay: Relay | None = None
    stats: dict[str, WorkerStats] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


@contextlib.asynccontextmanager
async def running(
    settings: Settings,
    roles: Iterable[str],
    stop: asyncio.Event,
    *,
    runtime: Runtime | None = None,
) -> AsyncIterator[Running]:
    """Start `roles`; on exit, set `stop`, let workers finish their batch, close everything."""
    roles = set(roles)
    if unknown := roles - set(ROLES):
        raise ConfigurationError(f"unknown roles: {', '.join(sorted(unknown))}")
    async with contextlib.AsyncExitStack() as stack:
        if runtime is None:
            runtime = build_runtime(settings)
            stack.push_async_callback(runtime.close)
        if isinstance(runtime.broker, MemoryBroker) and roles != set(ROLES):
            raise ConfigurationError(
                "the in-process broker only links roles inside one process: use `ownersync run`, "
                "or set OWNERSYNC_AMQP_URL to run roles separately"
            )
        await runtime.broker.connect()
        live = Running(runtime)
        if "relay" in roles:
            await _start_relay(live, settings, stack, stop)
        if "syncer" in roles:
            live.stats["syncer"] = WorkerStats()
            live.tasks.append(
                asyncio.create_task(
                    run_worker(
                        runtime.broker,
                        QueueRole.SYNCER,
                        runtime.engine,
                        apply_sf_events,
                        batch_size=settings.batch_size,
                        batch_wait=settings.batch_wait_ms / 1000,
                        stop=stop,
                        stats=live.stats["syncer"],
                    ),
                    name="syncer",
                )
            )
        if "receiver" in roles:
            live.receiver_url = await stack.enter_async_context(
                serve_app(create_app(runtime), settings.host, settings.port)
            )
            log.info("receiver listening on %s", live.receiver_url)
        try:
            yield live
        finally:
            stop.set()
            await asyncio.gather(*live.tasks, return_exceptions=True)


async def _start_relay(
    live: Running, settings: Settings, stack: contextlib.AsyncExitStack, stop: asyncio.Event
) -> None:
    ae_url = settings.ae_base_url
    api_key = settings.ae_api_key.get_secret_value() if settings.ae_api_key else None
    if ae_url is None:
        live.ae_sim = AeSimState()
        await seed_ae_sim(live.runtime, live.ae_sim)
        ae_url = await stack.enter_async_context(serve_app(create_ae_app(live.ae_sim)))
        api_key = "embedded-simulator"
        log.info("AE simulator listening on %s", ae_url)
    if api_key is None:
        raise ConfigurationError("OWNERSYNC_AE_API_KEY is required with OWNERSYNC_AE_BASE_URL")
    live.ae_url = ae_url
    ae = await stack.enter_async_context(
        AeClient(
            ae_url,
            api_key,
            settings.ae_business_unit_id,
            max_concurrency=settings.ae_max_concurrency,
            daily_quota=settings.ae_daily_quota,
        )
    )
    live.relay = Relay(
        live.runtime.engine,
        {"ae": ae_prospect_sender(ae)},
        batch_size=settings.relay_batch_size,
        interval=settings.relay_interval_ms / 1000,
        max_attempts=settings.relay_max_attempts,
    )
    live.tasks.append(asyncio.create_task(live.relay.run(stop), name="relay"))


async def seed_ae_sim(runtime: Runtime, state: AeSimState) -> None:
    """The embedded AE knows the users of every tenant in the store, as the real one would."""
    async with runtime.engine.connect() as conn:
        for row in await conn.execute(select(ae_users)):
            if row.id not in state.users:
                state.add_user(
                    row.email or f"user{row.id}@example.com",
                    user_id=row.id,
                    first_name=row.name or "",
                    is_active=row.active,
                )


async def wait_until_idle(
    live: Running, *, settled: int | None = None, within: float = 30.0
) -> None:
    """Wait until the workers settled `settled` deliveries (in all) and no effect is pending.

    Without `settled`, wait until the queues are empty and no effect is pending three checks
    in a row (good enough for a person watching; tests pass `settled`).
    """
    from services.relay.relay import pending_effects

    quiet = 0
    async with asyncio.timeout(within):
        while quiet < 3:
            done = sum(s.settled for s in live.stats.values())
            if settled is not None:
                busy = done < settled
            else:
                depths = await live.runtime.broker.queue_depths()
                busy = any(v for k, v in depths.items() if k != "dead-letters")
            busy = busy or await pending_effects(live.runtime.engine) > 0
            quiet = 0 if busy else quiet + 1
            await asyncio.sleep(0.02)
