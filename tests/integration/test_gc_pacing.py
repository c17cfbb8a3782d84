"""A role process collects its garbage in full every OWNERSYNC_GC_INTERVAL_MS, in short pauses,
instead of on Python's own schedule (rarer and far longer pauses in a busy worker): seen from
outside on the process's /metrics, where prometheus-client counts full collections."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import pytest

from services.common.settings import Settings
from tests.integration.processes import worker_role

pytestmark = pytest.mark.integration

FULL = re.compile(r'^python_gc_collections_total\{generation="2"\} (\S+)$', re.M)


async def _full_collections_in(settings: Settings, interval_ms: int, log: Path) -> float:
    """How many full collections an idle syncer process makes in 1.5 s."""
    async with (
        worker_role(settings, "syncer", log, GC_INTERVAL_MS=str(interval_ms)) as (_, metrics),
        httpx.AsyncClient() as client,
    ):

        async def full() -> float:
            found = FULL.search((await client.get(metrics)).text)
            assert found, "no python_gc_collections_total on /metrics"
            return float(found.group(1))

        before = await full()
        await asyncio.sleep(1.5)
        return await full() - before


async def test_a_role_process_collects_in_full_at_the_configured_pace(
    base_settings: Settings, clean: None, tmp_path: Path
) -> None:
    paced = await _full_collections_in(base_settings, 100, tmp_path / "paced.log")
    pythons = await _full_collections_in(base_settings, 0, tmp_path / "python.log")

    assert 8 <= paced <= 16  # every 100 ms
    assert pythons <= 2  # Python's own schedule: next to none in an idle process
