"""One typed Settings object, read from OWNERSYNC_* environment variables.

With nothing set, ownersync runs on the embedded default: a SQLite file in the working
directory, an in-process broker and in-process simulators of Salesforce and AE.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_PLACEHOLDERS = {"changeme", "change-me", "secret", "password", "xxx", "todo"}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OWNERSYNC_", extra="ignore")

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
        100, ge=1, description="unacked messages per consumer (a message holds up to 100 events)"
    )
    batch_size: int = Field(200, ge=1, description="most events applied in one transaction")
    batch_wait_ms: int = Field(5, ge=0, description="how long a worker waits to fill a batch")

    max_body_bytes: int = Field(1_048_576, description="larger request bodies get 413")
    host: str = "127.0.0.1"
    port: int = 8000
    metrics_port: int = Field(
        9100, ge=0, description="/healthz and /metrics of a worker-only process (0 = off)"
    )

    ae_base_url: str | None = Field(None, description="AE API base URL; unset = in-process sim")
    ae_api_key: SecretStr | None = None
    ae_business_unit_id: str = "0Uv000000000000"
    ae_max_concurrency: int = Field(5, ge=1, le=5, description="AE allows 5 concurrent calls")
    ae_daily_quota: int | None = None

    sf_base_url: str | None = Field(None, description="SF instance URL; unset = in-process sim")
    sf_client_id: str | None = None
    sf_client_secret: SecretStr | None = None

    relay_interval_ms: int = Field(200, ge=10, description="outbox poll interval")
    relay_batch_size: int = Field(200, ge=1)
    relay_coalesce_ms: int = Field(
        300,
        ge=0,
        description="an effect waits this long so repeated changes of one record go in one call",
    )
    relay_max_attempts: int = Field(10, ge=1, description="attempts before an effect is dead")

    use_simulators: bool | None = Field(
        None,
        description="serve SF and AE simulators in-process when their URLs are unset; "
        "unset = only on the embedded default (no AMQP URL)",
    )

    operator_key: SecretStr | None = Field(None, description="operator API key (creates tenants)")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "text"

    @field_validator("ae_api_key", "sf_client_secret", "operator_key")
    @classmethod
    def _no_placeholder_secrets(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value().strip().lower() in _PLACEHOLDERS:
            raise ValueError("is a placeholder: set a real secret")
        return value

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def simulate(self) -> bool:
        """Whether a missing AE/SF URL means an in-process simulator (never by accident)."""
        return self.use_simulators if self.use_simulators is not None else self.amqp_url is None
