"""One typed Settings object, read from OWNERSYNC_* environment variables.

With nothing set, ownersync runs on the embedded default: a SQLite file in the working
directory, an in-process broker and in-process simulators of Salesforce and AE.
"""

from __future__ import annotations

import re
from typing import Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.crypto import KeyRing, SecretsKeyMissing

_PLACEHOLDERS = {"changeme", "change-me", "secret", "password", "xxx", "todo"}
MIN_OPERATOR_KEY_LENGTH = 32
# "demo" as a word: demo-operator-key, ownersync_demo_key. Random keys never hold it (hex has
# no m or o), so a real key is not mistaken for one.
_DEMO_WORD = re.compile(r"(?<![a-z0-9])demo(?![a-z0-9])", re.IGNORECASE)


def is_demo_key(key: str) -> bool:
    return _DEMO_WORD.search(key) is not None


class Settings(BaseSettings):
    # An error about a setting never echoes its value: the values include keys and secrets.
    model_config = SettingsConfigDict(
        env_prefix="OWNERSYNC_", extra="ignore", hide_input_in_errors=True
    )

    database_url: str = Field(
        "sqlite+aiosqlite:///./ownersync.db",
        description="SQLAlchemy async URL: sqlite+aiosqlite:///… or postgresql+asyncpg://…",
    )
    amqp_url: str | None = Field(
        None, description="RabbitMQ URL (amqp://…); unset = the in-process broker"
    )
    exchange: str = "ownersync.events"
    queue_prefix: str = Field("ownersync", description="prefix of every queue ownersync declares")
    delivery_limit: int = Field(5, ge=1, description="x-delivery-limit of the quorum queues")
    prefetch: int = Field(
        100,
        ge=1,
        description="unacked messages per consumer (an SF message holds up to 100 events; the "
        "assigner, whose webhooks are one event each, holds at least batch_size)",
    )
    batch_size: int = Field(
        500,
        ge=1,
        description="most events applied in one transaction (a backlog drains in batches this "
        "large; otherwise a batch holds what arrived while the one before was applied)",
    )
    batch_wait_ms: int = Field(
        0,
        ge=0,
        description="how long a worker waits for more messages once one has come (0: none, a "
        "lone message is applied at once; a wait trades that much latency for fewer "
        "transactions at a low rate)",
    )
    uvloop: bool = Field(
        True, description="run the roles on uvloop when it is installed (else asyncio's loop)"
    )
    hold_backoff_ms: int = Field(
        200,
        ge=1,
        description="first wait before a worker retries a batch the database or the broker "
        "failed (doubled each time, up to hold_backoff_max_ms); deliveries are not spent",
    )
    hold_backoff_max_ms: int = Field(5000, ge=1, description="longest wait between those retries")
    retry_delay_ms: int = Field(
        2000,
        ge=1,
        description="how long a message that lost a race (unique violation, deadlock) waits in "
        "the <prefix>.retry queue before it goes back to its work queue",
    )
    retry_limit: int = Field(
        5,
        ge=0,
        description="delayed retries of a message that keeps losing races before it is "
        "dead-lettered",
    )
    heartbeat_timeout_s: float = Field(
        60.0,
        gt=0,
        description="a worker whose consume loop has not beaten for this long answers "
        "/healthz with 503",
    )
    db_connect_timeout_s: float = Field(
        5.0, gt=0, description="Postgres: most seconds to open a connection"
    )
    db_command_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Postgres: most seconds the client waits for one statement (a black-holed "
        "server is given up on)",
    )
    db_statement_timeout_ms: int = Field(
        20000,
        ge=0,
        description="Postgres: the server's statement_timeout on every connection (0 = none)",
    )

    max_body_bytes: int = Field(1_048_576, ge=1, description="larger request bodies get 413")
    api_rate_per_second: float = Field(
        50.0, gt=0, description="/v1 requests per second each API key may make, sustained"
    )
    api_rate_burst: int = Field(
        500, ge=1, description="/v1 requests an API key may make at once before the rate applies"
    )
    host: str = "127.0.0.1"
    port: int = Field(
        8000, ge=0, le=65535, description="the receiver's port (0 = any free one, logged at start)"
    )
    metrics_port: int = Field(
        9100, ge=0, description="/healthz and /metrics of a worker-only process (0 = off)"
    )

    ae_base_url: str | None = Field(None, description="AE API base URL; unset = in-process sim")
    ae_business_unit_id: str = "0Uv000000000000"
    ae_max_concurrency: int = Field(5, ge=1, le=5, description="AE allows 5 concurrent calls")
    ae_daily_quota: int | None = Field(
        None, ge=1, description="AE calls per business unit per day, all relays together"
    )
    ae_quota_timezone: str = Field(
        "UTC", description="the time zone whose midnight starts a new AE quota day"
    )

    ae_bulk_threshold: int = Field(
        1000,
        ge=0,
        description="AE owner updates waiting in one tenant above which they go by AE import "
        "(bulk mode, services/relay/bulk.py); 0 = off",
    )
    ae_bulk_size: int = Field(
        5_000,
        ge=1,
        description="records per AE import (the relay holds an import's records in memory: at "
        "10,000 its peak RSS in a 50,000-record burst was 155 MB, at 5,000 143 MB, for 4.9 AE "
        "calls per 1,000 records instead of 4.5)",
    )
    ae_bulk_lease_seconds: float = Field(
        600.0,
        gt=0,
        description="the longest an AE import may take before its records go one by one "
        "(their leases, the relay's own, are renewed while it runs)",
    )
    ae_bulk_poll_ms: int = Field(2000, ge=10, description="how often an import's status is read")
    ae_bulk_check_ms: int = Field(
        5000,
        ge=10,
        description="how often each relay counts each tenant's waiting owner updates against "
        "AE_BULK_THRESHOLD (the count reads every unsettled row)",
    )

    sf_base_url: str | None = Field(None, description="SF instance URL; unset = in-process sim")
    sf_client_id: str | None = None
    sf_client_secret: SecretStr | None = None

    relay_interval_ms: int = Field(200, ge=10, description="outbox poll interval")
    sla_interval_ms: int = Field(
        1000, ge=10, description="how often each assigner looks for due follow-up SLA timers"
    )
    relay_batch_size: int = Field(200, ge=1)
    relay_metrics_interval_ms: int = Field(
        10_000,
        ge=100,
        description="how often each relay counts the outbox for /metrics (effects waiting, "
        "oldest age): a read of every unsettled row",
    )
    relay_settle_wait_ms: int = Field(
        100,
        ge=0,
        description="how long an answered record waits for others in flight to be settled in "
        "the same transaction",
    )
    relay_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="the CPU priority (nice) of a process that runs the relay alone: its work "
        "waits in the outbox, so on a shared host acking SF and deciding go first (0 = normal; "
        "services/common/priority.py)",
    )
    relay_coalesce_ms: int = Field(
        300,
        ge=0,
        description="an effect waits this long so repeated changes of one record go in one call",
    )
    relay_backoff_max_seconds: float = Field(
        300.0,
        gt=0,
        description="longest wait between tries of an effect that failed for a transient "
        "reason; such an effect is tried until it succeeds or an operator discards it",
    )
    relay_lease_seconds: float = Field(
        60.0,
        gt=0,
        description="how long a relay owns a record it claimed before another relay may take "
        "it over (longer than the slowest send)",
    )
    inbox_retention_hours: float = Field(
        48.0,
        ge=24.0,
        description="inbox entries (redelivery dedupe) and settled outbox rows older than this "
        "are pruned; at least SF's 24 h retry window (the audit log is kept)",
    )
    prune_interval_seconds: float = Field(300.0, gt=0, description="how often the relay prunes")
    prune_batch_size: int = Field(5000, ge=1, description="most rows one pruning DELETE removes")
    relay_replica_id: str | None = Field(
        None, max_length=128, description="this relay's name in leases; unset = host:pid"
    )

    use_simulators: bool | None = Field(
        None,
        description="serve SF and AE simulators in-process when their URLs are unset; "
        "unset = only on the embedded default (no AMQP URL)",
    )

    operator_key: SecretStr | None = Field(
        None,
        description=f"operator API key (creates tenants): {MIN_OPERATOR_KEY_LENGTH} characters at "
        "least; a demo key only with the simulators",
    )
    secrets_key: SecretStr | None = Field(
        None,
        description="key ring sealing stored secrets: `kid:BASE64KEY[,kid:OLDKEY…]`, the first "
        "seals, all open; unset = no secret can be stored",
    )
    trace_url_template: str | None = Field(
        None,
        description="the console links a decision to its trace here, `{trace_id}` filled in "
        "(e.g. https://grafana.example/explore?traceId={trace_id}); unset = no link",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "text"

    @field_validator("sf_client_secret", "operator_key")
    @classmethod
    def _no_placeholder_secrets(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value().strip().lower() in _PLACEHOLDERS:
            raise ValueError("is a placeholder: set a real secret")
        return value

    @field_validator("operator_key")
    @classmethod
    def _long_operator_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_OPERATOR_KEY_LENGTH:
            raise ValueError(
                f"is {len(value.get_secret_value())} characters: an operator key needs "
                f"{MIN_OPERATOR_KEY_LENGTH} at least (e.g. `openssl rand -hex 32`)"
            )
        return value

    @model_validator(mode="after")
    def _demo_operator_key_only_with_simulators(self) -> Self:
        # A demo key is published (in the repository, in docs): it may only guard a stack
        # whose SF and AE are simulators, never one wired to real systems.
        if (
            self.operator_key is not None
            and is_demo_key(self.operator_key.get_secret_value())
            and not self.simulate
        ):
            raise ValueError(
                "OWNERSYNC_OPERATOR_KEY is a demo key: it is accepted only with the simulators "
                "on (OWNERSYNC_USE_SIMULATORS); set a random key of your own"
            )
        return self

    @field_validator("ae_quota_timezone")
    @classmethod
    def _known_time_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"is not a known time zone: {value}") from exc
        return value

    @field_validator("secrets_key", mode="before")
    @classmethod
    def _blank_secrets_key_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("secrets_key")
    @classmethod
    def _secrets_key_parses(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            KeyRing.parse(value.get_secret_value())  # SecretsKeyInvalid names the problem
        return value

    @property
    def keyring(self) -> KeyRing:
        """The key ring sealing stored secrets; SecretsKeyMissing says how to set one."""
        if self.secrets_key is None:
            raise SecretsKeyMissing()
        return KeyRing.parse(self.secrets_key.get_secret_value())

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def simulate(self) -> bool:
        """Whether a missing AE/SF URL means an in-process simulator (never by accident)."""
        return self.use_simulators if self.use_simulators is not None else self.amqp_url is None
