"""Starts roles (receiver, syncer, relay, …) in this process, with the simulators when embedded."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

from sqlalchemy import select

from services.assigner.worker import apply_ae_events
from services.common.ae_client import AeClient
from services.common.bootstrap import Runtime, build_runtime
from services.common.broker.base import QueueRole
from services.common.broker.memory import MemoryBroker
from services.common.db.tables import ae_users, queues, sf_users, tenants
from services.common.metrics import API_CALLS, worker_app
from services.common.settings import Settings
from services.common.sf_client import SfClient
from services.common.worker import WorkerStats, run_worker
from services.receiver.app import create_app
from services.relay.relay import Relay, Sender
from services.relay.senders import ae_prospect_sender, sf_record_sender
from services.sim.ae import AeSimState, create_ae_app
from services.sim.server import serve_app
from services.sim.sf import SfSimState, create_sf_app
from services.syncer.worker import apply_sf_events

log = logging.getLogger("ownersync")

ROLES = ("receiver", "assigner", "syncer", "relay")


class ConfigurationError(Exception):
    pass


@dataclass
class Running:
    """What a started set of roles exposes to its caller (the CLI, the demo, tests)."""

    runtime: Runtime
    receiver_url: str | None = None
    ae_url: str | None = None
    ae_sim: AeSimState | None = None
    sf_url: str | None = None
    sf_sim: SfSimState | None = None
    sf_tenant: str | None = None  # the tenant whose org the embedded SF simulator plays
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
        for role, queue, handle in WORKERS:
            if role in roles:
                live.stats[role] = WorkerStats()
                worker = run_worker(
                    runtime.broker,
                    queue,
                    runtime.engine,
                    handle,
                    batch_size=settings.batch_size,
                    batch_wait=settings.batch_wait_ms / 1000,
                    stop=stop,
                    stats=live.stats[role],
                )
                live.tasks.append(asyncio.create_task(worker, name=role))
        if "receiver" not in roles and settings.metrics_port:
            metrics_url = await stack.enter_async_context(
                serve_app(worker_app(), settings.host, settings.metrics_port)
            )
            log.info("metrics and health on %s/metrics", metrics_url)
        if "receiver" in roles:
            live.receiver_url = await stack.enter_async_context(
                serve_app(create_app(runtime), settings.host, settings.port)
            )
            log.info("receiver listening on %s", live.receiver_url)
            if live.sf_sim is not None:
                _point_outbound_messages(live)
        try:
            yield live
        finally:
            stop.set()
            await asyncio.gather(*live.tasks, return_exceptions=True)


WORKERS = (
    ("assigner", QueueRole.ASSIGNER, apply_ae_events),
    ("syncer", QueueRole.SYNCER, apply_sf_events),
)


async def _start_relay(
    live: Running, settings: Settings, stack: contextlib.AsyncExitStack, stop: asyncio.Event
) -> None:
    senders: dict[str, Sender] = {"ae": ae_prospect_sender(await _ae_client(live, settings, stack))}
    sf = await _sf_client(live, settings, stack)
    if sf is not None:
        senders["sf"] = sf_record_sender(sf)
    live.relay = Relay(
        live.runtime.engine,
        senders,
        batch_size=settings.relay_batch_size,
        interval=settings.relay_interval_ms / 1000,
        max_attempts=settings.relay_max_attempts,
        coalesce=settings.relay_coalesce_ms / 1000,
    )
    live.tasks.append(asyncio.create_task(live.relay.run(stop), name="relay"))


async def _ae_client(
    live: Running, settings: Settings, stack: contextlib.AsyncExitStack
) -> AeClient:
    ae_url = settings.ae_base_url
    api_key = settings.ae_api_key.get_secret_value() if settings.ae_api_key else None
    if ae_url is None:
        if not settings.simulate:
            raise ConfigurationError(
                "OWNERSYNC_AE_BASE_URL is required with a real broker "
                "(or set OWNERSYNC_USE_SIMULATORS=true to run the AE simulator in-process)"
            )
        live.ae_sim = AeSimState()
        await seed_ae_sim(live.runtime, live.ae_sim)
        ae_url = await stack.enter_async_context(serve_app(create_ae_app(live.ae_sim)))
        api_key = "embedded-simulator"
        log.info("AE simulator listening on %s", ae_url)
    if api_key is None:
        raise ConfigurationError("OWNERSYNC_AE_API_KEY is required with OWNERSYNC_AE_BASE_URL")
    live.ae_url = ae_url
    client = await stack.enter_async_context(
        AeClient(
            ae_url,
            api_key,
            settings.ae_business_unit_id,
            max_concurrency=settings.ae_max_concurrency,
            daily_quota=settings.ae_daily_quota,
        )
    )
    API_CALLS.track("ae", client)
    return client


async def _sf_client(
    live: Running, settings: Settings, stack: contextlib.AsyncExitStack
) -> SfClient | None:
    url, client_id = settings.sf_base_url, settings.sf_client_id
    secret = settings.sf_client_secret.get_secret_value() if settings.sf_client_secret else None
    if url is None:
        if not settings.simulate:
            raise ConfigurationError(
                "OWNERSYNC_SF_BASE_URL is required with a real broker "
                "(or set OWNERSYNC_USE_SIMULATORS=true to run the SF simulator in-process)"
            )
        seeded = await seed_sf_sim(live.runtime)
        if seeded is None:
            log.warning("no tenant in the store: the embedded SF simulator is not started")
            return None
        live.sf_tenant, live.sf_sim = seeded
        url = await stack.enter_async_context(serve_app(create_sf_app(live.sf_sim)))
        client_id, secret = live.sf_sim.client_id, live.sf_sim.client_secret
        log.info("SF simulator listening on %s", url)
    elif client_id is None or secret is None:
        raise ConfigurationError(
            "OWNERSYNC_SF_CLIENT_ID and OWNERSYNC_SF_CLIENT_SECRET are required with "
            "OWNERSYNC_SF_BASE_URL"
        )
    live.sf_url = url
    client = await stack.enter_async_context(SfClient(url, client_id, secret))
    API_CALLS.track("sf", client)
    return client


async def seed_sf_sim(runtime: Runtime) -> tuple[str, SfSimState] | None:
    """The embedded SF is the org of the first tenant: its users, queues and connector user."""
    async with runtime.engine.connect() as conn:
        tenant = (await conn.execute(select(tenants).order_by(tenants.c.created_at))).first()
        if tenant is None:
            return None
        state = SfSimState(org_id=tenant.salesforce_org_id, api_user_id=tenant.connector_user_id)
        users = await conn.execute(select(sf_users).where(sf_users.c.tenant_id == tenant.id))
        for user in users:
            state.add_user(user.name or user.id, user.email, active=user.active, user_id=user.id)
        found = await conn.execute(select(queues).where(queues.c.tenant_id == tenant.id))
        for queue in found:
            state.add_queue(queue.name, queue_id=queue.id)
    return tenant.id, state


def _point_outbound_messages(live: Running) -> None:
    assert live.sf_sim is not None and live.receiver_url is not None
    tenant = live.sf_tenant
    live.sf_sim.outbound.configure(
        created_url=f"{live.receiver_url}/salesforce/{tenant}/record-created",
        reassigned_url=f"{live.receiver_url}/salesforce/{tenant}/record-reassigned",
    )


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
    """Wait until everything put in has been applied and sent, three checks in a row.

    `settled` is the number of events the caller put in (SF notifications it posted plus AE
    webhooks); the notifications the embedded SF simulator sent back are added as they are
    acked. Without `settled`, the queues must be empty (good enough for a person watching).
    """
    from services.relay.relay import pending_effects

    quiet = 0
    async with asyncio.timeout(within):
        while quiet < 3:
            done = sum(s.settled for s in live.stats.values())
            if settled is not None:
                busy = done < settled + _sf_sim_acked(live)
            else:
                depths = await live.runtime.broker.queue_depths()
                busy = any(v for k, v in depths.items() if k != "dead-letters")
            busy = busy or (live.sf_sim is not None and live.sf_sim.outbound.pending_count() > 0)
            busy = busy or await pending_effects(live.runtime.engine) > 0
            quiet = 0 if busy else quiet + 1
            await asyncio.sleep(0.02)


def _sf_sim_acked(live: Running) -> int:
    if live.sf_sim is None:
        return 0
    return sum(len(d.notification_ids) for d in live.sf_sim.outbound.deliveries if d.acked)
