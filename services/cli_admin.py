"""The operator commands: tenants, users, connected users, user sync, records, reconcile and
dead letters, on the same service layer as the /v1 API (`services.admin`).

They act with the rights of whoever holds the database settings (no API key): run them where
the OWNERSYNC_* settings of the deployment are.
"""

from __future__ import annotations

import asyncio
import csv
import json
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncConnection

from services.admin import api_keys, mappings, records, tenants, user_sync, users
from services.admin import dead_letters as dl
from services.admin import reconcile as reconciling
from services.admin.errors import AdminError
from services.admin.schemas import (
    AeUserCreate,
    AeUserPatch,
    SfUserCreate,
    SfUserPatch,
    TenantCreate,
    TenantPatch,
)
from services.common.broker.memory import MemoryBroker
from services.common.db.engine import make_engine, migrate
from services.common.logs import configure_logging
from services.common.runtime import build_broker
from services.common.settings import Settings
from services.common.sfid import InvalidSalesforceId, to18

console = Console(emoji=False, highlight=False)
err = Console(stderr=True)
T = TypeVar("T")

TenantOpt = Annotated[
    str, typer.Option("--tenant", "-t", envvar="OWNERSYNC_TENANT", help="the tenant id")
]
Side = Literal["sf", "ae"]


# --- plumbing ----------------------------------------------------------------------------


def _settings() -> Settings:
    try:
        settings = Settings()
    except ValidationError as exc:
        err.print(f"[red]invalid configuration:[/red]\n{exc}")
        raise typer.Exit(2) from None
    configure_logging("WARNING", settings.log_format)
    return settings


def _fail(exc: AdminError) -> typer.Exit:
    err.print(f"[red]{exc.code}[/red]: {exc.message}")
    if exc.details:
        err.print(json.dumps(exc.details, default=str))
    return typer.Exit(1)


