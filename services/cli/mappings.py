"""`ownersync mappings` and `ownersync user-sync`: connected users, AE user <-> SF user."""

from __future__ import annotations

from typing import Annotated

import typer
from sqlalchemy.ext.asyncio import AsyncConnection

from services.admin import mappings, user_sync
from services.admin.schemas import MappingView, SfUserCreate
from services.cli.common import (
    TenantOpt,
    ae_user_id,
    all_pages,
    console,
    now,
    parse_input,
    run_admin,
    table,
)

mappings_app = typer.Typer(help="Connected users: AE user <-> SF user.", no_args_is_help=True)
user_sync_app = typer.Typer(help="Connect AE users to SF users by SF user id or email.")


@mappings_app.command("list")
def mappings_list(tenant: TenantOpt) -> None:
    """Every connected user of the tenant."""

    async def work(conn: AsyncConnection) -> list[MappingView]:
        return await all_pages(lambda c: mappings.list_mappings(conn, tenant, limit=500, cursor=c))

    rows = run_admin(work)
    console.print(
        table(
            f"connected users of {tenant}",
            ("AE user", "SF user", "since"),
            ((m.ae_user_id, m.sf_user_id, m.created_at) for m in rows),
        )
    )


@mappings_app.command("add")
def mappings_add(
    ae_user: Annotated[str, typer.Argument(help="AE user id")],
    sf_user: Annotated[str, typer.Argument(help="SF user id")],
    tenant: TenantOpt,
) -> None:
    """Connect an AE user to a SF user (refused if either is connected already)."""
    sf_id = parse_input(SfUserCreate, {"id": sf_user}).id
    view, created = run_admin(
        lambda conn: mappings.create_mapping(
            conn, tenant, ae_user_id=ae_user_id(ae_user), sf_user_id=sf_id, now=now()
        )
    )
    verb = "connected" if created else "already connected:"
    console.print(f"{verb} AE user {view.ae_user_id} <-> SF user {view.sf_user_id}")


@mappings_app.command("remove")
def mappings_remove(
    ae_user: Annotated[str, typer.Argument(help="AE user id")], tenant: TenantOpt
) -> None:
    """Disconnect an AE user."""
    view = run_admin(
        lambda conn: mappings.delete_mapping(conn, tenant, ae_user_id=ae_user_id(ae_user))
    )
    console.print(f"disconnected AE user {view.ae_user_id} from SF user {view.sf_user_id}")


@user_sync_app.callback(invoke_without_command=True)
def user_sync_command(
    tenant: TenantOpt,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="report only, change nothing")] = False,
    all_users: Annotated[
        bool, typer.Option("--all", help="list every user, not only news")
    ] = False,
) -> None:
    """Match AE users to SF users (SF user id first, else email, case-insensitive)."""
    report = run_admin(
        lambda conn: user_sync.run_user_sync(conn, tenant, dry_run=dry_run, now=now())
    )
    shown = [u for u in report.users if all_users or u.outcome != "already_mapped"]
    console.print(
        table(
            f"user sync of {tenant}" + (" (dry run: nothing changed)" if dry_run else ""),
            ("AE user", "email", "SF user", "outcome", "why"),
            ((u.ae_user_id, u.ae_email, u.sf_user_id, u.outcome, u.reason) for u in shown),
        )
    )
    console.print(", ".join(f"{n} {k.replace('_', ' ')}" for k, n in report.counts.items()))
