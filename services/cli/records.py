"""`ownersync record`: a record's owners and its audit timeline."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer
from sqlalchemy.ext.asyncio import AsyncConnection

from services.admin import records
from services.admin.schemas import AuditEntry, RecordView
from services.cli.common import TenantOpt, ae_owner, all_pages, console, err, run_admin, table
from services.common.sfid import InvalidSalesforceId, to18
from services.common.sla import describe_duration

record_app = typer.Typer(help="A record's owners and its audit timeline.")


@record_app.callback(invoke_without_command=True)
def record_command(
    key: Annotated[str, typer.Argument(help="SF lead/contact id, or AE prospect id (digits)")],
    tenant: TenantOpt,
) -> None:
    """Why is this prospect owned by whom: the record's state and every decision about it."""
    by: records.RecordKey = "prospect" if key.isdigit() else "sf"
    value: int | str = int(key) if by == "prospect" else key
    if by == "sf":
        try:
            value = to18(key)
        except InvalidSalesforceId as exc:
            err.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from None

    async def work(conn: AsyncConnection) -> tuple[RecordView, list[AuditEntry]]:
        state = await records.get_record(conn, tenant, by, value)
        audit = await all_pages(
            lambda c: records.record_audit(conn, tenant, by, value, limit=500, cursor=c)
        )
        return state, audit

    state, audit = run_admin(work)
    fields = state.model_dump(by_alias=False, exclude={"sla"}).items()
    console.print(table(f"record {key}", ("field", "value"), fields))
    if state.sla:
        console.print(
            table(
                "follow-up SLA",
                ("state", "owner", "SLA", "started", "due", "escalations", "why"),
                (
                    (
                        t.state,
                        f"{t.sf_owner_id} (AE user {t.ae_user_id})",
                        describe_duration(t.sla_seconds),
                        _when(t.started_at),
                        _when(t.due_at),
                        t.escalations,
                        t.reason or "",
                    )
                    for t in state.sla
                ),
            )
        )
    console.print(
        table(
            "audit (oldest first)",
            ("when", "rule", "AE owner after", "SF owner after", "why", "event"),
            (
                (
                    a.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                    a.rule,
                    ae_owner(a.after),
                    (a.after or {}).get("sf_owner_id"),
                    a.reason,
                    f"{a.event_type} {a.source_id}",
                )
                for a in audit
            ),
        )
    )


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else ""
