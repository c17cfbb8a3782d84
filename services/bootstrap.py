"""The one place that wires ownersync: the served app, the API clients, the senders, the relay
and the workers. The CLI, the demo and the tests start roles through `running`.

Simulators are imported only when they are switched on (`OWNERSYNC_USE_SIMULATORS`, on by
default on the embedded default): production wiring never loads `services.sim`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from fastapi import FastAPI

from services.api import install_api
from services.assigner.sla_loop import SlaLoop
from services.assigner.worker import apply_ae_events
from services.common import tracing
from services.common.ae_client import AeClient
from services.common.broker.base import QueueRole
from services.common.broker.memory import MemoryBroker
from services.common.db.prune import Pruner
from services.common.metrics import API_CALLS, HEARTBEATS, worker_app
from services.common.priority import yield_cpu
from services.common.runtime import Runtime, build_runtime
from services.common.settings import Settings
from services.common.sf_auth import SfTokenSource
from services.common.sf_client import SfClient
from services.common.web import serve_app
from services.common.worker import Backoff, WorkerStats, run_worker
from services.console import install_console
from services.receiver.app import install_receiver
from services.relay.ae_limits import SharedAeLimits
from services.relay.bulk import BulkMode
from services.relay.relay import Relay, Senders, replica_id
from services.relay.senders import ae_prospect_sender, sf_record_sender
from services.relay.tenant_senders import TenantSenders
from services.syncer.worker import apply_sf_events

if TYPE_CHECKING:
    from services.sim.ae import AeSimState
    from services.sim.embedded import EmbeddedAe, EmbeddedSf
    from services.sim.sf import SfSimState

log = logging.getLogger("ownersync")

ROLES = ("receiver", "assigner", "syncer", "relay")

WORKERS = (
    ("assigner", QueueRole.ASSIGNER, apply_ae_events),
    ("syncer", QueueRole.SYNCER, apply_sf_events),
)


class ConfigurationError(Exception):
    pass


class RoleFailed(Exception):
    """A role's task died with a failure: the other roles are stopped and the process exits
    non-zero (an orchestrator restarts it)."""

    def __init__(self, role: str, cause: BaseException) -> None:
        self.role = role
        self.cause = cause
        super().__init__(f"role {role} died: {cause!r}")


def create_app(runtime: Runtime | None = None, settings: Settings | None = None) -> FastAPI:
    """The served app (receiver endpoints, the /v1 API and the /console pages) on `runtime`
    (borrowed: the caller closes it) or on a runtime of its own built from `settings`."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if runtime is not None:
            app.state.runtime = runtime
            yield
            return
        owned = build_runtime(settings or Settings())
        app.state.runtime = owned
        try:
            yield
        finally:
            await owned.close()

    app = FastAPI(
        title="ownersync",
        version="1",
        summary="Prospect ownership between Account Engagement and Salesforce",
        lifespan=lifespan,
    )
    install_receiver(app)
    install_api(app)
    install_console(app)
    tracing.instrument_app(app)
    return app


@dataclass
class Running:
    """What a started set of roles exposes to its caller (the CLI, the demo, tests)."""

    runtime: Runtime
    receiver_url: str | None = None
    ae: EmbeddedAe | None = None  # the embedded simulators, when switched on
    sf: EmbeddedSf | None = None
    ae_url: str | None = None
    sf_url: str | None = None
    relay: Relay | None = None
    sla: SlaLoop | None = None
    stats: dict[str, WorkerStats] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    heartbeat_timeout: float = 60.0

    def health(self) -> dict[str, str]:
        """Each worker role's state for /healthz: ok, silent (its consume loop stopped
        beating) or dead (its task ended)."""
        tasks = {t.get_name(): t for t in self.tasks}
        states: dict[str, str] = {}
        for role, stats in self.stats.items():
            task = tasks.get(role)
            if task is not None and task.done():
                states[role] = "dead"
            elif stats.silent_for() > self.heartbeat_timeout:
                states[role] = f"silent for {stats.silent_for():.0f} s"
            else:
                states[role] = "ok"
        return states

    @property
    def ae_sim(self) -> AeSimState | None:
        return self.ae.state if self.ae is not None else None

    @property
    def sf_sim(self) -> SfSimState | None:
        return self.sf.state if self.sf is not None else None

    @property
    def sf_tenant(self) -> str | None:
        """The tenant whose org the embedded SF simulator plays."""
        return self.sf.tenant if self.sf is not None else None


