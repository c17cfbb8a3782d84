"""`ownersync reconcile`: fix records whose owners disagree between AE and SF."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from services.admin import reconcile as reconciling
from services.cli.common import TenantOpt, ae_owner, console, err, now, run_admin, table

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

        report = run_admin(
            lambda conn: reconciling.reconcile(
                conn, tenant, dry_run=dry_run, now=now(), on_progress=advance
            )
        )
    console.print(
        table(
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
            table(
                "changes" + (" (first 100)" if report.changes_truncated else ""),
                ("record", "prospect", "SF record", "rule", "AE owner before", "AE owner after"),
                (
                    (
                        c.record_id,
                        c.prospect_id,
                        c.sf_record_id,
                        c.rule,
                        ae_owner(c.before),
                        ae_owner(c.after),
                    )
                    for c in report.changes
                ),
            )
        )
