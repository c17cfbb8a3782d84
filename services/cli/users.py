"""`ownersync users`: a tenant's SF users and AE users."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from sqlalchemy.ext.asyncio import AsyncConnection

from services.admin import users
from services.admin.schemas import (
    AeUserCreate,
    AeUserPatch,
    AeUserView,
    SfUserCreate,
    SfUserPatch,
    SfUserView,
)
from services.cli.common import (
    TenantOpt,
    ae_user_id,
    all_pages,
    console,
    err,
    now,
    parse_input,
    run_admin,
    table,
)

users_app = typer.Typer(help="SF users and AE users of a tenant.", no_args_is_help=True)
SideArg = Annotated[str, typer.Argument(help="sf or ae", metavar="SIDE")]
Side = Literal["sf", "ae"]


def _side(side: str) -> Side:
    if side == "sf":
        return "sf"
    if side == "ae":
        return "ae"
    err.print(f"[red]SIDE is sf or ae, not {side!r}[/red]")
    raise typer.Exit(2)


@users_app.command("list")
def users_list(
    side: SideArg,
    tenant: TenantOpt,
    active: Annotated[bool | None, typer.Option("--active/--inactive")] = None,
    email: Annotated[str | None, typer.Option()] = None,
) -> None:
    """List the tenant's SF or AE users."""
    if _side(side) == "sf":

        async def sf_work(conn: AsyncConnection) -> list[SfUserView]:
            return await all_pages(
                lambda c: users.list_sf_users(
                    conn, tenant, limit=500, cursor=c, active=active, email=email
                )
            )

        sf_rows = run_admin(sf_work)
        shown = table(
            f"SF users of {tenant}",
            ("id", "name", "email", "active", "connected AE user"),
            ((u.id, u.name, u.email, u.active, u.connected_ae_user_id) for u in sf_rows),
        )
    else:

        async def ae_work(conn: AsyncConnection) -> list[AeUserView]:
            return await all_pages(
                lambda c: users.list_ae_users(
                    conn, tenant, limit=500, cursor=c, active=active, email=email
                )
            )

        ae_rows = run_admin(ae_work)
        shown = table(
            f"AE users of {tenant}",
            ("id", "name", "email", "SF user (AE's)", "active", "connected SF user"),
            (
                (u.id, u.name, u.email, u.salesforce_user_id, u.active, u.connected_sf_user_id)
                for u in ae_rows
            ),
        )
    console.print(shown)


@users_app.command("add")
def users_add(
    side: SideArg,
    user_id: Annotated[str, typer.Argument(help="SF user id (005…) or AE user id")],
    tenant: TenantOpt,
    name: Annotated[str | None, typer.Option()] = None,
    email: Annotated[str | None, typer.Option()] = None,
    sf_user: Annotated[str | None, typer.Option(help="AE only: the SF user AE knows")] = None,
) -> None:
    """Create a SF or AE user."""
    values: dict[str, Any] = {"id": user_id, "name": name, "email": email}
    view: SfUserView | AeUserView
    if _side(side) == "sf":
        sf_data = parse_input(SfUserCreate, values)
        view = run_admin(lambda conn: users.create_sf_user(conn, tenant, sf_data, now()))
    else:
        ae_data = parse_input(AeUserCreate, {**values, "salesforceUserId": sf_user})
        view = run_admin(lambda conn: users.create_ae_user(conn, tenant, ae_data, now()))
    console.print(f"created {side.upper()} user {view.id}")


@users_app.command("deactivate")
def users_deactivate(
    side: SideArg, user_id: Annotated[str, typer.Argument()], tenant: TenantOpt
) -> None:
    """Deactivate a user (its connected-user mapping is removed)."""
    if _side(side) == "sf":
        sf_patch = parse_input(SfUserPatch, {"active": False})
        sf_id = parse_input(SfUserCreate, {"id": user_id}).id
        run_admin(lambda conn: users.update_sf_user(conn, tenant, sf_id, sf_patch))
    else:
        ae_patch = parse_input(AeUserPatch, {"active": False})
        run_admin(lambda conn: users.update_ae_user(conn, tenant, ae_user_id(user_id), ae_patch))
    console.print(f"deactivated {side.upper()} user {user_id}")


@users_app.command("load")
def users_load(
    side: SideArg,
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="CSV or JSON")],
    tenant: TenantOpt,
) -> None:
    """Create or update users from a CSV (header: id,name,email[,salesforceUserId][,active])
    or a JSON list of objects with the same names."""
    raw = _read_rows(file)
    if _side(side) == "sf":
        sf_rows = [parse_input(SfUserCreate, row) for row in raw]
        result = run_admin(lambda conn: users.load_sf_users(conn, tenant, sf_rows, now()))
    else:
        ae_rows = [
            parse_input(AeUserCreate, {**row, "id": ae_user_id(str(row["id"]))}) for row in raw
        ]
        result = run_admin(lambda conn: users.load_ae_users(conn, tenant, ae_rows, now()))
    console.print(
        f"{result.created} created, {result.updated} updated, "
        f"{result.deactivated_mappings_removed} mappings of deactivated users removed"
    )


def _read_rows(file: Path) -> list[dict[str, Any]]:
    if file.suffix.lower() == ".json":
        rows: list[dict[str, Any]] = json.loads(file.read_text())
        return rows
    with file.open(newline="") as handle:
        rows = [
            {k: v for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)
        ]
    for row in rows:
        if "active" in row:
            row["active"] = str(row["active"]).strip().lower() in ("1", "true", "yes")
    return rows
