"""SF endpoint key: the outbound-message URL's `key`, stored hashed, rotatable with a grace

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 19:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Tenants created before this have no key: their SF messages are refused (401) until an
    # operator sets one (`ownersync tenant rotate-endpoint-key`), never accepted unauthenticated.
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("endpoint_key_hash", sa.String(length=64), nullable=True))
        batch.add_column(
            sa.Column("previous_endpoint_key_hash", sa.String(length=64), nullable=True)
        )
        batch.add_column(
            sa.Column("previous_endpoint_key_expires_at", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("previous_endpoint_key_expires_at")
        batch.drop_column("previous_endpoint_key_hash")
        batch.drop_column("endpoint_key_hash")
