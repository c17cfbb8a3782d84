"""A process that runs the relay alone lowers its CPU priority to OWNERSYNC_RELAY_NICE, so that
on a shared host the receiver's acks and the workers' decisions go first; a process running
other roles keeps its priority."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import httpx
import pytest

from services.common.priority import AUTOGROUP
from services.common.settings import Settings
from services.common.web import free_port

pytestmark = pytest.mark.integration


async def _priority_once_up(
    settings: Settings, role: str, nice: int, log: Path
) -> tuple[int, str | None]:
    """The nice value of a `role` process (and of its CPU group) once its /healthz answers."""
    port = free_port()
    env = {
        **os.environ,
        "OWNERSYNC_DATABASE_URL": settings.database_url,
        "OWNERSYNC_AMQP_URL": settings.amqp_url or "",
        "OWNERSYNC_EXCHANGE": settings.exchange,
        "OWNERSYNC_QUEUE_PREFIX": settings.queue_prefix,
        "OWNERSYNC_DELIVERY_LIMIT": str(settings.delivery_limit),
        "OWNERSYNC_RETRY_DELAY_MS": str(settings.retry_delay_ms),
        "OWNERSYNC_RETRY_LIMIT": str(settings.retry_limit),
        "OWNERSYNC_METRICS_PORT": str(port),
        "OWNERSYNC_RELAY_NICE": str(nice),
    }
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.cli",
            role,
            env=env,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own CPU group, as under systemd or the benchmark
        )
    try:
        async with httpx.AsyncClient() as client, asyncio.timeout(60):
            while True:
                assert proc.returncode is None, log.read_text()[-2000:]
                try:
                    if (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code < 500:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        # /proc/PID/stat: the 19th field is the nice value (the 2nd, "(comm)", has no spaces)
        nice_now = int(Path(f"/proc/{proc.pid}/stat").read_text().split()[18])
        group = Path(f"/proc/{proc.pid}/autogroup")
        return nice_now, group.read_text().split()[-1] if group.exists() else None
    finally:
        if proc.returncode is None:
            proc.terminate()
        async with asyncio.timeout(30):
            await proc.wait()


async def test_a_relay_process_runs_at_the_configured_lower_priority(
    base_settings: Settings, clean: None, tmp_path: Path
) -> None:
    nice, group = await _priority_once_up(base_settings, "relay", 9, tmp_path / "role.log")
    assert nice == 9
    if AUTOGROUP.exists():
        assert group == "9"


async def test_relay_nice_0_leaves_the_relay_at_normal_priority(
    base_settings: Settings, clean: None, tmp_path: Path
) -> None:
    assert (await _priority_once_up(base_settings, "relay", 0, tmp_path / "role.log"))[0] == 0


async def test_a_worker_process_keeps_its_priority(
    base_settings: Settings, clean: None, tmp_path: Path
) -> None:
    nice, group = await _priority_once_up(base_settings, "syncer", 9, tmp_path / "role.log")
    assert nice == 0
    if AUTOGROUP.exists():
        assert group == "0"
