"""`ownersync tenant`: load from a file, create, list, show, connector settings, webhook secret
rotation, API keys."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, TypeGuard, get_args

import typer
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection

from services.admin import api_keys, tenants
from services.admin.schemas import ApiKeyView, Scope, TenantCreate, TenantPatch, TenantView
from services.admin.tenant_file import TenantFile, load_tenant
from services.cli.common import (
    TenantOpt,
    all_pages,
    console,
    err,
    in_transaction,
    load_settings,
    migrate_embedded,
    now,
    parse_input,
    run_admin,
    table,
)
from services.common.settings import Settings

tenants_app = typer.Typer(
    help="Tenants: load from a file, create, show, connector settings, webhook secret, API keys.",
    no_args_is_help=True,
)
keys_app = typer.Typer(
    help="API keys of a tenant (shown once, stored hashed).", no_args_is_help=True
)
tenants_app.add_typer(keys_app, name="keys")


@tenants_app.command("create")
def tenant_create(
    tenant_id: Annotated[str, typer.Argument(help="lower-case id, e.g. acme")],
    org: Annotated[str, typer.Option(help="SF organization id (00D…)")],
    connector: Annotated[str, typer.Option(help="SF connector user id (005…)")],
    sync_mode: Annotated[str, typer.Option(help="leads or contacts")] = "leads",
    auto_create: Annotated[bool, typer.Option(help="create prospects for new SF records")] = True,
    verified: Annotated[bool, typer.Option(help="the connector is verified")] = False,
) -> None:
    """Create a tenant; prints its webhook secret (shown this once)."""
    data = parse_input(
        TenantCreate,
        {
            "id": tenant_id,
            "salesforceOrgId": org,
            "connectorUserId": connector,
            "syncMode": sync_mode,
            "autoCreateProspects": auto_create,
            "connectorVerified": verified,
        },
    )
    created = run_admin(lambda conn: tenants.create_tenant(conn, data, now()))
    console.print(f"created tenant {created.tenant.id}")
    console.print(f"webhook secret (shown once): [bold]{created.webhook_secret}[/bold]")
    console.print(
        f"SF endpoint key (shown once): [bold]{created.salesforce_endpoint_key}[/bold]"
        " (the `key` query parameter of the SF outbound-message URLs)"
    )


@tenants_app.command("list")
def tenant_list() -> None:
    """Every tenant and its connector settings."""

    async def work(conn: AsyncConnection) -> list[TenantView]:
        return await all_pages(lambda c: tenants.list_tenants(conn, limit=500, cursor=c, now=now()))

    rows = run_admin(work)
    console.print(
        table(
            "tenants",
            ("id", "org", "connector user", "sync mode", "auto-create", "verified"),
            (
                (
                    t.id,
                    t.salesforce_org_id,
                    t.connector_user_id,
                    t.sync_mode,
                    t.auto_create_prospects,
                    t.connector_verified,
                )
                for t in rows
            ),
        )
    )


@tenants_app.command("show")
def tenant_show(tenant_id: Annotated[str, typer.Argument()]) -> None:
    """A tenant's connector settings."""
    view = run_admin(lambda conn: tenants.get_tenant(conn, tenant_id, now()))
    _print_settings(view)


@tenants_app.command("set")
def tenant_set(
    tenant_id: Annotated[str, typer.Argument()],
    org: Annotated[str | None, typer.Option(help="SF organization id")] = None,
    connector: Annotated[str | None, typer.Option(help="SF connector user id")] = None,
    sync_mode: Annotated[str | None, typer.Option(help="leads or contacts")] = None,
    auto_create: Annotated[bool | None, typer.Option("--auto-create/--no-auto-create")] = None,
    verified: Annotated[bool | None, typer.Option("--verified/--not-verified")] = None,
) -> None:
    """Change connector settings; options not given are left as they are."""
    patch = parse_input(
        TenantPatch,
        {
            "salesforceOrgId": org,
            "connectorUserId": connector,
            "syncMode": sync_mode,
            "autoCreateProspects": auto_create,
            "connectorVerified": verified,
        },
    )
    view = run_admin(lambda conn: tenants.update_tenant(conn, tenant_id, patch, now()))
    _print_settings(view)


def _print_settings(view: TenantView) -> None:
    console.print(
        table(f"tenant {view.id}", ("setting", "value"), view.model_dump(by_alias=False).items())
    )


