"""Follow-up SLAs and working hours (issue 13)

Groups get a follow-up SLA (`sla_seconds`, business hours only or not, what to do when nobody
is on, how many escalations before the fallback queue or user); members get working hours (a
time zone, weekly hours, away dates); tenants their untouched statuses. `sla_timers` holds the
SLA clocks, claimed when due with FOR UPDATE SKIP LOCKED; `deferred_assignments` the group
assignments that wait for the first member to come on. The stale-AE-event rule is renamed
from A9 to STALE in the audit: A9 is the SLA escalation now.

Revision ID: 0010_sla
Revises: 0009_traces
Create Date: 2026-12-03 05:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_sla"
down_revision: str | None = "0009_traces"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPEN = "state in ('pending', 'running', 'waiting')"
STATES = (
    "state in ('pending', 'running', 'waiting', 'met', 'stopped', 'escalated', 'fallback', "
    "'expired')"
)


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("untouched_statuses", sa.JSON(), nullable=True))
    with op.batch_alter_table("groups") as batch:
        batch.add_column(sa.Column("sla_seconds", sa.Integer(), nullable=True))
        batch.add_column(
            sa.Column("sla_business_hours", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(
            sa.Column("assign_when_closed", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(
            sa.Column("max_escalations", sa.Integer(), nullable=False, server_default="2")
        )
        batch.add_column(sa.Column("fallback_owner_id", sa.String(length=18), nullable=True))
    with op.batch_alter_table("group_members") as batch:
        batch.add_column(sa.Column("time_zone", sa.Text(), nullable=True))
        batch.add_column(sa.Column("weekly_hours", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("away_dates", sa.JSON(), nullable=True))
    op.create_table(
        "sla_timers",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column(
            "record_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("group_id", sa.BigInteger(), nullable=False),
        sa.Column("ae_user_id", sa.BigInteger(), nullable=False),
        sa.Column("sf_owner_id", sa.String(length=18), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("escalations", sa.Integer(), nullable=False),
        sa.Column("seconds", sa.Integer(), nullable=False),
        sa.Column("business_hours", sa.Boolean(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("fired_by", sa.String(length=128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(STATES, name=op.f("ck_sla_timers_state")),
        sa.ForeignKeyConstraint(
            ["record_id"],
            ["records.id"],
            name=op.f("fk_sla_timers_record_id_records"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sla_timers")),
    )
    op.create_index("ix_sla_timers_due", "sla_timers", ["state", "due_at"], unique=False)
    op.create_index(
        "uq_sla_timers_open_record",
        "sla_timers",
        ["record_id"],
        unique=True,
        postgresql_where=sa.text(OPEN),
        sqlite_where=sa.text(OPEN),
    )
    op.create_table(
        "deferred_assignments",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column(
            "record_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("group_id", sa.BigInteger(), nullable=False),
        sa.Column("event", sa.JSON(), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["record_id"],
            ["records.id"],
            name=op.f("fk_deferred_assignments_record_id_records"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deferred_assignments")),
    )
    op.create_index(
        "ix_deferred_assignments_due", "deferred_assignments", ["done_at", "due_at"], unique=False
    )
    op.execute("UPDATE audit_log SET rule = 'STALE' WHERE rule = 'A9'")


def downgrade() -> None:
    op.execute("DELETE FROM audit_log WHERE rule = 'A9'")
    op.execute("UPDATE audit_log SET rule = 'A9' WHERE rule = 'STALE'")
    op.drop_index("ix_deferred_assignments_due", table_name="deferred_assignments")
    op.drop_table("deferred_assignments")
    op.drop_index("uq_sla_timers_open_record", table_name="sla_timers")
    op.drop_index("ix_sla_timers_due", table_name="sla_timers")
    op.drop_table("sla_timers")
    with op.batch_alter_table("group_members") as batch:
        batch.drop_column("away_dates")
        batch.drop_column("weekly_hours")
        batch.drop_column("time_zone")
    with op.batch_alter_table("groups") as batch:
        batch.drop_column("fallback_owner_id")
        batch.drop_column("max_escalations")
        batch.drop_column("assign_when_closed")
        batch.drop_column("sla_business_hours")
        batch.drop_column("sla_seconds")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("untouched_statuses")
