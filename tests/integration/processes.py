"""Role processes of the integration tests: `ownersync <role>` started as the CLI starts it."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from services.common.settings import Settings
from services.common.web import free_port


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


@asynccontextmanager
async def worker_role(
    settings: Settings, role: str, log: Path, **extra: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """A worker-role process (`relay`, `syncer`, `assigner`) in its own session, as under
    systemd or the benchmark, once its /healthz answers: the process and its metrics URL.
    Terminated on exit."""
    port = free_port()
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.cli",
            role,
            env=role_env(settings, METRICS_PORT=str(port), **extra),
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as client, asyncio.timeout(60):
            while True:
                assert proc.returncode is None, log.read_text()[-2000:]
                try:
                    if (await client.get(f"{url}/healthz")).status_code < 500:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        yield proc, f"{url}/metrics"
    finally:
        if proc.returncode is None:
            proc.terminate()
        async with asyncio.timeout(30):
            await proc.wait()