def _db(work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """Run `work` in one transaction: committed if it returns, rolled back if it raises."""
    settings = _settings()
    if settings.is_sqlite:
        migrate(settings.database_url)  # the embedded store migrates itself

    async def main() -> T:
        engine = make_engine(settings.database_url)
        try:
            async with engine.begin() as conn:
                return await work(conn)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(main())
    except AdminError as exc:
        raise _fail(exc) from None


def _input(model: type[BaseModel], values: dict[str, Any]) -> Any:
    """Build an API input model from CLI values (camelCase names, None left out)."""
    try:
        return model.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        err.print(f"[red]invalid input[/red]\n{exc}")
        raise typer.Exit(2) from None


def _now() -> datetime:
    return datetime.now(UTC)


def _table(title: str, columns: Iterable[str], rows: Iterable[Iterable[Any]]) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    return table


async def _all_pages(fetch: Callable[[str | None], Awaitable[Any]]) -> list[Any]:
    items: list[Any] = []
    cursor: str | None = None
    while True:
        page = await fetch(cursor)
        items += page.items
        cursor = page.next_cursor
        if cursor is None:
            return items


# --- tenants and keys --------------------------------------------------------------------

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
    data = _input(
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
    created = _db(lambda conn: tenants.create_tenant(conn, data, _now()))
    console.print(f"created tenant {created.tenant.id}")
    console.print(f"webhook secret (shown once): [bold]{created.webhook_secret}[/bold]")


@tenants_app.command("list")
def tenant_list() -> None:
    """Every tenant and its connector settings."""

    async def work(conn: AsyncConnection) -> list[Any]:
        return await _all_pages(
            lambda c: tenants.list_tenants(conn, limit=500, cursor=c, now=_now())
        )

    rows = _db(work)
    console.print(
        _table(
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
    view = _db(lambda conn: tenants.get_tenant(conn, tenant_id, _now()))
    console.print(
        _table(f"tenant {view.id}", ("setting", "value"), view.model_dump(by_alias=False).items())
    )


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
    patch = _input(
        TenantPatch,
        {
            "salesforceOrgId": org,
            "connectorUserId": connector,
            "syncMode": sync_mode,
            "autoCreateProspects": auto_create,
            "connectorVerified": verified,
        },
    )
    view = _db(lambda conn: tenants.update_tenant(conn, tenant_id, patch, _now()))
    console.print(
        _table(f"tenant {view.id}", ("setting", "value"), view.model_dump(by_alias=False).items())
    )


@tenants_app.command("rotate-secret")
def tenant_rotate_secret(
    tenant_id: Annotated[str, typer.Argument()],
    grace_hours: Annotated[float, typer.Option(min=0, max=168, help="old secret stays valid")] = 24,
) -> None:
    """A new AE webhook secret; the old one stays valid for the grace period."""
    rotated = _db(
        lambda conn: tenants.rotate_webhook_secret(
            conn, tenant_id, grace=timedelta(hours=grace_hours), now=_now()
        )
    )
    console.print(f"new webhook secret (shown once): [bold]{rotated.webhook_secret}[/bold]")
    until = rotated.previous_secret_expires_at
    console.print(f"the previous secret is valid until {until}" if until else "no grace period")


@keys_app.command("create")
def key_create(
    tenant: TenantOpt,
    name: Annotated[str, typer.Option(help="who or what uses the key")],
    scope: Annotated[list[str], typer.Option(help="read, write or admin (repeatable)")],
) -> None:
    """Create an API key; prints it (shown this once)."""
    bad = [s for s in scope if s not in ("read", "write", "admin")]
    if bad:
        err.print(f"[red]unknown scope {bad[0]!r}[/red]: read, write or admin")
        raise typer.Exit(2)
    created = _db(
        lambda conn: api_keys.create_api_key(conn, tenant, name=name, scopes=scope, now=_now())  # type: ignore[arg-type]
    )
    console.print(f"key {created.api_key.id} ({', '.join(created.api_key.scopes)})")
    console.print(f"[bold]{created.key}[/bold]  (shown once)")


@keys_app.command("list")
def key_list(tenant: TenantOpt) -> None:
    """The tenant's keys (never the keys themselves)."""

    async def work(conn: AsyncConnection) -> list[Any]:
        return await _all_pages(lambda c: api_keys.list_api_keys(conn, tenant, limit=500, cursor=c))

    rows = _db(work)
    console.print(
        _table(
            f"API keys of {tenant}",
            ("id", "name", "scopes", "created", "revoked"),
            ((k.id, k.name, ",".join(k.scopes), k.created_at, k.revoked_at) for k in rows),
        )
    )


@keys_app.command("revoke")
def key_revoke(tenant: TenantOpt, key_id: Annotated[str, typer.Argument()]) -> None:
    """Revoke a key at once."""
    view = _db(lambda conn: api_keys.revoke_api_key(conn, tenant, key_id, _now()))
    console.print(f"revoked key {view.id} at {view.revoked_at}")


# --- users -------------------------------------------------------------------------------

users_app = typer.Typer(help="SF users and AE users of a tenant.", no_args_is_help=True)
SideArg = Annotated[str, typer.Argument(help="sf or ae", metavar="SIDE")]


def _side(side: str) -> Side:
    if side not in ("sf", "ae"):
        err.print(f"[red]SIDE is sf or ae, not {side!r}[/red]")
        raise typer.Exit(2)
    return side  # type: ignore[return-value]


@users_app.command("list")
def users_list(
    side: SideArg,
    tenant: TenantOpt,
    active: Annotated[bool | None, typer.Option("--active/--inactive")] = None,
    email: Annotated[str | None, typer.Option()] = None,
) -> None:
    """List the tenant's SF or AE users."""
    which = _side(side)
    lister = users.list_sf_users if which == "sf" else users.list_ae_users

    async def work(conn: AsyncConnection) -> list[Any]:
        return await _all_pages(
            lambda c: lister(conn, tenant, limit=500, cursor=c, active=active, email=email)
        )

    rows = _db(work)
    if which == "sf":
        table = _table(
            f"SF users of {tenant}",
            ("id", "name", "email", "active", "connected AE user"),
            ((u.id, u.name, u.email, u.active, u.connected_ae_user_id) for u in rows),
        )
    else:
        table = _table(
            f"AE users of {tenant}",
            ("id", "name", "email", "SF user (AE's)", "active", "connected SF user"),
            (
                (u.id, u.name, u.email, u.salesforce_user_id, u.active, u.connected_sf_user_id)
                for u in rows
            ),
        )
    console.print(table)


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
    values = {"id": user_id, "name": name, "email": email}
    if _side(side) == "sf":
        data = _input(SfUserCreate, values)
        view: Any = _db(lambda conn: users.create_sf_user(conn, tenant, data, _now()))
    else:
        data = _input(AeUserCreate, {**values, "salesforceUserId": sf_user})
        view = _db(lambda conn: users.create_ae_user(conn, tenant, data, _now()))
    console.print(f"created {side.upper()} user {view.id}")


@users_app.command("deactivate")
def users_deactivate(
    side: SideArg, user_id: Annotated[str, typer.Argument()], tenant: TenantOpt
) -> None:
    """Deactivate a user (its connected-user mapping is removed)."""
    if _side(side) == "sf":
        sf_patch = _input(SfUserPatch, {"active": False})
        sf_id = _input(SfUserCreate, {"id": user_id}).id
        _db(lambda conn: users.update_sf_user(conn, tenant, sf_id, sf_patch))
    else:
        ae_patch = _input(AeUserPatch, {"active": False})
        _db(lambda conn: users.update_ae_user(conn, tenant, _ae_id(user_id), ae_patch))
    console.print(f"deactivated {side.upper()} user {user_id}")


@users_app.command("load")
def users_load(
    side: SideArg,
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="CSV or JSON")],
    tenant: TenantOpt,
) -> None:
    """Create or update users from a CSV (header: id,name,email[,salesforceUserId][,active])
    or a JSON list of objects with the same names."""
    if file.suffix.lower() == ".json":
        raw = json.loads(file.read_text())
    else:
        with file.open(newline="") as handle:
            raw = [
                {k: v for k, v in row.items() if v not in ("", None)}
                for row in csv.DictReader(handle)
            ]
            for row in raw:
                if "active" in row:
                    row["active"] = str(row["active"]).strip().lower() in ("1", "true", "yes")
    which = _side(side)
    if which == "sf":
        sf_rows = [_input(SfUserCreate, row) for row in raw]
        result = _db(lambda conn: users.load_sf_users(conn, tenant, sf_rows, _now()))
    else:
        ae_rows = [_input(AeUserCreate, {**row, "id": _ae_id(str(row["id"]))}) for row in raw]
        result = _db(lambda conn: users.load_ae_users(conn, tenant, ae_rows, _now()))
    console.print(
        f"{result.created} created, {result.updated} updated, "
        f"{result.deactivated_mappings_removed} mappings of deactivated users removed"
    )


def _ae_id(value: str) -> int:
    if not value.isdigit():
        err.print(f"[red]an AE user id is a number, not {value!r}[/red]")
        raise typer.Exit(2)
    return int(value)


# --- connected users and user sync -------------------------------------------------------

mappings_app = typer.Typer(help="Connected users: AE user <-> SF user.", no_args_is_help=True)


@mappings_app.command("list")
def mappings_list(tenant: TenantOpt) -> None:
    """Every connected user of the tenant."""

    async def work(conn: AsyncConnection) -> list[Any]:
        return await _all_pages(lambda c: mappings.list_mappings(conn, tenant, limit=500, cursor=c))

    rows = _db(work)
    console.print(
        _table(
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
    sf_id = _input(SfUserCreate, {"id": sf_user}).id
    view, created = _db(
        lambda conn: mappings.create_mapping(
            conn, tenant, ae_user_id=_ae_id(ae_user), sf_user_id=sf_id, now=_now()
        )
    )
    verb = "connected" if created else "already connected:"
    console.print(f"{verb} AE user {view.ae_user_id} <-> SF user {view.sf_user_id}")


@mappings_app.command("remove")
def mappings_remove(
    ae_user: Annotated[str, typer.Argument(help="AE user id")], tenant: TenantOpt
) -> None:
    """Disconnect an AE user."""
    view = _db(lambda conn: mappings.delete_mapping(conn, tenant, ae_user_id=_ae_id(ae_user)))
    console.print(f"disconnected AE user {view.ae_user_id} from SF user {view.sf_user_id}")


user_sync_app = typer.Typer(help="Connect AE users to SF users by SF user id or email.")


@user_sync_app.callback(invoke_without_command=True)
def user_sync_command(
    tenant: TenantOpt,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="report only, change nothing")] = False,
    all_users: Annotated[
        bool, typer.Option("--all", help="list every user, not only news")
    ] = False,
) -> None:
    """Match AE users to SF users (SF user id first, else email, case-insensitive)."""
    report = _db(lambda conn: user_sync.run_user_sync(conn, tenant, dry_run=dry_run, now=_now()))
    shown = [u for u in report.users if all_users or u.outcome != "already_mapped"]
    console.print(
        _table(
            f"user sync of {tenant}" + (" (dry run: nothing changed)" if dry_run else ""),
            ("AE user", "email", "SF user", "outcome", "why"),
            ((u.ae_user_id, u.ae_email, u.sf_user_id, u.outcome, u.reason) for u in shown),
        )
    )
    console.print(", ".join(f"{n} {k.replace('_', ' ')}" for k, n in report.counts.items()))


# --- records and reconcile ---------------------------------------------------------------

record_app = typer.Typer(help="A record's owners and its audit timeline.")


@record_app.callback(invoke_without_command=True)
def record_command(
    key: Annotated[str, typer.Argument(help="SF lead/contact id, or AE prospect id (digits)")],
    tenant: TenantOpt,
) -> None:
    """Why is this prospect owned by whom: the record's state and every decision about it."""
    by: records.RecordKey = "prospect" if key.isdigit() else "sf"
    value: Any = int(key) if by == "prospect" else key
    if by == "sf":
        try:
            value = to18(key)
        except InvalidSalesforceId as exc:
            err.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from None

    async def work(conn: AsyncConnection) -> tuple[Any, list[Any]]:
        state = await records.get_record(conn, tenant, by, value)
        audit = await _all_pages(
            lambda c: records.record_audit(conn, tenant, by, value, limit=500, cursor=c)
        )
        return state, audit

    state, audit = _db(work)
    console.print(
        _table(f"record {key}", ("field", "value"), state.model_dump(by_alias=False).items())
    )
    console.print(
        _table(
            "audit (oldest first)",
            ("when", "rule", "AE owner after", "SF owner after", "why", "event"),
            (
                (
                    a.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                    a.rule,
                    _ae_owner(a.after),
                    (a.after or {}).get("sf_owner_id"),
                    a.reason,
                    f"{a.event_type} {a.source_id}",
                )
                for a in audit
            ),
        )
    )


def _ae_owner(after: dict[str, Any] | None) -> str:
    after = after or {}
    if after.get("ae_assigned_user_id") is not None:
        return f"user {after['ae_assigned_user_id']}"
    if after.get("ae_assigned_queue_id") is not None:
        return f"queue {after['ae_assigned_queue_id']}"
    return "unassigned"


reconcile_app = typer.Typer(help="Fix records whose owners disagree between AE and SF.")


@reconcile_app.callback(invoke_without_command=True)
def reconcile_command(
    tenant: TenantOpt,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="report only, change nothing")] = False,
) -> None:
    """Apply what the connected users now allow (as S5/S6 would), with a progress bar."""
    with Progress(
        TextColumn("reconciling"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
    ) as progress:
        task = progress.add_task("records", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        report = _db(
            lambda conn: reconciling.reconcile(
                conn, tenant, dry_run=dry_run, now=_now(), on_progress=advance
            )
        )
    console.print(
        _table(
            f"reconcile of {tenant}" + (" (dry run: nothing changed)" if dry_run else ""),
            ("outcome", "records"),
            [
                *report.outcomes.items(),
                *((f"  by {r}", n) for r, n in report.fixed_by_rule.items()),
            ],
        )
    )
    if report.changes:
        console.print(
            _table(
                "changes" + (" (first 100)" if report.changes_truncated else ""),
                ("record", "prospect", "SF record", "rule", "AE owner before", "AE owner after"),
                (
                    (
                        c.record_id,
                        c.prospect_id,
                        c.sf_record_id,
                        c.rule,
                        _ae_owner(c.before),
                        _ae_owner(c.after),
                    )
                    for c in report.changes
                ),
            )
        )


# --- dead letters ------------------------------------------------------------------------

dead_letters_app = typer.Typer(help="Events that could not be applied.", no_args_is_help=True)
TenantFilter = Annotated[
    str | None,
    typer.Option("--tenant", "-t", envvar="OWNERSYNC_TENANT", help="only this tenant's"),
]


def _broker_call(work: Callable[[dl.DeadLetterStore], Awaitable[T]]) -> T:
    settings = _settings()
    broker = build_broker(settings)
    if isinstance(broker, MemoryBroker):
        err.print(
            "[red]the in-process broker keeps its dead letters inside `ownersync run`[/red]: set "
            "OWNERSYNC_AMQP_URL, or use the API of the running process (/v1/.../dead-letters)"
        )
        raise typer.Exit(2)

    async def main() -> T:
        try:
            return await work(dl.dead_letter_store(broker))
        finally:
            await broker.close()

    try:
        return asyncio.run(main())
    except AdminError as exc:
        raise _fail(exc) from None


@dead_letters_app.command("list")
def dead_letters_list(tenant: TenantFilter = None) -> None:
    """Dead letters with the reason each was parked (all tenants without --tenant)."""
    rows = _broker_call(lambda store: dl.list_dead_letters(store, tenant, limit=dl.SCAN_LIMIT))
    console.print(
        _table(
            "dead letters",
            ("id", "tenant", "type", "queue", "reason"),
            ((d.id, d.tenant, d.event_type, d.queue, d.reason) for d in rows.items),
        )
    )


@dead_letters_app.command("replay")
def dead_letters_replay(
    letter_id: Annotated[str | None, typer.Argument(help="the dead letter's id")] = None,
    all_letters: Annotated[bool, typer.Option("--all", help="replay every one")] = False,
    tenant: TenantFilter = None,
) -> None:
    """Republish one dead letter (or --all of them) to its work queue."""
    if (letter_id is None) == (not all_letters):
        err.print("[red]give a dead letter id, or --all[/red]")
        raise typer.Exit(2)
    result = _broker_call(lambda store: dl.replay_dead_letters(store, tenant, letter_id))
    console.print(f"replayed {len(result.replayed)}: {', '.join(result.replayed) or '-'}")
    if result.not_replayable:
        console.print(f"kept (no event type): {', '.join(result.not_replayable)}")


@dead_letters_app.command("discard")
def dead_letters_discard(
    letter_id: Annotated[str, typer.Argument(help="the dead letter's id")],
    tenant: TenantFilter = None,
) -> None:
    """Remove a dead letter for good."""
    result = _broker_call(lambda store: dl.discard_dead_letter(store, tenant, letter_id))
    console.print(f"discarded {result.discarded}")


# What services/cli.py registers: `ownersync <name> …`.
SUB_APPS: list[tuple[typer.Typer, str]] = [
    (tenants_app, "tenant"),
    (users_app, "users"),
    (mappings_app, "mappings"),
    (user_sync_app, "user-sync"),
    (record_app, "record"),
    (reconcile_app, "reconcile"),
    (dead_letters_app, "dead-letters"),
]
