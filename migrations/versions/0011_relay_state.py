"""Relay state: what each record's last settled send carried, shared by every relay replica

Revision ID: 0011_relay_state
Revises: 0010_sla
Create Date: 2026-12-03 06:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_relay_state"
down_revision: str | None = "0010_sla"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("relay_leases") as batch:
        batch.add_column(sa.Column("sent", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("relay_leases") as batch:
        batch.drop_column("sent")
