"""`ownersync`: one command for every role, the demo and the operator tools."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console

from services.admin.tenant_file import TenantFile, load_tenant
from services.bootstrap import ROLES, ConfigurationError, running
from services.cli_admin import SUB_APPS, tenants_app
from services.common.db.engine import make_engine, migrate
from services.common.logs import configure_logging
from services.common.settings import Settings

app = typer.Typer(
    help="ownersync keeps prospect ownership right between Account Engagement and Salesforce.\n\n"
    "Configuration comes from OWNERSYNC_* environment variables; with none set it runs on the "
    "embedded default (SQLite ./ownersync.db, in-process broker and simulators).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
tenant_app = tenants_app  # `ownersync tenant load|create|list|show|set|rotate-secret|keys`
for sub_app, sub_name in SUB_APPS:  # tenants, users, mappings, user-sync, record, …
    app.add_typer(sub_app, name=sub_name)
console = Console(emoji=False, highlight=False)
err = Console(stderr=True)

Host = Annotated[
    str | None, typer.Option(help="listen address [default: OWNERSYNC_HOST or 127.0.0.1]")
]
Port = Annotated[int | None, typer.Option(help="listen port [default: OWNERSYNC_PORT or 8000]")]


def _settings(host: str | None = None, port: int | None = None) -> Settings:
    try:
        settings = Settings()
    except ValidationError as exc:
        err.print(f"[red]invalid configuration:[/red]\n{exc}")
        raise typer.Exit(2) from None
    updates = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    settings = settings.model_copy(update=updates)
    configure_logging(settings.log_level, settings.log_format)
    return settings


def _serve(
    settings: Settings, roles: tuple[str, ...], tenant_files: list[Path] | None = None
) -> None:
    if settings.is_sqlite:
        migrate(settings.database_url)  # the embedded store migrates itself
    endpoint_keys: dict[str, str] = {}
    for path in tenant_files or []:
        _load_tenant_file(settings, path)
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

    try:
        asyncio.run(main())
    except ConfigurationError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


@app.command()
def run(
    host: Host = None,
    port: Port = None,
    tenant: Annotated[
        list[Path] | None, typer.Option(help="tenant file(s) to load first (tenant.json format)")
    ] = None,
) -> None:
    """Run every role in one process (receiver, syncer, relay, simulators when embedded)."""
    _serve(_settings(host, port), ROLES, tenant)


@app.command()
def receiver(host: Host = None, port: Port = None) -> None:
    """Run the receiver: SF outbound messages, AE webhooks, internal API, /healthz, /readyz."""
    _serve(_settings(host, port), ("receiver",))


@app.command()
def assigner() -> None:
    """Run the assigner worker: AE prospect events and assignment actions (A1–A8)."""
    _serve(_settings(), ("assigner",))


@app.command()
def syncer() -> None:
    """Run the syncer worker: SF created/reassigned events -> reverse-sync decisions (S1–S9)."""
    _serve(_settings(), ("syncer",))


@app.command()
def relay() -> None:
    """Run the outbox relay: sends committed effects to AE (and SF) with retries."""
    _serve(_settings(), ("relay",))


@app.command()
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
) -> None:
    """Serve the SF and AE simulators (for the demo profile and local experiments)."""
    from services.common.endpoints import sf_outbound_url
    from services.common.web import serve_app
    from services.sim.ae import AeSimState, create_ae_app
    from services.sim.sf import SfSimState, create_sf_app

    settings = _settings(host)
    ae_state, sf_state = AeSimState(), SfSimState()
    if tenant is not None:
        data = TenantFile.read(tenant)
        sf_state = SfSimState(org_id=data.salesforce_org_id, api_user_id=data.connector_user)
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


@app.command("migrate")
def migrate_command() -> None:
    """Apply the database migrations (Alembic) to OWNERSYNC_DATABASE_URL."""
    settings = _settings()
    migrate(settings.database_url)
    console.print(f"migrated {_safe_url(settings.database_url)} to head")


@app.command()
def demo() -> None:
    """Replay the bundled SF fixtures through the whole path on a fresh embedded store."""
    from services.demo.replay import run_demo

    settings = _settings()
    configure_logging("ERROR", settings.log_format)  # the table tells the story
    asyncio.run(run_demo(console))


@tenant_app.command("load")
def tenant_load(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="tenant.json")],
) -> None:
    """Create or replace a tenant with its users, connected users, queues and groups."""
    settings = _settings()
    if settings.is_sqlite:
        migrate(settings.database_url)
    counts = _load_tenant_file(settings, file)
    console.print(
        f"loaded tenant {counts.pop('tenant')}: "
        + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items())
    )


def _load_tenant_file(settings: Settings, path: Path) -> dict[str, object]:
    try:
        data = TenantFile.read(path)
    except (ValidationError, ValueError) as exc:
        err.print(f"[red]{path}: not a valid tenant file[/red]\n{exc}")
        raise typer.Exit(2) from None

    async def load() -> dict[str, object]:
        engine = make_engine(settings.database_url)
        try:
            async with engine.begin() as conn:
                return {"tenant": data.tenant, **await load_tenant(conn, data)}
        finally:
            await engine.dispose()

    return asyncio.run(load())


def _safe_url(url: str) -> str:
    with contextlib.suppress(Exception):
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    return url


if __name__ == "__main__":
    app()