@contextlib.asynccontextmanager
async def running(
    settings: Settings,
    roles: Iterable[str],
    stop: asyncio.Event,
    *,
    runtime: Runtime | None = None,
    sf_endpoint_keys: Mapping[str, str] | None = None,
) -> AsyncIterator[Running]:
    """Start `roles`; on exit, set `stop`, let workers finish their batch, close everything.

    `sf_endpoint_keys` (tenant -> key) gives the key the embedded SF simulator puts in its
    outbound-message URLs: the store keeps only its hash."""
    roles = set(roles)
    if unknown := roles - set(ROLES):
        raise ConfigurationError(f"unknown roles: {', '.join(sorted(unknown))}")
    async with contextlib.AsyncExitStack() as stack:
        if runtime is None:
            runtime = build_runtime(settings, roles=roles)
            stack.push_async_callback(runtime.close)
        if isinstance(runtime.broker, MemoryBroker) and roles != set(ROLES):
            raise ConfigurationError(
                "the in-process broker only links roles inside one process: use `ownersync run`, "
                "or set OWNERSYNC_AMQP_URL to run roles separately"
            )
        await runtime.broker.connect()
        live = Running(runtime, heartbeat_timeout=settings.heartbeat_timeout_s)
        if "relay" in roles:
            if roles == {"relay"} and settings.relay_nice:
                nice = yield_cpu(settings.relay_nice)
                log.info("relay at CPU priority nice %s (OWNERSYNC_RELAY_NICE)", nice)
            await _start_relay(live, settings, stack, stop)
        for role, queue, handle in WORKERS:
            if role in roles:
                live.stats[role] = WorkerStats()
                HEARTBEATS.track(role, live.stats[role].silent_for)
                worker = run_worker(
                    runtime.broker,
                    queue,
                    runtime.engine,
                    handle,
                    batch_size=settings.batch_size,
                    batch_wait=settings.batch_wait_ms / 1000,
                    stop=stop,
                    stats=live.stats[role],
                    backoff=Backoff(
                        settings.hold_backoff_ms / 1000, settings.hold_backoff_max_ms / 1000
                    ),
                )
                live.tasks.append(asyncio.create_task(worker, name=role))
        if "assigner" in roles:
            # Every assigner replica fires due follow-up SLA timers (claimed, never twice).
            live.sla = SlaLoop(
                runtime.engine, replica=_replica(settings), interval=settings.sla_interval_ms / 1000
            )
            live.tasks.append(asyncio.create_task(live.sla.run(stop), name="sla"))
        for task in live.tasks:
            task.add_done_callback(lambda _: stop.set())  # one role down takes the rest down
        if "receiver" not in roles and settings.metrics_port:
            metrics_url = await stack.enter_async_context(
                serve_app(worker_app(live.health), settings.host, settings.metrics_port)
            )
            log.info("metrics and health on %s/metrics", metrics_url)
        if "receiver" in roles:
            live.receiver_url = await stack.enter_async_context(
                serve_app(create_app(runtime), settings.host, settings.port)
            )
            log.info("receiver listening on %s", live.receiver_url)
            if live.sf is not None:
                from services.sim.embedded import point_outbound_messages

                key = (sf_endpoint_keys or {}).get(live.sf.tenant)
                if key is None:
                    log.warning(
                        "no SF endpoint key for tenant %s: the receiver will refuse the embedded "
                        "SF simulator's outbound messages (401)",
                        live.sf.tenant,
                    )
                point_outbound_messages(live.sf, live.receiver_url, key)
        try:
            yield live
        finally:
            stop.set()
            await asyncio.gather(*live.tasks, return_exceptions=True)
        _raise_failed_role(live.tasks)


def _raise_failed_role(tasks: Iterable[asyncio.Task[None]]) -> None:
    """RoleFailed for the first role whose task died with a failure."""
    for task in tasks:
        if not task.cancelled() and (failure := task.exception()) is not None:
            raise RoleFailed(task.get_name(), failure) from failure


async def _start_relay(
    live: Running, settings: Settings, stack: contextlib.AsyncExitStack, stop: asyncio.Event
) -> None:
    tokens = await _sf_tokens(live, settings, stack)
    ae = await _ae_client(live, settings, stack, tokens)
    default: Senders | None = None
    if ae is not None and tokens is not None:
        sf = await _sf_client(stack, tokens)
        default = Senders(ae=ae_prospect_sender(ae), sf=sf_record_sender(sf))
    else:
        log.info("no default SF connection: each tenant's effects go out with its own connections")
    ring = settings.keyring if settings.secrets_key is not None else None
    senders = TenantSenders(
        live.runtime.engine,
        ring,
        default,
        ae_max_concurrency=settings.ae_max_concurrency,
        ae_daily_quota=settings.ae_daily_quota,
        ae_quota_timezone=settings.ae_quota_timezone,
        ae_limits=_shared_ae_limits(live, settings, stack),
        default_ae=ae,
    )
    stack.push_async_callback(senders.aclose)
    live.relay = Relay(
        live.runtime.engine,
        senders,
        owner=_replica(settings),
        batch_size=settings.relay_batch_size,
        interval=settings.relay_interval_ms / 1000,
        backoff_max=settings.relay_backoff_max_seconds,
        coalesce=settings.relay_coalesce_ms / 1000,
        lease=settings.relay_lease_seconds,
        quota_timezone=settings.ae_quota_timezone,
        settle_wait=settings.relay_settle_wait_ms / 1000,
        observe_every=settings.relay_metrics_interval_ms / 1000,
    )
    BulkMode(
        live.relay,
        senders.ae_client,
        threshold=settings.ae_bulk_threshold,
        size=settings.ae_bulk_size,
        lease=settings.ae_bulk_lease_seconds,
        poll=settings.ae_bulk_poll_ms / 1000,
        interval=settings.ae_bulk_check_ms / 1000,
    )
    live.tasks.append(asyncio.create_task(live.relay.run(stop), name="relay"))
    pruner = Pruner(
        live.runtime.engine,
        timedelta(hours=settings.inbox_retention_hours),
        batch_size=settings.prune_batch_size,
        interval=settings.prune_interval_seconds,
    )
    live.tasks.append(asyncio.create_task(pruner.run(stop), name="prune"))


