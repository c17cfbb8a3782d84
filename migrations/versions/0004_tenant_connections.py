"""Tenant connections: each tenant's SF connected app and AE business unit, secrets sealed

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tenant_connections",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("sf_login_url", sa.Text(), nullable=False),
        sa.Column("sf_client_id", sa.Text(), nullable=False),
        sa.Column("sf_client_secret_ciphertext", sa.Text(), nullable=True),
        sa.Column("sf_client_secret_key_id", sa.String(length=32), nullable=True),
        sa.Column("sf_username", sa.Text(), nullable=True),
        sa.Column("sf_private_key_ciphertext", sa.Text(), nullable=True),
        sa.Column("sf_private_key_key_id", sa.String(length=32), nullable=True),
        sa.Column("ae_base_url", sa.Text(), nullable=False),
        sa.Column("ae_business_unit_id", sa.String(length=18), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "(sf_client_secret_ciphertext is null) = (sf_client_secret_key_id is null)",
            name=op.f("ck_tenant_connections_client_secret_key_id"),
        ),
        sa.CheckConstraint(
            "(sf_private_key_ciphertext is null) = (sf_private_key_key_id is null)",
            name=op.f("ck_tenant_connections_private_key_key_id"),
        ),
        sa.CheckConstraint(
            "sf_client_secret_ciphertext is not null or sf_private_key_ciphertext is not null",
            name=op.f("ck_tenant_connections_sf_credential"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_tenant_connections_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_tenant_connections")),
        sa.UniqueConstraint(
            "ae_business_unit_id", name=op.f("uq_tenant_connections_ae_business_unit_id")
        ),
    )


def downgrade() -> None:
    op.drop_table("tenant_connections")
