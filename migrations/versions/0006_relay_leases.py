"""Relay leases: effects claimed per record by one relay replica, fenced; AE limits shared

The relay marks the rows it sends `sending` with its replica id and the fencing version of the
record's lease (`relay_leases`, one row per record, times from the database clock). AE's daily
quota (`ae_quota`) and its 5 concurrent calls (`ae_slots`) per business unit are counted in
Postgres so that every relay replica shares them.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 01:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_STATUS = "status in ('pending', 'done', 'superseded', 'dead')"
NEW_STATUS = "status in ('pending', 'sending', 'done', 'superseded', 'dead', 'discarded')"


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_constraint(op.f("ck_outbox_status"), type_="check")
        batch.create_check_constraint(op.f("ck_outbox_status"), NEW_STATUS)
        batch.add_column(sa.Column("lease_owner", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("lease_version", sa.BigInteger(), nullable=True))
    op.create_index("ix_outbox_record_status", "outbox", ["record_id", "status"], unique=False)
    op.create_table(
        "relay_leases",
        sa.Column("record_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite")),
        sa.Column("owner", sa.String(length=128), nullable=True),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["record_id"],
            ["records.id"],
            name=op.f("fk_relay_leases_record_id_records"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("record_id", name=op.f("pk_relay_leases")),
    )
    op.create_table(
        "ae_quota",
        sa.Column("business_unit_id", sa.String(length=18), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("calls", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("business_unit_id", name=op.f("pk_ae_quota")),
    )
    op.create_table(
        "ae_slots",
        sa.Column("business_unit_id", sa.String(length=18), nullable=False),
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.Column("holder", sa.String(length=160), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("business_unit_id", "slot", name=op.f("pk_ae_slots")),
    )


def downgrade() -> None:
    op.drop_table("ae_slots")
    op.drop_table("ae_quota")
    op.drop_table("relay_leases")
    op.drop_index("ix_outbox_record_status", table_name="outbox")
    op.execute("UPDATE outbox SET status = 'pending' WHERE status = 'sending'")
    op.execute("UPDATE outbox SET status = 'dead' WHERE status = 'discarded'")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("lease_version")
        batch.drop_column("lease_owner")
        batch.drop_constraint(op.f("ck_outbox_status"), type_="check")
        batch.create_check_constraint(op.f("ck_outbox_status"), OLD_STATUS)
