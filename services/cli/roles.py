"""The roles `ownersync` starts (run, receiver, assigner, syncer, relay, sim), the database
migration and the demo."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Annotated

import typer

from services.admin.tenant_file import TenantFile
from services.bootstrap import ROLES, ConfigurationError, RoleFailed, running
from services.cli.common import console, err, load_settings, migrate_embedded
from services.cli.tenants import load_tenant_file
from services.common.db.engine import migrate
from services.common.logs import configure_logging
from services.common.metrics import GC_PAUSES
from services.common.runtime import freeze_startup_objects, run_event_loop
from services.common.settings import Settings

roles_app = typer.Typer()

Host = Annotated[
    str | None, typer.Option(help="listen address [default: OWNERSYNC_HOST or 127.0.0.1]")
]
Port = Annotated[int | None, typer.Option(help="listen port [default: OWNERSYNC_PORT or 8000]")]


def _serve(
    settings: Settings, roles: tuple[str, ...], tenant_files: list[Path] | None = None
) -> None:
    migrate_embedded(settings)
    endpoint_keys: dict[str, str] = {}
    for path in tenant_files or []:
        load_tenant_file(settings, path)
        data = TenantFile.read(path)
        if data.salesforce_endpoint_key:
            endpoint_keys[data.tenant] = data.salesforce_endpoint_key

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with running(settings, roles, stop, sf_endpoint_keys=endpoint_keys) as live:
            if live.receiver_url:
                err.print(
                    f"[green]ownersync {', '.join(roles)} up[/green]: {live.receiver_url}"
                    + (f"  (AE simulator {live.ae_url})" if live.ae_sim else "")
                )
            await stop.wait()

    freeze_startup_objects()  # full collections would traverse every import-time object
    GC_PAUSES.watch()  # each collection's pause on /metrics: the stalls a latency tail is made of
    try:
        run_event_loop(main(), uvloop=settings.uvloop)
    except ConfigurationError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    except RoleFailed as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None


@roles_app.command()
def run(
    host: Host = None,
    port: Port = None,
    tenant: Annotated[
        list[Path] | None, typer.Option(help="tenant file(s) to load first (tenant.json format)")
    ] = None,
) -> None:
    """Run every role in one process (receiver, syncer, relay, simulators when embedded)."""
    _serve(load_settings(host, port), ROLES, tenant)


@roles_app.command()
def receiver(host: Host = None, port: Port = None) -> None:
    """Run the receiver: SF outbound messages, AE webhooks, internal API, /healthz, /readyz."""
    _serve(load_settings(host, port), ("receiver",))


@roles_app.command()
def assigner() -> None:
    """Run the assigner worker: AE prospect events and assignment actions (A1–A8)."""
    _serve(load_settings(), ("assigner",))


@roles_app.command()
def syncer() -> None:
    """Run the syncer worker: SF created/reassigned events -> reverse-sync decisions (S1–S9)."""
    _serve(load_settings(), ("syncer",))


@roles_app.command()
def relay() -> None:
    """Run the outbox relay: sends committed effects to AE (and SF) with retries.

    Runs at CPU priority OWNERSYNC_RELAY_NICE (10; 0 = normal): SF's acks and decisions go first."""
    _serve(load_settings(), ("relay",))


@roles_app.command()
def sim(
    host: Host = None,
    port: Annotated[int, typer.Option(help="port of the AE simulator")] = 8100,
    sf_port: Annotated[int, typer.Option(help="port of the SF simulator")] = 8101,
    receiver_url: Annotated[
        str | None,
        typer.Option(help="receiver base URL the SF simulator sends outbound messages to"),
    ] = None,
    tenant: Annotated[
        Path | None, typer.Option(help="tenant file whose org, users and queues SF and AE hold")
    ] = None,
    ae_latency_ms: Annotated[
        str,
        typer.Option(help="how long AE takes to answer, in ms: fixed (200) or drawn (100-300)"),
    ] = "0",
) -> None:
    """Serve the SF and AE simulators (for the demo profile and local experiments)."""
    from services.common.endpoints import sf_outbound_url
    from services.common.web import serve_app
    from services.sim.ae import AeSimState, create_ae_app, latency_range
    from services.sim.sf import SfSimState, create_sf_app

    try:
        latency, latency_max = latency_range(ae_latency_ms)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--ae-latency-ms") from None

    settings = load_settings(host)
    sf_state = SfSimState()
    business_unit = settings.ae_business_unit_id
    if tenant is not None:
        data = TenantFile.read(tenant)
        sf_state = SfSimState(org_id=data.salesforce_org_id, api_user_id=data.connector_user)
        if data.connections is not None:
            business_unit = data.connections.engagement.business_unit_id
    # AE admits the SF simulator's access tokens for its org's business unit, as the real one.
    ae_state = AeSimState(tokens=sf_state.tokens)
    ae_state.add_business_unit(business_unit, sf_state.org_id)
    ae_state.faults.configure(latency_ms=latency, latency_max_ms=latency_max)
    if tenant is not None:
        for name, sf_id in data.salesforce_users.items():
            sf_state.add_user(name, user_id=sf_id)
        for name, queue_id in data.queues.items():
            sf_state.add_queue(name, queue_id=queue_id)
        for name, ae_id in data.engagement_users.items():
            ae_state.add_user(f"{name}@example.com", user_id=ae_id, first_name=name)
        if receiver_url:
            key = data.salesforce_endpoint_key
            sf_state.outbound.configure(
                created_url=sf_outbound_url(receiver_url, data.tenant, "record-created", key),
                reassigned_url=sf_outbound_url(receiver_url, data.tenant, "record-reassigned", key),
            )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with (
            serve_app(create_ae_app(ae_state), settings.host, port) as ae_url,
            serve_app(create_sf_app(sf_state), settings.host, sf_port) as sf_url,
        ):
            err.print(
                f"AE simulator {ae_url}  SF simulator {sf_url} "
                f"(client id {sf_state.client_id}, secret {sf_state.client_secret})"
            )
            await stop.wait()

    asyncio.run(main())


@roles_app.command("migrate")
def migrate_command() -> None:
    """Apply the database migrations (Alembic) to OWNERSYNC_DATABASE_URL."""
    settings = load_settings()
    migrate(settings.database_url)
    console.print(f"migrated {_safe_url(settings.database_url)} to head")


@roles_app.command()
def demo() -> None:
    """Replay the bundled SF fixtures through the whole path on a fresh embedded store."""
    from services.demo.replay import run_demo

    settings = load_settings()
    configure_logging("ERROR", settings.log_format)  # the table tells the story
    asyncio.run(run_demo(console))


def _safe_url(url: str) -> str:
    with contextlib.suppress(Exception):
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    return url