@tenants_app.command("rotate-secret")
def tenant_rotate_secret(
    tenant_id: Annotated[str, typer.Argument()],
    grace_hours: Annotated[float, typer.Option(min=0, max=168, help="old secret stays valid")] = 24,
) -> None:
    """A new AE webhook secret; the old one stays valid for the grace period."""
    rotated = run_admin(
        lambda conn: tenants.rotate_webhook_secret(
            conn, tenant_id, grace=timedelta(hours=grace_hours), now=now()
        )
    )
    console.print(f"new webhook secret (shown once): [bold]{rotated.webhook_secret}[/bold]")
    until = rotated.previous_secret_expires_at
    console.print(f"the previous secret is valid until {until}" if until else "no grace period")


@tenants_app.command("rotate-endpoint-key")
def tenant_rotate_endpoint_key(
    tenant_id: Annotated[str, typer.Argument()],
    grace_hours: Annotated[float, typer.Option(min=0, max=168, help="old key stays valid")] = 24,
) -> None:
    """A new SF endpoint key (`?key=` of the outbound-message URLs); the old one stays valid
    for the grace period, while SF's outbound messages are switched over."""
    rotated = run_admin(
        lambda conn: tenants.rotate_endpoint_key(
            conn, tenant_id, grace=timedelta(hours=grace_hours), now=now()
        )
    )
    console.print(
        f"new SF endpoint key (shown once): [bold]{rotated.salesforce_endpoint_key}[/bold]"
    )
    until = rotated.previous_endpoint_key_expires_at
    console.print(f"the previous key is valid until {until}" if until else "no grace period")


@tenants_app.command("load")
def tenant_load(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="tenant.json")],
) -> None:
    """Create or replace a tenant with its users, connected users, queues, groups and
    connections (a `connections` block: its client secret is sealed with OWNERSYNC_SECRETS_KEY)."""
    settings = load_settings()
    migrate_embedded(settings)
    counts = load_tenant_file(settings, file)
    console.print(
        f"loaded tenant {counts.pop('tenant')}: "
        + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items())
    )


def load_tenant_file(settings: Settings, path: Path) -> dict[str, object]:
    """Read a tenant file and create or replace its tenant, in one transaction; a file that is
    not one exits 2, a refusal of the admin rules exits 1."""
    try:
        data = TenantFile.read(path)
    except (ValidationError, ValueError) as exc:
        err.print(f"[red]{path}: not a valid tenant file[/red]\n{exc}")
        raise typer.Exit(2) from None

    ring = settings.keyring if settings.secrets_key is not None else None

    async def load(conn: AsyncConnection) -> dict[str, object]:
        return {"tenant": data.tenant, **await load_tenant(conn, data, ring)}

    return in_transaction(settings, load)


# --- API keys ----------------------------------------------------------------------------


def _is_scope(value: str) -> TypeGuard[Scope]:
    return value in get_args(Scope)


@keys_app.command("create")
def key_create(
    tenant: TenantOpt,
    name: Annotated[str, typer.Option(help="who or what uses the key")],
    scope: Annotated[list[str], typer.Option(help="read, write or admin (repeatable)")],
) -> None:
    """Create an API key; prints it (shown this once)."""
    bad = [s for s in scope if not _is_scope(s)]
    if bad:
        err.print(f"[red]unknown scope {bad[0]!r}[/red]: read, write or admin")
        raise typer.Exit(2)
    scopes = [s for s in scope if _is_scope(s)]
    created = run_admin(
        lambda conn: api_keys.create_api_key(conn, tenant, name=name, scopes=scopes, now=now())
    )
    console.print(f"key {created.api_key.id} ({', '.join(created.api_key.scopes)})")
    console.print(f"[bold]{created.key}[/bold]  (shown once)")


@keys_app.command("list")
def key_list(tenant: TenantOpt) -> None:
    """The tenant's keys (never the keys themselves)."""

    async def work(conn: AsyncConnection) -> list[ApiKeyView]:
        return await all_pages(lambda c: api_keys.list_api_keys(conn, tenant, limit=500, cursor=c))

    rows = run_admin(work)
    console.print(
        table(
            f"API keys of {tenant}",
            ("id", "name", "scopes", "created", "revoked"),
            ((k.id, k.name, ",".join(k.scopes), k.created_at, k.revoked_at) for k in rows),
        )
    )


@keys_app.command("revoke")
def key_revoke(tenant: TenantOpt, key_id: Annotated[str, typer.Argument()]) -> None:
    """Revoke a key at once."""
    view = run_admin(lambda conn: api_keys.revoke_api_key(conn, tenant, key_id, now()))
    console.print(f"revoked key {view.id} at {view.revoked_at}")
