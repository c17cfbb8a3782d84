"""`ownersync dead-letters`: events that could not be applied; list, replay, discard."""

from __future__ import annotations

from typing import Annotated

import typer

from services.admin import dead_letters
from services.cli.common import console, err, run_on_dead_letters, table

dead_letters_app = typer.Typer(help="Events that could not be applied.", no_args_is_help=True)
TenantFilter = Annotated[
    str | None,
    typer.Option("--tenant", "-t", envvar="OWNERSYNC_TENANT", help="only this tenant's"),
]


@dead_letters_app.command("list")
def dead_letters_list(tenant: TenantFilter = None) -> None:
    """Dead letters with the reason each was parked (all tenants without --tenant)."""
    rows = run_on_dead_letters(
        lambda store: dead_letters.list_dead_letters(store, tenant, limit=dead_letters.SCAN_LIMIT)
    )
    console.print(
        table(
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
    result = run_on_dead_letters(
        lambda store: dead_letters.replay_dead_letters(store, tenant, letter_id)
    )
    console.print(f"replayed {len(result.replayed)}: {', '.join(result.replayed) or '-'}")
    if result.not_replayable:
        console.print(f"kept (no event type): {', '.join(result.not_replayable)}")


@dead_letters_app.command("discard")
def dead_letters_discard(
    letter_id: Annotated[str, typer.Argument(help="the dead letter's id")],
    tenant: TenantFilter = None,
) -> None:
    """Remove a dead letter for good."""
    result = run_on_dead_letters(
        lambda store: dead_letters.discard_dead_letter(store, tenant, letter_id)
    )
    console.print(f"discarded {result.discarded}")
