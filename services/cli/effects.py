"""`ownersync effects`: effects to SF and AE not sent yet, or dead; list and discard."""

from __future__ import annotations

from typing import Annotated

import typer
from sqlalchemy.ext.asyncio import AsyncConnection

from services.admin import effects
from services.admin.effects import EffectsPage
from services.admin.schemas import EffectState, EffectView
from services.cli.common import TenantOpt, all_pages, console, now, run_admin, table

effects_app = typer.Typer(
    help="Effects to SF and AE not sent yet (waiting, sending) or dead.", no_args_is_help=True
)


@effects_app.command("list")
def effects_list(
    tenant: TenantOpt,
    state: Annotated[
        str, typer.Option("--state", "-s", help="waiting, sending or dead")
    ] = "waiting",
) -> None:
    """The tenant's effects in a state, oldest first, and how old the oldest is."""
    if state not in effects.STATUS:
        console.print(f"[red]--state is one of {', '.join(effects.STATUS)}[/red]")
        raise typer.Exit(2)
    wanted: EffectState = state  # narrowed by the check above
    at = now()

    async def work(conn: AsyncConnection) -> tuple[EffectsPage, list[EffectView]]:
        first = await effects.list_effects(conn, tenant, wanted, now=at, limit=1)
        rows = await all_pages(
            lambda c: effects.list_effects(conn, tenant, wanted, now=at, limit=500, cursor=c)
        )
        return first, rows

    summary, rows = run_admin(work)
    console.print(
        table(
            f"{state} effects of {tenant}",
            ("id", "record", "target", "attempts", "age (s)", "next try", "last error", "relay"),
            (
                (
                    e.id,
                    e.sf_record_id or e.prospect_id or e.record_id,
                    e.target,
                    e.attempts,
                    f"{e.age_seconds:.0f}",
                    e.next_attempt_at.strftime("%Y-%m-%d %H:%M:%S"),
                    (e.last_error or "")[:80],
                    e.lease_owner,
                )
                for e in rows
            ),
        )
    )
    oldest = summary.oldest_age_seconds
    console.print(
        f"{summary.count} {state}"
        + (f", the oldest {oldest:.0f}s old" if oldest is not None else "")
    )


@effects_app.command("discard")
def effects_discard(
    effect_id: Annotated[int, typer.Argument(help="the effect's id (`effects list`)")],
    tenant: TenantOpt,
) -> None:
    """Give up on a waiting or dead effect: it is never sent (audited on its record)."""
    result = run_admin(
        lambda conn: effects.discard_effect(
            conn, tenant, effect_id, by="an operator (CLI)", now=now()
        )
    )
    superseded = f" and {len(result.superseded)} older" if result.superseded else ""
    console.print(f"discarded effect {result.discarded}{superseded}")
