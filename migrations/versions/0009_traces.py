"""Traces: audit rows carry their trace id, outbox rows the trace context the relay continues

Revision ID: 0009_traces
Revises: 0008_scale
Create Date: 2026-12-03 05:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_traces"
down_revision: str | None = "0008_scale"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("audit_log") as batch:
        batch.add_column(sa.Column("trace_id", sa.String(length=32), nullable=True))
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("traceparent", sa.String(length=55), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("traceparent")
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_column("trace_id")
