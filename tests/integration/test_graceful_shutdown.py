"""A worker process sent SIGTERM mid-stream finishes or returns its batch: nothing is lost and
nothing is applied twice (checked in the inbox and the audit rows)."""

from __future__ import annotations

import asyncio
import signal
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import ColumnElement, func, select

from services.common.broker.base import QueueRole
from services.common.db.tables import audit_log, inbox
from services.common.messages import SfRecord, SfRecordEvent, event_id_for
from services.common.runtime import Runtime, build_runtime
from services.common.settings import Settings
from services.common.sfid import to18
from services.common.worker import run_worker
from services.syncer.worker import apply_sf_events
from tests.integration.processes import role_env

pytestmark = pytest.mark.integration

EVENTS = 5000


def _events(n: int) -> list[SfRecordEvent]:
    now = datetime.now(UTC)
    events = []
    for i in range(n):
        record = to18(f"00Q5g{i:010d}")
        events.append(
            SfRecordEvent(
                type="sf.record.created",
                tenant="acme",
                event_id=event_id_for("acme", "sf", f"shutdown-{i}-{uuid.uuid4().hex[:6]}"),
                source_id=f"notification-{i}",
                occurred_at=now,
                received_at=now,
                payload=SfRecord(
                    object="Lead",
                    record_id=record,
                    owner_id="0055g0000Zti3ElAQI",
                    email=f"p{i}@example.com",
                    system_modstamp=now,
                ),
            )
        )
    return events


async def _count(runtime: Runtime, column: ColumnElement[Any]) -> int:
    async with runtime.engine.connect() as conn:
        return int((await conn.execute(select(func.count(column)))).scalar_one())


async def test_sigterm_mid_stream_loses_nothing_and_applies_nothing_twice(
    base_settings: Settings, clean: None
) -> None:
    runtime = build_runtime(base_settings)
    events = _events(EVENTS)
    for start in range(0, EVENTS, 500):
        await runtime.broker.publish(events[start : start + 500])
    env = role_env(base_settings, BATCH_SIZE="50", METRICS_PORT="0")
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        "syncer",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(60):
            while await _count(runtime, inbox.c.event_id) < 300:
                await asyncio.sleep(0.01)
        worker.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            output, _ = await worker.communicate()
    finally:
        if worker.returncode is None:
            worker.kill()
    applied_by_first = await _count(runtime, inbox.c.event_id)
    assert worker.returncode == 0, output.decode()[-2000:]
    assert b"syncer stopped" in output
    assert 300 <= applied_by_first < EVENTS, "SIGTERM did not land mid-stream"

    # A second worker takes over what the first one returned to the queue.
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_worker(
            runtime.broker,
            QueueRole.SYNCER,
            runtime.engine,
            apply_sf_events,
            batch_size=200,
            batch_wait=0.005,
            stop=stop,
        )
    )
    try:
        async with asyncio.timeout(60):
            while await _count(runtime, inbox.c.event_id) < EVENTS:
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
    assert await _count(runtime, inbox.c.event_id) == EVENTS
    assert await _count(runtime, audit_log.c.id) == EVENTS
    assert await _count(runtime, func.distinct(audit_log.c.event_id)) == EVENTS
    assert (await runtime.broker.queue_depths())["syncer"] == 0
    await runtime.close()
