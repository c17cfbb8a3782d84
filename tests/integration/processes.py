"""Role processes of the integration tests: `ownersync <role>` started as the CLI starts it."""

from __future__ import annotations

import os

from services.common.settings import Settings


def role_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of an `ownersync <role>` process on this run's database and broker
    (queue arguments as `settings` declare them), plus `extra` OWNERSYNC_* settings."""
    return {
        **os.environ,
        "OWNERSYNC_DATABASE_URL": settings.database_url,
        "OWNERSYNC_AMQP_URL": settings.amqp_url or "",
        "OWNERSYNC_EXCHANGE": settings.exchange,
        "OWNERSYNC_QUEUE_PREFIX": settings.queue_prefix,
        "OWNERSYNC_DELIVERY_LIMIT": str(settings.delivery_limit),
        "OWNERSYNC_RETRY_DELAY_MS": str(settings.retry_delay_ms),
        "OWNERSYNC_RETRY_LIMIT": str(settings.retry_limit),
        **{f"OWNERSYNC_{name}": value for name, value in extra.items()},
    }
