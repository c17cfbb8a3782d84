"""What happens when RabbitMQ is away or an event cannot be applied."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncConnection

from services.bootstrap import create_app
from services.common.broker.base import REASON_HEADER, AnyEvent, QueueRole
from services.common.broker.rabbit import RabbitBroker
from services.common.messages import SfRecord, SfRecordEvent, event_id_for
from services.common.runtime import build_runtime
from services.common.settings import Settings
from services.common.web import free_port, serve_app
from services.common.worker import Decided, WorkerStats, run_worker
from services.demo.replay import FIXTURES
from tests.endpoints import sf_path
from tests.integration.conftest import take_dead_letters

pytestmark = pytest.mark.integration


async def test_receiver_answers_503_with_a_fault_and_acks_nothing_while_rabbitmq_is_unreachable(
    base_settings: Settings, clean: None
) -> None:
    closed_port = free_port()
    settings = base_settings.model_copy(
        update={"amqp_url": f"amqp://guest:guest@127.0.0.1:{closed_port}/"}
    )
    runtime = build_runtime(settings)
    body = (FIXTURES / "salesforce/lead-created-batch-100.xml").read_bytes()
    try:
        async with serve_app(create_app(runtime)) as url, httpx.AsyncClient(base_url=url) as http:
            response = await http.post(sf_path("record-created"), content=body)
            ready = await http.get("/readyz")
    finally:
        await runtime.close()
    assert response.status_code == 503
    assert "<soapenv:Fault>" in response.text and "<Ack>" not in response.text
    assert "soapenv:Server" in response.text
    assert ready.status_code == 503 and ready.json()["broker"] == "down"


def _event(tenant: str = "acme") -> SfRecordEvent:
    now = datetime.now(UTC)
    return SfRecordEvent(
        type="sf.record.created",
        tenant=tenant,
        event_id=event_id_for(tenant, "sf", uuid.uuid4().hex),
        source_id="04l5g0000UoNypnAQC",
        occurred_at=now,
        received_at=now,
        payload=SfRecord(
            object="Lead",
            record_id="00Q5g0000ZWHszxEQD",
            owner_id="0055g0000Zti3ElAQI",
            system_modstamp=now,
        ),
    )


async def test_event_failing_every_time_is_dead_lettered_with_its_reason_at_the_delivery_limit(
    base_settings: Settings, clean: None
) -> None:
    runtime = build_runtime(base_settings)
    assert isinstance(runtime.broker, RabbitBroker)
    attempts = 0

    async def always_failing(
        conn: AsyncConnection, events: Sequence[AnyEvent], now: datetime
    ) -> Sequence[Decided]:
        nonlocal attempts
        attempts += 1
        raise RuntimeError("the database said no")

    stop = asyncio.Event()
    stats = WorkerStats()
    worker = asyncio.create_task(
        run_worker(
            runtime.broker,
            QueueRole.SYNCER,
            runtime.engine,
            always_failing,
            batch_size=10,
            batch_wait=0.005,
            stop=stop,
            stats=stats,
        )
    )
    try:
        event = _event()
        await runtime.broker.publish([event])
        [parked] = await take_dead_letters(base_settings, 1)
    finally:
        stop.set()
        await worker
        await runtime.close()
    assert attempts == base_settings.delivery_limit
    reason = parked.headers[REASON_HEADER]
    assert isinstance(reason, str)
    assert "delivery limit 3 reached" in reason and "the database said no" in reason
    assert json.loads(parked.body)["event_id"] == str(event.event_id)


async def test_event_of_an_unknown_tenant_is_dead_lettered_at_once(
    base_settings: Settings, clean: None
) -> None:
    from services.syncer.worker import apply_sf_events

    runtime = build_runtime(base_settings)
    stop = asyncio.Event()
    worker = asyncio.create_task(
        run_worker(
            runtime.broker,
            QueueRole.SYNCER,
            runtime.engine,
            apply_sf_events,
            batch_size=10,
            batch_wait=0.005,
            stop=stop,
        )
    )
    try:
        await runtime.broker.publish([_event("ghost")])
        [parked] = await take_dead_letters(base_settings, 1)
    finally:
        stop.set()
        await worker
        await runtime.close()
    assert parked.headers[REASON_HEADER] == "unknown tenant 'ghost'"


async def test_one_poison_event_in_a_message_of_many_is_parked_alone_and_the_rest_applied(
    base_settings: Settings, clean: None
) -> None:
    from sqlalchemy import func, select

    from services.common.db.tables import inbox
    from services.common.sfid import to18
    from services.syncer.worker import apply_sf_events

    runtime = build_runtime(base_settings)
    events = []
    for i in range(5):
        event = _event()
        payload = event.payload.model_copy(update={"record_id": to18(f"00Q5g0000POIS{i:02d}")})
        events.append(event.model_copy(update={"payload": payload, "source_id": f"n{i}"}))
    poison = events[2]

    async def apply_unless_poison(
        conn: AsyncConnection, batch: Sequence[AnyEvent], now: datetime
    ) -> Sequence[Decided]:
        if any(e.event_id == poison.event_id for e in batch):
            raise RuntimeError("this one never applies")
        return await apply_sf_events(conn, batch, now)

    stop = asyncio.Event()
    worker = asyncio.create_task(
        run_worker(
            runtime.broker,
            QueueRole.SYNCER,
            runtime.engine,
            apply_unless_poison,
            batch_size=100,
            batch_wait=0.005,
            stop=stop,
        )
    )
    try:
        await runtime.broker.publish(events)  # one message of five events
        [parked] = await take_dead_letters(base_settings, 1)
    finally:
        stop.set()
        await worker
    async with runtime.engine.connect() as conn:
        applied = {r.source_id for r in await conn.execute(select(inbox.c.source_id))}
        assert (await conn.execute(select(func.count()).select_from(inbox))).scalar_one() == 4
    await runtime.close()
    assert applied == {"n0", "n1", "n3", "n4"}
    assert json.loads(parked.body)["event_id"] == str(poison.event_id)
    reason = parked.headers[REASON_HEADER]
    assert isinstance(reason, str)
    assert "this one never applies" in reason
