"""A role process times each of its garbage collections onto its /metrics
(`ownersync_gc_pause_seconds`, by generation), from its start."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from services.common.settings import Settings
from tests.integration.processes import worker_role

pytestmark = pytest.mark.integration

COUNT = re.compile(r'^ownersync_gc_pause_seconds_count\{generation="(\d)"\} (\S+)$', re.M)


async def test_a_role_process_times_its_collections_on_metrics(
    base_settings: Settings, clean: None, tmp_path: Path
) -> None:
    async with (
        worker_role(base_settings, "syncer", tmp_path / "syncer.log") as (_, metrics),
        httpx.AsyncClient() as client,
    ):
        text = (await client.get(metrics)).text

    counts = {generation: float(n) for generation, n in COUNT.findall(text)}
    assert set(counts) == {"0", "1", "2"}
    assert counts["0"] > 0  # connecting to Postgres and RabbitMQ made young garbage
