"""A poison event does not hold the others of its message back: the batch is split, the rest
is applied once, and the poison is parked alone, at once when it can never apply (an unknown
tenant) or after the delivery limit when it keeps failing. On the in-process broker, which keeps
RabbitMQ's delivery rules (tests/integration/test_broker_failures.py has them on RabbitMQ)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from services.bootstrap import Running
from services.common.broker.base import AnyEvent, QueueRole
from services.common.broker.memory import MemoryBroker
from services.common.db.tables import inbox
from services.common.messages import SfRecordEvent
from services.common.runtime import Runtime
from services.common.sfid import to18
from services.common.worker import Decided, run_worker
from services.sim.embedded import wait_until_idle
from services.syncer.worker import apply_sf_events
from tests.events import sf_record_event
from tests.store import decision_rows

ALICE_SF = "0055g0000Zti3ElAQI"


def _events(count: int, tenant_of: Callable[[int], str] = lambda _: "acme") -> list[SfRecordEvent]:
    """SF record-created events of `count` different leads owned by alice: n0, n1, …"""
    return [
        sf_record_event(
            to18(f"00Q5g0000POIS{i:02d}"),
            ALICE_SF,
            tenant=tenant_of(i),
            email=f"n{i}@example.com",
            notification_id=f"n{i}",
        )
        for i in range(count)
    ]


async def _until(condition: Callable[[], bool], within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not condition():
            await asyncio.sleep(0.01)


async def _applied(runtime: Runtime) -> list[str]:
    async with runtime.engine.connect() as conn:
        return sorted(r.source_id for r in await conn.execute(select(inbox.c.source_id)))


async def test_unknown_tenant_event_is_parked_alone_at_once_and_the_rest_of_its_message_applied(
    stack: Running,
) -> None:
    broker = stack.runtime.broker
    assert isinstance(broker, MemoryBroker)
    events = _events(5, tenant_of=lambda i: "ghost" if i == 2 else "acme")
    await broker.publish(events)  # one message of five events: they share a type

    await _until(lambda: len(broker.dead_letters) == 1)
    await wait_until_idle(stack)

    [parked] = broker.dead_letters
    assert parked.reason == "unknown tenant 'ghost'"
    assert parked.queue == QueueRole.SYNCER.value
    assert json.loads(parked.body)["event_id"] == str(events[2].event_id)
    assert await _applied(stack.runtime) == ["n0", "n1", "n3", "n4"]
    assert [r["rule"] for r in await decision_rows(stack)] == ["S2"] * 4
    # The four went all the way: AE holds a prospect for each, assigned to alice's AE user.
    assert stack.ae_sim is not None
    assert sorted(p["email"] for p in stack.ae_sim.prospects.values()) == [
        "n0@example.com",
        "n1@example.com",
        "n3@example.com",
        "n4@example.com",
    ]


async def test_event_failing_every_time_is_parked_alone_after_the_delivery_limit(
    runtime: Runtime,
) -> None:
    broker = runtime.broker
    assert isinstance(broker, MemoryBroker) and broker.delivery_limit == 3
    events = _events(5)
    poison = events[3]
    tried_alone = 0

    async def apply_unless_poison(
        conn: AsyncConnection, batch: Sequence[AnyEvent], now: datetime
    ) -> Sequence[Decided]:
        nonlocal tried_alone
        if any(e.event_id == poison.event_id for e in batch):
            tried_alone += len(batch) == 1
            raise RuntimeError("this one never applies")
        return await apply_sf_events(conn, batch, now)

    await _run_worker_until(
        runtime, events, apply_unless_poison, lambda: len(broker.dead_letters) == 1
    )

    [parked] = broker.dead_letters
    assert "delivery limit 3 reached" in parked.reason
    assert "this one never applies" in parked.reason
    assert json.loads(parked.body)["event_id"] == str(poison.event_id)
    assert await _applied(runtime) == ["n0", "n1", "n2", "n4"]
    # Once while its message was split, then on each delivery of its own message.
    assert tried_alone == 1 + broker.delivery_limit


async def _run_worker_until(
    runtime: Runtime,
    events: Sequence[AnyEvent],
    handle: Callable[[AsyncConnection, Sequence[AnyEvent], datetime], Awaitable[Sequence[Decided]]],
    done: Callable[[], bool],
) -> None:
    stop = asyncio.Event()
    worker = asyncio.create_task(
        run_worker(
            runtime.broker,
            QueueRole.SYNCER,
            runtime.engine,
            handle,
            batch_size=100,
            batch_wait=0.005,
            stop=stop,
        )
    )
    try:
        await runtime.broker.publish(events)  # one message
        await _until(done)
    finally:
        stop.set()
        await worker
