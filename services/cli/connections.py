"""`ownersync tenant connections …`, `ownersync tenant check` and `ownersync secrets rotate`:
each tenant's SF and AE connections, secrets write-only and sealed with OWNERSYNC_SECRETS_KEY."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer
from pydantic import SecretStr

from services.admin import connections
from services.admin.errors import AdminError
from services.admin.schemas import (
    ClientSecretRotation,
    ConnectionsCheck,
    ConnectionsSet,
    ConnectionsView,
)
from services.cli.common import (
    console,
    in_transaction,
    load_settings,
    migrate_embedded,
    now,
    parse_input,
    refused,
    table,
)
from services.common.crypto import KeyRing
from services.common.settings import Settings

connections_app = typer.Typer(
    help="A tenant's SF connected app and AE business unit (secrets are never shown).",
    no_args_is_help=True,
)
secrets_app = typer.Typer(help="Stored secrets and OWNERSYNC_SECRETS_KEY.", no_args_is_help=True)

TenantArg = Annotated[str, typer.Argument(help="tenant id")]


def _keyring(settings: Settings) -> KeyRing | None:
    return settings.keyring if settings.secrets_key is not None else None


def _settings() -> Settings:
    settings = load_settings(log_level="WARNING")
    migrate_embedded(settings)
    return settings


def _print(tenant_id: str, view: ConnectionsView) -> None:
    if view.salesforce is None or view.engagement is None:
        console.print(f"tenant {tenant_id} has no connections stored")
        return
    rows: list[tuple[str, Any]] = [
        ("salesforce login URL", view.salesforce.login_url),
        ("salesforce client id", view.salesforce.client_id),
        ("salesforce client secret", "set" if view.salesforce.client_secret_set else "not set"),
        ("sealed with key", view.salesforce.client_secret_key_id),
        ("engagement base URL", view.engagement.base_url),
        ("engagement business unit", view.engagement.business_unit_id),
        ("updated", view.updated_at),
    ]
    console.print(table(f"connections of {tenant_id}", ("setting", "value"), rows))


@connections_app.command("show")
def connections_show(tenant_id: TenantArg) -> None:
    """The connections, the client secret masked (set or not, and the key sealing it)."""
    settings = _settings()
    view = in_transaction(settings, lambda conn: connections.show_connections(conn, tenant_id))
    _print(tenant_id, view)


@connections_app.command("set")
def connections_set(
    tenant_id: TenantArg,
    sf_login_url: Annotated[
        str, typer.Option(help="https://login.salesforce.com, test.salesforce.com or My Domain")
    ],
    sf_client_id: Annotated[str, typer.Option(help="the connected app's consumer key")],
    ae_business_unit: Annotated[str, typer.Option(help="the AE business unit id (0Uv…)")],
    ae_base_url: Annotated[str, typer.Option(help="AE API host")] = "https://pi.pardot.com",
    sf_client_secret: Annotated[
        str | None,
        typer.Option(
            help="the consumer secret; prompted for (hidden) when omitted, which keeps it out "
            "of the shell's history"
        ),
    ] = None,
    keep_secret: Annotated[
        bool, typer.Option("--keep-secret", help="keep the stored client secret")
    ] = False,
) -> None:
    """Set or replace both connections; the client secret is sealed, never shown again."""
    if sf_client_secret is None and not keep_secret:
        sf_client_secret = typer.prompt("SF connected app consumer secret", hide_input=True)
    body = parse_input(
        ConnectionsSet,
        {
            "salesforce": {
                "loginUrl": sf_login_url,
                "clientId": sf_client_id,
                **({"clientSecret": sf_client_secret} if sf_client_secret else {}),
            },
            "engagement": {"baseUrl": ae_base_url, "businessUnitId": ae_business_unit},
        },
    )
    settings = _settings()
    ring = _keyring(settings)
    view = in_transaction(
        settings, lambda conn: connections.set_connections(conn, tenant_id, body, ring, now())
    )
    _print(tenant_id, view)


@connections_app.command("rotate-secret")
def connections_rotate_secret(
    tenant_id: TenantArg,
    sf_client_id: Annotated[
        str | None, typer.Option(help="the new consumer key, when SF's rotation gave one")
    ] = None,
) -> None:
    """Store the connected app's new consumer secret (prompted for, hidden), then check it."""
    secret = typer.prompt("new SF connected app consumer secret", hide_input=True)
    body = ClientSecretRotation(client_secret=SecretStr(secret), client_id=sf_client_id)
    settings = _settings()
    ring = _keyring(settings)
    view = in_transaction(
        settings, lambda conn: connections.rotate_client_secret(conn, tenant_id, body, ring, now())
    )
    _print(tenant_id, view)
    console.print(f"check it: ownersync tenant check {tenant_id}")


def tenant_check(tenant_id: TenantArg) -> None:
    """Get a token from the tenant's connected app and read one user from SF and from AE:
    says per system ok or failed, and why. Exits 1 when a system failed."""
    settings = _settings()
    ring = _keyring(settings)
    stored, sf_user = in_transaction(
        settings, lambda conn: connections.connections_for_check(conn, tenant_id, ring)
    )
    try:
        verdict: ConnectionsCheck = asyncio.run(
            connections.check_connections(stored, sf_user, now())
        )
    except AdminError as exc:
        raise refused(exc) from None
    rows = [
        (name, check.status, check.code or "", check.message or "")
        for name, check in (("salesforce", verdict.salesforce), ("engagement", verdict.engagement))
    ]
    console.print(table(f"check of {tenant_id}", ("system", "status", "code", "why"), rows))
    if any(check.status == "failed" for check in (verdict.salesforce, verdict.engagement)):
        raise typer.Exit(1)


@secrets_app.command("rotate")
def secrets_rotate() -> None:
    """Seal every stored secret under the first key of OWNERSYNC_SECRETS_KEY. Put the new key
    first (`new:KEY,old:KEY`), run this, then drop the old key."""
    settings = _settings()
    ring = _keyring(settings)
    done = in_transaction(settings, lambda conn: connections.reseal_secrets(conn, ring))
    console.print(f"{done.resealed} secret(s) sealed under key {done.key_id}")
