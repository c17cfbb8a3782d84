"""Indexes that keep the hot queries flat as inbox, records, outbox and audit_log grow

- outbox: the relay claims unsettled rows in id order; a partial index on those rows only
  (pending, sending, dead: few, whatever the table's size) replaces (status, next_attempt_at),
  which held every done row too. Settled rows get a partial index on done_at for pruning.
- inbox: processed_at, so that pruning finds the old entries without reading the table.
- audit_log: (record_id, id) instead of (tenant_id, record_id): the audit of a record in id
  order, and the record_id lookups of a merge and of ON DELETE SET NULL, which the old index
  (tenant first) could not serve.

Revision ID: 0008_scale
Revises: 0006
Create Date: 2026-12-03 05:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_scale"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNSETTLED = sa.text("status in ('pending', 'sending', 'dead')")
SETTLED = sa.text("status in ('done', 'superseded', 'discarded')")


def upgrade() -> None:
    op.create_index(
        "ix_outbox_unsettled", "outbox", ["id"], postgresql_where=UNSETTLED, sqlite_where=UNSETTLED
    )
    op.drop_index("ix_outbox_pending", table_name="outbox")
    op.create_index(
        "ix_outbox_settled_done_at",
        "outbox",
        ["done_at"],
        postgresql_where=SETTLED,
        sqlite_where=SETTLED,
    )
    op.create_index("ix_inbox_processed_at", "inbox", ["processed_at"])
    op.create_index("ix_audit_log_record", "audit_log", ["record_id", "id"])
    op.drop_index("ix_audit_log_tenant_record", table_name="audit_log")


def downgrade() -> None:
    op.create_index("ix_audit_log_tenant_record", "audit_log", ["tenant_id", "record_id"])
    op.drop_index("ix_audit_log_record", table_name="audit_log")
    op.drop_index("ix_inbox_processed_at", table_name="inbox")
    op.drop_index("ix_outbox_settled_done_at", table_name="outbox")
    op.create_index("ix_outbox_pending", "outbox", ["status", "next_attempt_at"])
    op.drop_index("ix_outbox_unsettled", table_name="outbox")