async def _sf_tokens(
    live: Running, settings: Settings, stack: contextlib.AsyncExitStack
) -> SfTokenSource | None:
    """The OAuth token source the SF and AE clients share: the connected app of the
    OWNERSYNC_SF_* settings, or the embedded SF simulator's (None: no tenant to simulate)."""
    url, client_id = settings.sf_base_url, settings.sf_client_id
    secret = settings.sf_client_secret.get_secret_value() if settings.sf_client_secret else None
    if url is None:
        if not settings.simulate:
            return None  # no default connection: tenants send with their own
        from services.sim.embedded import start_sf

        live.sf = await start_sf(live.runtime, stack)
        if live.sf is None:
            log.warning("no tenant in the store: the embedded SF simulator is not started")
            return None
        url = live.sf.url
        client_id, secret = live.sf.state.client_id, live.sf.state.client_secret
        log.info("SF simulator listening on %s", url)
    if client_id is None or secret is None:
        raise ConfigurationError(
            "OWNERSYNC_SF_CLIENT_ID and OWNERSYNC_SF_CLIENT_SECRET are required with "
            "OWNERSYNC_SF_BASE_URL"
        )
    live.sf_url = url
    return await stack.enter_async_context(SfTokenSource(url, client_id, secret))


async def _ae_client(
    live: Running,
    settings: Settings,
    stack: contextlib.AsyncExitStack,
    tokens: SfTokenSource | None,
) -> AeClient | None:
    ae_url = settings.ae_base_url
    if ae_url is None:
        if not settings.simulate:
            return None  # no default connection: tenants send with their own
        from services.sim.embedded import start_ae

        live.ae = await start_ae(
            live.runtime, stack, trusted=live.sf, business_unit_id=settings.ae_business_unit_id
        )
        ae_url = live.ae.url
        log.info("AE simulator listening on %s", ae_url)
    live.ae_url = ae_url
    if tokens is None:
        return None  # AE takes SF's access token: without a SF connection there is none
    limits = _shared_ae_limits(live, settings, stack)
    client = await stack.enter_async_context(
        AeClient(
            ae_url,
            tokens,
            settings.ae_business_unit_id,
            max_concurrency=settings.ae_max_concurrency,
            daily_quota=settings.ae_daily_quota,
            quota_timezone=settings.ae_quota_timezone,
            shared_limits=limits(settings.ae_business_unit_id) if limits else None,
        )
    )
    API_CALLS.track("ae", client)
    return client


def _shared_ae_limits(
    live: Running, settings: Settings, stack: contextlib.AsyncExitStack
) -> Callable[[str], SharedAeLimits] | None:
    """AE's limits of a business unit, counted in Postgres with every other relay replica
    (None on the embedded SQLite store: one process, its own count)."""
    if settings.is_sqlite:
        return None
    made: dict[str, SharedAeLimits] = {}

    def limits(business_unit_id: str) -> SharedAeLimits:
        if business_unit_id not in made:
            made[business_unit_id] = SharedAeLimits(
                live.runtime.engine,
                business_unit_id,
                owner=_replica(settings),
                daily_quota=settings.ae_daily_quota,
                max_concurrency=settings.ae_max_concurrency,
                timezone=settings.ae_quota_timezone,
            )
            # Slots held idle for the next call are given back at shutdown, not left to lapse.
            stack.push_async_callback(made[business_unit_id].aclose)
        return made[business_unit_id]

    return limits


def _replica(settings: Settings) -> str:
    return settings.relay_replica_id or replica_id()


async def _sf_client(stack: contextlib.AsyncExitStack, tokens: SfTokenSource) -> SfClient:
    client = await stack.enter_async_context(SfClient(tokens))
    API_CALLS.track("sf", client)
    return client
