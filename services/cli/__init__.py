"""`ownersync`: one command for every role, the demo and the operator tools.

The operator commands act on the same service layer as the /v1 API (`services.admin`), with the
rights of whoever holds the database settings (no API key): run them where the OWNERSYNC_*
settings of the deployment are.
"""

from __future__ import annotations

import typer

from services.cli.connections import connections_app, secrets_app, tenant_check
from services.cli.dead_letters import dead_letters_app
from services.cli.effects import effects_app
from services.cli.groups import groups_app
from services.cli.mappings import mappings_app, user_sync_app
from services.cli.reconcile import reconcile_app
from services.cli.records import record_app
from services.cli.roles import roles_app
from services.cli.tenants import tenants_app
from services.cli.users import users_app

__all__ = ["app"]

app = typer.Typer(
    help="ownersync keeps prospect ownership right between Account Engagement and Salesforce.\n\n"
    "Configuration comes from OWNERSYNC_* environment variables; with none set it runs on the "
    "embedded default (SQLite ./ownersync.db, in-process broker and simulators).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(roles_app)  # unnamed: its commands are top-level (`ownersync run`, …)
tenants_app.add_typer(connections_app, name="connections")
tenants_app.command("check")(tenant_check)
app.add_typer(tenants_app, name="tenant")
app.add_typer(users_app, name="users")
app.add_typer(groups_app, name="groups")
app.add_typer(mappings_app, name="mappings")
app.add_typer(user_sync_app, name="user-sync")
app.add_typer(record_app, name="record")
app.add_typer(reconcile_app, name="reconcile")
app.add_typer(dead_letters_app, name="dead-letters")
app.add_typer(effects_app, name="effects")
app.add_typer(secrets_app, name="secrets")
