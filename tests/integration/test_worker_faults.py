"""The workers under faults, on the real Postgres and RabbitMQ: outages go through the fault
proxy (services.sim.netfault), never by stopping the shared services."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import httpx
import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.assigner.worker import apply_ae_events
from services.bootstrap import RoleFailed, running
from services.common.broker.base import AnyEvent, Delivery, QueueRole
from services.common.broker.dead_letters import dead_letter_store
from services.common.broker.rabbit import RabbitBroker
from services.common.db.engine import make_engine
from services.common.db.tables import audit_log, inbox, records
from services.common.messages import (
    AeProspectEvent,
    AeWebhook,
    SfRecord,
    SfRecordEvent,
    event_id_for,
)
from services.common.runtime import Runtime, build_runtime
from services.common.settings import Settings
from services.common.sfid import to18
from services.common.web import free_port
from services.common.worker import Backoff, Decided, WorkerStats, run_worker
from services.sim.netfault import FaultProxy
from services.syncer.worker import apply_sf_events
from tests.integration.conftest import AMQP_URL, PG_URL, take_dead_letters

pytestmark = pytest.mark.integration

ALICE, BOB = 101, 102
UNCONNECTED_SF_OWNER = "0055g0000UHNjcrAQD"
FAST = Backoff(initial=0.1, maximum=1.0)
Handler = Callable[[AsyncConnection, Sequence[AnyEvent], datetime], Any]


def sf_events(n: int, tag: str) -> list[SfRecordEvent]:
    now = datetime.now(UTC)
    return [
        SfRecordEvent(
            type="sf.record.created",
            tenant="acme",
            event_id=event_id_for("acme", "sf", f"{tag}-{i}-{uuid.uuid4().hex[:6]}"),
            source_id=f"{tag}-{i}",
            occurred_at=now,
            received_at=now,
            payload=SfRecord(
                object="Lead",
                record_id=to18(f"00Q5g{tag[:2]}{i:08d}"),
                owner_id=UNCONNECTED_SF_OWNER,
                email=f"{tag}{i}@example.com",
                system_modstamp=now,
            ),
        )
        for i in range(n)
    ]


def ae_event(
    type: str,
    prospect: dict[str, Any],
    *,
    occurred_at: datetime,
    action: dict[str, Any] | None = None,
) -> AeProspectEvent:
    webhook = AeWebhook.model_validate(
        {
            "type": type,
            "occurredAt": occurred_at.isoformat(),
            "prospect": prospect,
            "action": action,
        }
    )
    source = f"msg_{uuid.uuid4().hex}"
    return AeProspectEvent(
        type=f"ae.{type}",  # type: ignore[arg-type]
        tenant="acme",
        event_id=event_id_for("acme", "engagement", source),
        source_id=source,
        occurred_at=occurred_at,
        received_at=datetime.now(UTC),
        payload=webhook,
    )


def through(proxy: FaultProxy, url: str) -> str:
    return make_url(url).set(host="127.0.0.1", port=proxy.port).render_as_string(False)


async def count(engine: AsyncEngine, table: Any) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


async def depths(broker: RabbitBroker) -> dict[str, int]:
    return await broker.queue_depths()


async def wait_for(check: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


@dataclass
class Workers:
    runtime: Runtime
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    stats: list[WorkerStats] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self, role: QueueRole, handle: Handler, *, batch_size: int = 50) -> WorkerStats:
        stats = WorkerStats()
        self.stats.append(stats)
        self.tasks.append(
            asyncio.create_task(
                run_worker(
                    self.runtime.broker,
                    role,
                    self.runtime.engine,
                    handle,
                    batch_size=batch_size,
                    batch_wait=0.005,
                    stop=self.stop,
                    stats=stats,
                    backoff=FAST,
                )
            )
        )
        return stats


@contextlib.asynccontextmanager
async def workers(settings: Settings) -> AsyncIterator[Workers]:
    runtime = build_runtime(settings)
    live = Workers(runtime)
    try:
        yield live
    finally:
        live.stop.set()
        results = await asyncio.gather(*live.tasks, return_exceptions=True)
        await runtime.close()
        failures = [r for r in results if isinstance(r, BaseException)]
        assert not failures, failures


@pytest.fixture
async def pg_proxy() -> AsyncIterator[FaultProxy]:
    target = make_url(PG_URL)
    proxy = FaultProxy(target.host or "127.0.0.1", target.port or 5432)
    await proxy.start()
    yield proxy
    await proxy.stop()


@pytest.fixture
async def amqp_proxy() -> AsyncIterator[FaultProxy]:
    target = make_url(AMQP_URL.replace("amqp://", "postgresql://"))  # only host and port
    proxy = FaultProxy(target.host or "127.0.0.1", target.port or 5672)
    await proxy.start()
    yield proxy
    await proxy.stop()


@pytest.fixture
async def direct(base_settings: Settings, clean: None) -> AsyncIterator[Runtime]:
    """A runtime on the services themselves, to publish and to look."""
    runtime = build_runtime(base_settings)
    await runtime.broker.connect()
    yield runtime
    await runtime.close()


async def test_postgres_down_for_12_seconds_while_messages_flow_dead_letters_nothing(
    base_settings: Settings, direct: Runtime, pg_proxy: FaultProxy
) -> None:
    settings = base_settings.model_copy(
        update={
            "database_url": through(pg_proxy, base_settings.database_url),
            "db_connect_timeout_s": 2.0,
            "db_command_timeout_s": 5.0,
        }
    )
    events = sf_events(600, "pgcut")
    assert isinstance(direct.broker, RabbitBroker)
    async with workers(settings) as live:
        held = [live.start(QueueRole.SYNCER, apply_sf_events) for _ in range(2)]
        for start in range(0, 200, 10):
            await direct.broker.publish(events[start : start + 10])
        await wait_for(lambda: _at_least(direct.engine, inbox, 50), 30, "the first events")
        pg_proxy.cut()
        cut_at = time.monotonic()
        for start in range(200, 600, 10):
            await direct.broker.publish(events[start : start + 10])
        await asyncio.sleep(12 - (time.monotonic() - cut_at))
        assert await count(direct.engine, inbox) < len(events)  # the outage held some back
        assert (await depths(direct.broker))["dead-letters"] == 0
        await pg_proxy.restore()
        await wait_for(lambda: _at_least(direct.engine, inbox, 600), 60, "every event")
    assert sum(s.held for s in held) > 0
    assert (await depths(direct.broker))["dead-letters"] == 0
    assert await count(direct.engine, records) == 600
    async with direct.engine.connect() as conn:
        per_event = await conn.execute(
            select(audit_log.c.event_id, func.count()).group_by(audit_log.c.event_id)
        )
        decided: dict[str, int] = {row[0]: row[1] for row in per_event.all()}
    assert decided.keys() == {str(e.event_id) for e in events}
    assert set(decided.values()) == {1}  # applied once each


async def _at_least(engine: AsyncEngine, table: Any, n: int) -> bool:
    return await count(engine, table) >= n


async def test_broker_connections_dropped_mid_stream_lose_nothing_and_the_consumer_carries_on(
    base_settings: Settings, direct: Runtime, amqp_proxy: FaultProxy
) -> None:
    settings = base_settings.model_copy(
        update={"amqp_url": AMQP_URL.replace(":5672", f":{amqp_proxy.port}")}
    )
    assert settings.amqp_url != base_settings.amqp_url
    events = sf_events(1500, "drop")
    assert isinstance(direct.broker, RabbitBroker)
    for start in range(0, len(events), 10):
        await direct.broker.publish(events[start : start + 10])
    async with workers(settings) as live:
        stats = live.start(QueueRole.SYNCER, apply_sf_events, batch_size=20)
        await wait_for(lambda: _at_least(direct.engine, inbox, 200), 60, "the first events")
        connections = amqp_proxy.connections
        amqp_proxy.drop()
        await wait_for(lambda: _at_least(direct.engine, inbox, 700), 60, "events after a drop")
        assert amqp_proxy.connections > connections  # the worker came back on a new connection
        amqp_proxy.drop()
        await wait_for(lambda: _at_least(direct.engine, inbox, 1500), 90, "every event")
        batches = stats.batches
        extra = sf_events(10, "after")
        await direct.broker.publish(extra)
        await wait_for(lambda: _at_least(direct.engine, inbox, 1510), 30, "events after it all")
        assert stats.batches > batches
    assert (await depths(direct.broker))["dead-letters"] == 0
    assert await count(direct.engine, records) == 1510
    assert await count(direct.engine, audit_log) == 1510


async def test_an_integrity_race_goes_through_the_delayed_retry_queue_and_lands(
    base_settings: Settings, direct: Runtime
) -> None:
    [event] = sf_events(1, "race")
    tries: list[float] = []

    async def loses_two_races(
        conn: AsyncConnection, events: Sequence[AnyEvent], now: datetime
    ) -> Sequence[Decided]:
        tries.append(time.monotonic())
        if len(tries) <= 2:  # another transaction got there first: a real unique violation
            await conn.execute(text("INSERT INTO tenants SELECT * FROM tenants LIMIT 1"))
        return await apply_sf_events(conn, events, now)

    assert isinstance(direct.broker, RabbitBroker)
    async with workers(base_settings) as live:
        live.start(QueueRole.SYNCER, loses_two_races)
        await direct.broker.publish([event])
        await wait_for(lambda: _at_least(direct.engine, inbox, 1), 30, "the event")
    assert len(tries) == 3
    assert tries[1] - tries[0] < 0.4  # applied again alone at once, then
    assert tries[2] - tries[1] >= 0.45  # the retry queue held it for its TTL (500 ms)
    assert (await depths(direct.broker))["dead-letters"] == 0
    async with direct.engine.connect() as conn:
        rules = (await conn.execute(select(audit_log.c.rule))).scalars().all()
    assert rules == ["S1"]


async def test_a_message_that_keeps_losing_races_is_dead_lettered_after_the_retry_limit(
    base_settings: Settings, direct: Runtime
) -> None:
    [event] = sf_events(1, "deadlock")
    tries = 0

    async def always_deadlocked(
        conn: AsyncConnection, events: Sequence[AnyEvent], now: datetime
    ) -> Sequence[Decided]:
        nonlocal tries
        tries += 1
        await conn.execute(text("INSERT INTO tenants SELECT * FROM tenants LIMIT 1"))
        return []

    assert isinstance(direct.broker, RabbitBroker)
    async with workers(base_settings) as live:
        live.start(QueueRole.SYNCER, always_deadlocked)
        await direct.broker.publish([event])
        [parked] = await take_dead_letters(base_settings, 1)
    # Each delivery (the first and 3 delayed retries) is tried, then tried again alone at once.
    assert tries == 2 * (1 + base_settings.retry_limit)
    reason = str(parked.headers["x-ownersync-reason"])
    assert reason.startswith("retry limit 3 reached: IntegrityError")


async def test_a_parked_message_replayed_gets_full_fresh_deliveries(
    base_settings: Settings, direct: Runtime
) -> None:
    [event] = sf_events(1, "replay")
    tries = 0

    async def poison(
        conn: AsyncConnection, events: Sequence[AnyEvent], now: datetime
    ) -> Sequence[Decided]:
        nonlocal tries
        tries += 1
        raise RuntimeError("never applies")

    broker = direct.broker
    assert isinstance(broker, RabbitBroker)
    letters = dead_letter_store(broker)
    async with workers(base_settings) as live:
        live.start(QueueRole.SYNCER, poison)
        await broker.publish([event])
        await wait_for(lambda: _parked_count(broker, 1), 30, "the first parking")
        assert tries == base_settings.delivery_limit
        headers = await _parked_headers(base_settings)
        # The dead-letter queue counts its own deliveries: none carried from the work queue.
        assert headers.get("x-delivery-count", 0) == 0
        replayed, kept = await letters.replay(lambda _: True, 10)
        assert (replayed, kept) == ([str(event.event_id)], [])
        await wait_for(lambda: _parked_count(broker, 1), 30, "the second parking")
    # Not one more try: the replayed copy had every delivery again.
    assert tries == 2 * base_settings.delivery_limit


async def _parked_count(broker: RabbitBroker, n: int) -> bool:
    return (await broker.queue_depths())["dead-letters"] >= n


async def _parked_headers(settings: Settings) -> dict[str, Any]:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection, connection.channel() as channel:
        queue = await channel.declare_queue(f"{settings.queue_prefix}.dead-letters", passive=True)
        message = await queue.get(fail=True)
        headers = dict(message.headers or {})
        await message.nack(requeue=True)
    return headers


async def test_a_webhook_for_a_prospect_ownersync_created_links_to_its_record(
    base_settings: Settings, direct: Runtime
) -> None:
    [created] = sf_events(1, "link")
    sf_id = created.payload.record_id
    prospect = {"id": 7001, "email": "link0@example.com", "salesforceId": sf_id}
    webhook = ae_event("prospect.created", prospect, occurred_at=datetime.now(UTC))
    async with workers(base_settings) as live:
        live.start(QueueRole.SYNCER, apply_sf_events)
        live.start(QueueRole.ASSIGNER, apply_ae_events)
        await direct.broker.publish([created])  # S1: the record, no prospect id yet
        await wait_for(lambda: _at_least(direct.engine, inbox, 1), 30, "the SF event")
        # AE tells of the prospect before the relay stored its id on the record.
        await direct.broker.publish([webhook])
        await wait_for(lambda: _at_least(direct.engine, inbox, 2), 30, "the webhook")
    assert isinstance(direct.broker, RabbitBroker)
    assert (await depths(direct.broker))["dead-letters"] == 0
    async with direct.engine.connect() as conn:
        rows = (await conn.execute(select(records))).all()
    assert [(r.prospect_id, r.sf_record_id) for r in rows] == [(7001, sf_id)]


async def test_two_records_that_turn_out_to_be_one_are_merged_with_an_audit_row(
    base_settings: Settings, direct: Runtime
) -> None:
    sf_id = to18("00Q5g0000MERGE1")
    now = datetime.now(UTC)
    base = {
        "tenant_id": "acme",
        "created_at": now,
        "updated_at": now,
        **dict.fromkeys(("prospect_id", "sf_record_id", "sf_object", "email", "sf_owner_id")),
    }
    async with direct.engine.begin() as conn:
        ids = (
            (
                await conn.execute(
                    insert(records).returning(records.c.id, sort_by_parameter_order=True),
                    [
                        {**base, "prospect_id": 7002, "email": "m@example.com"},
                        {
                            **base,
                            "sf_record_id": sf_id,
                            "sf_object": "Lead",
                            "sf_owner_id": "x" * 18,
                        },
                    ],
                )
            )
            .scalars()
            .all()
        )
        await conn.execute(
            insert(audit_log),
            [
                {
                    "tenant_id": "acme",
                    "record_id": ids[1],
                    "rule": "S1",
                    "reason": "created",
                    "created_at": now,
                }
            ],
        )
    prospect = {"id": 7002, "email": "m@example.com", "salesforceId": sf_id}
    webhook = ae_event("prospect.created", prospect, occurred_at=now)
    async with workers(base_settings) as live:
        live.start(QueueRole.ASSIGNER, apply_ae_events)
        await direct.broker.publish([webhook])
        await wait_for(lambda: _at_least(direct.engine, inbox, 1), 30, "the webhook")
    async with direct.engine.connect() as conn:
        rows = (await conn.execute(select(records))).all()
        audit = (await conn.execute(select(audit_log).order_by(audit_log.c.id))).all()
    assert [(r.id, r.prospect_id, r.sf_record_id, r.sf_object) for r in rows] == [
        (ids[0], 7002, sf_id, "Lead")
    ]
    assert [(a.record_id, a.rule) for a in audit] == [
        (ids[0], "S1"),
        (ids[0], "MERGE"),
        (ids[0], "A0"),
    ]
    assert f"records {ids[0]} and {ids[1]} are one" in audit[1].reason


async def test_an_ae_event_older_than_the_last_applied_is_not_applied(
    base_settings: Settings, direct: Runtime
) -> None:
    t = datetime.now(UTC) - timedelta(minutes=1)
    prospect = {"id": 7003, "email": "o@example.com", "assignedUserId": ALICE}
    newer = ae_event("prospect.created", prospect, occurred_at=t)
    older = ae_event(
        "prospect.reassigned",
        {**prospect, "assignedUserId": BOB},
        occurred_at=t - timedelta(seconds=30),
    )
    async with workers(base_settings) as live:
        live.start(QueueRole.ASSIGNER, apply_ae_events)
        await direct.broker.publish([newer])
        await wait_for(lambda: _at_least(direct.engine, inbox, 1), 30, "the newer event")
        await direct.broker.publish([older])
        await wait_for(lambda: _at_least(direct.engine, inbox, 2), 30, "the older event")
    async with direct.engine.connect() as conn:
        [row] = (await conn.execute(select(records))).all()
        rules = (
            await conn.execute(
                select(audit_log.c.rule, audit_log.c.reason).order_by(audit_log.c.id)
            )
        ).all()
    assert [r.rule for r in rules] == ["A1", "STALE"]
    assert rules[1].reason.startswith("stale: occurredAt")
    assert row.ae_assigned_user_id == ALICE and row.ae_modstamp == t


class _BrokenConsumerBroker:
    """A broker whose consumer fails with a bug (not an outage)."""

    delivery_limit = 3

    async def connect(self) -> None:
        return None

    async def publish(self, events: Sequence[AnyEvent]) -> None:
        return None

    async def consume(
        self, role: QueueRole, *, batch_size: int, batch_wait: float
    ) -> AsyncIterator[list[Delivery]]:
        await asyncio.sleep(0.05)
        raise RuntimeError("the consumer broke")
        yield []  # pragma: no cover

    async def ping(self) -> bool:
        return True

    async def queue_depths(self) -> dict[str, int]:
        return {}

    async def close(self) -> None:
        return None


async def test_a_role_task_that_dies_makes_running_raise_role_failed(
    base_settings: Settings, clean: None
) -> None:
    engine = make_engine(base_settings.database_url)
    runtime = Runtime(base_settings, engine, _BrokenConsumerBroker())  # type: ignore[arg-type]
    stop = asyncio.Event()
    try:
        with pytest.raises(RoleFailed) as failed:
            async with running(base_settings, ["syncer"], stop, runtime=runtime):
                async with asyncio.timeout(10):
                    await stop.wait()  # set by the dying role
    finally:
        await engine.dispose()
    assert failed.value.role == "syncer"
    assert "the consumer broke" in str(failed.value)


async def test_healthz_answers_503_while_the_consumer_stops_beating(
    base_settings: Settings, direct: Runtime, pg_proxy: FaultProxy
) -> None:
    settings = base_settings.model_copy(
        update={
            "database_url": through(pg_proxy, base_settings.database_url),
            "heartbeat_timeout_s": 1.0,
            "db_command_timeout_s": 30.0,
            "metrics_port": free_port(),
        }
    )
    stop = asyncio.Event()
    url = f"http://127.0.0.1:{settings.metrics_port}/healthz"
    async with running(settings, ["syncer"], stop), httpx.AsyncClient() as http:
        assert (await http.get(url)).status_code == 200
        pg_proxy.blackhole()  # the batch hangs on the database: the loop stops beating
        await direct.broker.publish(sf_events(1, "hang"))
        await asyncio.sleep(2.5)
        sick = await http.get(url)
        await pg_proxy.restore()
        await wait_for(lambda: _at_least(direct.engine, inbox, 1), 30, "the event")
        healthy = await http.get(url)
    assert sick.status_code == 503
    assert sick.json()["syncer"].startswith("silent for")
    assert healthy.status_code == 200 and healthy.json()["syncer"] == "ok"
