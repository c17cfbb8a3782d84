"""`ownersync groups`: round-robin groups, their follow-up SLAs and their members' working hours."""

from __future__ import annotations

import re
from typing import Annotated, Any

import typer
from sqlalchemy.ext.asyncio import AsyncConnection

from services.admin import groups
from services.admin.schemas import GroupMemberPut, GroupSlaPut, GroupView
from services.cli.common import TenantOpt, all_pages, console, err, parse_input, run_admin, table
from services.common.sla import describe_duration

groups_app = typer.Typer(
    help="Round-robin groups: follow-up SLAs and working hours.", no_args_is_help=True
)
GroupArg = Annotated[int, typer.Argument(help="AE group id")]

_DURATION = re.compile(r"^\s*(\d+)\s*(h|m|min|s)?\s*$")
_UNIT = {"h": 3600, "m": 60, "min": 60, "s": 1, None: 1}


def parse_duration(text: str) -> int:
    """`2h`, `90m`, `45s` or plain seconds."""
    match = _DURATION.match(text)
    if match is None:
        err.print(f"[red]{text!r} is not a duration like 2h, 90m or 45s[/red]")
        raise typer.Exit(2)
    return int(match.group(1)) * _UNIT[match.group(2)]


def _sla_text(group: GroupView) -> str:
    sla = group.sla
    if sla.sla_seconds is None:
        return "off"
    text = describe_duration(sla.sla_seconds)
    if sla.sla_business_hours:
        text += " of business hours"
    fallback = f", then {sla.fallback_owner_id}" if sla.fallback_owner_id else ""
    return f"{text}; {sla.max_escalations} escalations{fallback}"


@groups_app.command("list")
def groups_list(tenant: TenantOpt) -> None:
    """The tenant's groups, members and follow-up SLAs."""

    async def work(conn: AsyncConnection) -> list[GroupView]:
        return await all_pages(lambda c: groups.list_groups(conn, tenant, limit=200, cursor=c))

    found = run_admin(work)
    rows = [
        (g.id, g.name, ", ".join(str(m.ae_user_id) for m in g.members), _sla_text(g)) for g in found
    ]
    console.print(table("Groups", ("id", "name", "members", "follow-up SLA"), rows))


@groups_app.command("sla")
def groups_sla(
    group_id: GroupArg,
    tenant: TenantOpt,
    sla: Annotated[
        str | None, typer.Option("--sla", help="e.g. 2h, 90m, 45s; omit to switch it off")
    ] = None,
    business_hours: Annotated[
        bool, typer.Option("--business-hours", help="count the owner's working hours only")
    ] = False,
    assign_when_closed: Annotated[
        bool, typer.Option("--assign-when-closed", help="nobody on: assign anyway")
    ] = False,
    max_escalations: Annotated[int, typer.Option(help="moves before the fallback")] = 2,
    fallback: Annotated[str | None, typer.Option(help="SF queue or user id")] = None,
) -> None:
    """Set a group's follow-up SLA: a record nobody works goes to the next member."""
    values: dict[str, Any] = {
        "slaSeconds": parse_duration(sla) if sla is not None else None,
        "slaBusinessHours": business_hours,
        "assignWhenClosed": assign_when_closed,
        "maxEscalations": max_escalations,
        "fallbackOwnerId": fallback,
    }
    data = parse_input(GroupSlaPut, values)
    view = run_admin(lambda conn: groups.set_group_sla(conn, tenant, group_id, data))
    console.print(f"group {view.id} ({view.name}): follow-up SLA {_sla_text(view)}")


@groups_app.command("hours")
def groups_hours(
    group_id: GroupArg,
    ae_user: Annotated[int, typer.Argument(help="AE user id of the member")],
    tenant: TenantOpt,
    tz: Annotated[str | None, typer.Option("--tz", help="IANA zone")] = None,
    hours: Annotated[
        list[str] | None, typer.Option("--hours", help="repeatable: mon=09:00-17:00")
    ] = None,
    away: Annotated[list[str] | None, typer.Option("--away", help="YYYY-MM-DD, repeatable")] = None,
    weight: Annotated[int, typer.Option()] = 1,
    daily_cap: Annotated[int | None, typer.Option()] = None,
) -> None:
    """Set a member's working hours (with its weight and cap: the member's settings in full)."""
    weekly: dict[str, str] | None = None
    if hours:
        weekly = {}
        for item in hours:
            day, _, span = item.partition("=")
            weekly[day.strip()] = span.strip()
    values = {
        "weight": weight,
        "dailyCap": daily_cap,
        "timeZone": tz,
        "weeklyHours": weekly,
        "awayDates": away or [],
    }
    data = parse_input(GroupMemberPut, values)
    member, _ = run_admin(lambda conn: groups.put_member(conn, tenant, group_id, ae_user, data))
    shown = ", ".join(f"{d} {s}" for d, s in (member.weekly_hours or {}).items()) or "always on"
    console.print(f"member {member.ae_user_id} of group {group_id}: {shown} ({tz or 'UTC'})")
