"""The store: SQLAlchemy Core tables, the same schema on Postgres and SQLite.

Alembic migrations in `migrations/` create these; the naming convention keeps constraint
names stable across both databases.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.types import TypeDecorator

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

Id = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrements INTEGER only
SfIdType = String(18)


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on both databases (SQLite hands back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: ownersync stores aware UTC times only")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


TS = UtcDateTime()

tenants = Table(
    "tenants",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("salesforce_org_id", SfIdType, nullable=False, unique=True),
    Column("connector_user_id", SfIdType, nullable=False),
    Column("sync_mode", String(16), nullable=False),
    Column("auto_create_prospects", Boolean, nullable=False),
    Column("connector_verified", Boolean, nullable=False),
    Column("webhook_secret", Text, nullable=False),
    Column("created_at", TS, nullable=False),
    Column("previous_webhook_secret", Text, doc="still accepted until previous_secret_expires_at"),
    Column("previous_secret_expires_at", TS),
    Column("endpoint_key_hash", String(64), doc="SHA-256 of the SF outbound-message URL key"),
    Column("previous_endpoint_key_hash", String(64), doc="accepted until the expiry below"),
    Column("previous_endpoint_key_expires_at", TS),
    Column("untouched_statuses", JSON, doc="SF Statuses of a lead nobody worked; null: default"),
    CheckConstraint("sync_mode in ('leads', 'contacts')", name="sync_mode"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True, doc="the public part of the key"),
    Column("tenant_id", ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("name", Text, nullable=False),
    Column("scopes", JSON, nullable=False),
    Column("key_hash", String(64), nullable=False, doc="SHA-256 of the whole key, hex"),
    Column("created_at", TS, nullable=False),
    Column("revoked_at", TS),
    Index("ix_api_keys_tenant", "tenant_id"),
)

sf_users = Table(
    "sf_users",
    metadata,
    Column("tenant_id", ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
    Column("id", SfIdType, primary_key=True),
    Column("name", Text),
    Column("email", Text),
    Column("active", Boolean, nullable=False, default=True),
    Column("created_at", TS, nullable=False),
)

ae_users = Table(
    "ae_users",
    metadata,
    Column("tenant_id", ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("name", Text),
    Column("email", Text),
    Column("salesforce_user_id", SfIdType, doc="the SF user AE says this user is, when known"),
    Column("active", Boolean, nullable=False, default=True),
    Column("created_at", TS, nullable=False),
)

connected_users = Table(
    "connected_users",
    metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("ae_user_id", BigInteger, primary_key=True, autoincrement=False),
    Column("sf_user_id", SfIdType, nullable=False),
    Column("created_at", TS, nullable=False),
    UniqueConstraint("tenant_id", "sf_user_id", name="uq_connected_users_sf_user"),
    ForeignKeyConstraint(
        ["tenant_id", "ae_user_id"], ["ae_users.tenant_id", "ae_users.id"], ondelete="CASCADE"
    ),
    ForeignKeyConstraint(
        ["tenant_id", "sf_user_id"], ["sf_users.tenant_id", "sf_users.id"], ondelete="CASCADE"
    ),
)

queues = Table(
    "queues",
    metadata,
    Column("tenant_id", ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
    Column("id", SfIdType, primary_key=True),
    Column("name", Text, nullable=False),
)

groups = Table(
    "groups",
    metadata,
    Column("tenant_id", ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("name", Text, nullable=False),
    Column("sla_seconds", Integer, doc="follow-up SLA; null: off"),
    Column("sla_business_hours", Boolean, nullable=False, default=False),
    Column("assign_when_closed", Boolean, nullable=False, default=False),
    Column("max_escalations", Integer, nullable=False, default=2),
    Column("fallback_owner_id", SfIdType, doc="SF queue or user after max_escalations"),
)

group_members = Table(
    "group_members",
    metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("group_id", BigInteger, primary_key=True, autoincrement=False),
    Column("ae_user_id", BigInteger, primary_key=True, autoincrement=False),
    Column("weight", Integer, nullable=False, default=1),
    Column("daily_cap", Integer),
    Column("paused", Boolean, nullable=False, default=False),
    Column("last_assigned_at", TS),
    Column("assigned_today", Integer, nullable=False, default=0),
    Column("assigned_total", BigInteger, nullable=False, default=0),
    Column("counted_on", String(10), doc="the UTC day assigned_today counts"),
    Column("time_zone", Text, doc="IANA zone of the weekly hours and away dates"),
    Column("weekly_hours", JSON, doc='{"mon": "09:00-17:00", …}; null: always on'),
    Column("away_dates", JSON, doc="local dates, YYYY-MM-DD"),
    ForeignKeyConstraint(
        ["tenant_id", "group_id"], ["groups.tenant_id", "groups.id"], ondelete="CASCADE"
    ),
    ForeignKeyConstraint(
        ["tenant_id", "ae_user_id"], ["ae_users.tenant_id", "ae_users.id"], ondelete="CASCADE"
    ),
)

records = Table(
    "records",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("tenant_id", ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("prospect_id", BigInteger, doc="AE prospect id, once AE has the prospect"),
    Column("sf_record_id", SfIdType),
    Column("sf_object", String(16)),
    Column("email", Text),
    Column("ae_assigned_user_id", BigInteger),
    Column("ae_assigned_queue_id", SfIdType),
    Column("sf_owner_id", SfIdType),
    Column("last_modstamp", TS, doc="SystemModstamp of the newest SF notification applied"),
    Column("ae_modstamp", TS, doc="occurredAt of the newest AE event applied"),
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    UniqueConstraint("tenant_id", "prospect_id", name="uq_records_prospect"),
    UniqueConstraint("tenant_id", "sf_record_id", name="uq_records_sf_record"),
    Index("ix_records_tenant_email", "tenant_id", "email"),
)

inbox = Table(
    "inbox",
    metadata,
    Column("event_id", String(36), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("type", String(64), nullable=False),
    Column("source_id", Text, nullable=False),
    Column("processed_at", TS, nullable=False),
    Index("ix_inbox_processed_at", "processed_at"),  # pruning
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("tenant_id", String(64), nullable=False),
    Column("record_id", ForeignKey("records.id", ondelete="SET NULL")),
    Column("event_id", String(36)),
    Column("source_id", Text),
    Column("event_type", String(64)),
    Column("rule", String(8), nullable=False),
    Column("before", JSON),
    Column("after", JSON),
    Column("reason", Text, nullable=False),
    Column("created_at", TS, nullable=False),
    Column("trace_id", String(32), doc="the OpenTelemetry trace of the decision, when traced"),
    Index("ix_audit_log_record", "record_id", "id"),
)

_UNSETTLED = text("status in ('pending', 'sending', 'dead')")
_SETTLED = text("status in ('done', 'superseded', 'discarded')")

outbox = Table(
    "outbox",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("tenant_id", String(64), nullable=False),
    Column("record_id", ForeignKey("records.id", ondelete="CASCADE"), nullable=False),
    Column("target", String(8), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("event_id", String(36)),
    Column("status", String(16), nullable=False, default="pending"),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", TS, nullable=False),
    Column("last_error", Text),
    Column("created_at", TS, nullable=False),
    Column("done_at", TS),
    Column("lease_owner", String(128), doc="the relay replica sending the row (status sending)"),
    Column("lease_version", BigInteger, doc="the fencing version of that replica's record lease"),
    Column("traceparent", String(55), doc="W3C trace context of the decision, for the send"),
    CheckConstraint(
        "status in ('pending', 'sending', 'done', 'superseded', 'dead', 'discarded')",
        name="status",
    ),
    CheckConstraint("target in ('ae', 'sf')", name="target"),
    # Partial: the relay's claim and the operators' lists read unsettled rows, few whatever the
    # table's size; pruning reads settled ones by age.
    Index("ix_outbox_unsettled", "id", postgresql_where=_UNSETTLED, sqlite_where=_UNSETTLED),
    Index("ix_outbox_settled_done_at", "done_at", postgresql_where=_SETTLED, sqlite_where=_SETTLED),
    Index("ix_outbox_record_status", "record_id", "status"),
)

# One relay replica at a time sends a record's effects: the one holding its lease. `version`
# grows with every claim and fences a settle: a replica whose lease was taken over cannot settle.
relay_leases = Table(
    "relay_leases",
    metadata,
    Column("record_id", ForeignKey("records.id", ondelete="CASCADE"), primary_key=True),
    Column("owner", String(128), doc="replica id; null once released"),
    Column("version", BigInteger, nullable=False),
    Column("expires_at", TS, nullable=False, doc="database clock"),
    Column(
        "sent",
        JSON,
        doc="by effect kind, what the last settled send carried, under which lease version and "
        "the record's stamp of the target's own changes then (see services.relay.relay)",
    ),
)

# AE's daily call quota of each business unit, counted by every relay replica together.
ae_quota = Table(
    "ae_quota",
    metadata,
    Column("business_unit_id", String(18), primary_key=True),
    Column("day", Date, nullable=False, doc="the day (OWNERSYNC_AE_QUOTA_TIMEZONE) counted"),
    Column("calls", Integer, nullable=False),
)

# AE's concurrent calls per business unit: a call holds one slot row, leased, while it runs.
ae_slots = Table(
    "ae_slots",
    metadata,
    Column("business_unit_id", String(18), primary_key=True),
    Column("slot", Integer, primary_key=True),
    Column("holder", String(160), doc="the replica and call holding the slot"),
    Column("expires_at", TS),
)

# Follow-up SLA clocks (services/common/sla.py). At most one open timer per record; the SLA
# loop claims due ones with FOR UPDATE SKIP LOCKED.
SLA_OPEN = "state in ('pending', 'running', 'waiting')"
sla_timers = Table(
    "sla_timers",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("tenant_id", String(64), nullable=False),
    Column("record_id", ForeignKey("records.id", ondelete="CASCADE"), nullable=False),
    Column("group_id", BigInteger, nullable=False),
    Column("ae_user_id", BigInteger, nullable=False, doc="the member the clock runs for"),
    Column("sf_owner_id", SfIdType, nullable=False, doc="that member's SF user"),
    Column("state", String(16), nullable=False),
    Column("escalations", Integer, nullable=False, doc="moves of the record by its SLA so far"),
    Column("seconds", Integer, nullable=False),
    Column("business_hours", Boolean, nullable=False),
    Column("started_at", TS, doc="when SF confirmed the owner"),
    Column("due_at", TS),
    Column("ended_at", TS),
    Column("reason", Text),
    Column("fired_by", String(128), doc="the replica that fired it"),
    Column("created_at", TS, nullable=False),
    CheckConstraint(
        "state in ('pending', 'running', 'waiting', 'met', 'stopped', 'escalated', 'fallback', "
        "'expired')",
        name="state",
    ),
    Index("ix_sla_timers_due", "state", "due_at"),
    Index(
        "uq_sla_timers_open_record",
        "record_id",
        unique=True,
        postgresql_where=text(SLA_OPEN),
        sqlite_where=text(SLA_OPEN),
    ),
)

# A5 actions waiting for the first member of their group to come on (the group does not assign
# when closed): the SLA loop decides the event again when `due_at` comes.
deferred_assignments = Table(
    "deferred_assignments",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("tenant_id", String(64), nullable=False),
    Column("record_id", ForeignKey("records.id", ondelete="CASCADE"), nullable=False),
    Column("group_id", BigInteger, nullable=False),
    Column("event", JSON, nullable=False, doc="the AE event, decided again when due"),
    Column("due_at", TS, nullable=False),
    Column("done_at", TS),
    Column("created_at", TS, nullable=False),
    Index("ix_deferred_assignments_due", "done_at", "due_at"),
)

# Each tenant's own SF org and AE business unit. Secrets are sealed (services.common.crypto):
# the ciphertext column holds nonce + AES-GCM output in base64, its key id column names the key.
tenant_connections = Table(
    "tenant_connections",
    metadata,
    Column("tenant_id", ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
    Column("sf_login_url", Text, nullable=False, doc="OAuth at {url}/services/oauth2/token"),
    Column("sf_client_id", Text, nullable=False, doc="the connected app's consumer key"),
    Column("sf_client_secret_ciphertext", Text, doc="client-credentials flow"),
    Column("sf_client_secret_key_id", String(32)),
    Column("sf_username", Text, doc="the user a JWT bearer token is issued for"),
    Column("sf_private_key_ciphertext", Text, doc="JWT bearer flow: the PEM signing key"),
    Column("sf_private_key_key_id", String(32)),
    Column("ae_base_url", Text, nullable=False),
    Column("ae_business_unit_id", String(18), nullable=False, unique=True),
    Column("updated_at", TS, nullable=False),
    CheckConstraint(
        "(sf_client_secret_ciphertext is null) = (sf_client_secret_key_id is null)",
        name="client_secret_key_id",
    ),
    CheckConstraint(
        "(sf_private_key_ciphertext is null) = (sf_private_key_key_id is null)",
        name="private_key_key_id",
    ),
    CheckConstraint(
        "sf_client_secret_ciphertext is not null or sf_private_key_ciphertext is not null",
        name="sf_credential",
    ),
)
