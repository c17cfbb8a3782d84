"""The helpers of the fast decision path: the event loop the roles run on, the JSON rows the
Postgres batch statements take, the decoding of a worker's messages ahead of its batch, and the
copies of a record's state."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import uvloop

from services.common.broker.base import Delivery, Outcome, QueueRole
from services.common.broker.rabbit import ConsumerLost, RabbitBroker, _DecodeAhead
from services.common.db import bulk
from services.common.db.tables import inbox, outbox
from services.common.domain import RecordState
from services.common.runtime import freeze_startup_objects, run_event_loop


async def _loop_type() -> type:
    return type(asyncio.get_running_loop())


def test_the_roles_run_on_uvloop_when_it_is_installed_and_wanted() -> None:
    assert run_event_loop(_loop_type()) is uvloop.Loop
    assert not issubclass(run_event_loop(_loop_type(), uvloop=False), uvloop.Loop)


def test_batch_rows_travel_as_one_json_array_with_times_and_json_columns_intact() -> None:
    now = datetime(2026, 11, 2, 9, tzinfo=UTC)
    rows = [
        {"tenant_id": "acme", "record_id": 2**62, "payload": {"assigned_user_id": 5}, "at": now},
        {"tenant_id": "acme", "record_id": 8, "payload": {"assigned_user_id": None}, "at": None},
    ]
    sent = orjson.loads(bulk.rows_json(rows))
    assert sent[0] == {**rows[0], "at": "2026-11-02T09:00:00+00:00"}  # the offset kept
    assert sent[1] == rows[1]


def test_a_batch_statement_writes_the_columns_its_rows_give_whatever_their_number() -> None:
    row = {"event_id": "e", "tenant_id": "acme", "type": "t", "source_id": "s", "processed_at": 0}
    sql = bulk.insert_sql("inbox", bulk.columns_of(inbox, row))
    assert sql == (
        "INSERT INTO inbox (event_id, tenant_id, type, source_id, processed_at) SELECT "
        "event_id, tenant_id, type, source_id, processed_at FROM json_to_recordset($1::json) AS "
        "r(event_id VARCHAR(36), tenant_id VARCHAR(64), type VARCHAR(64), source_id TEXT, "
        "processed_at TIMESTAMP WITH TIME ZONE)"
    )
    assert [name for name, _ in bulk.columns_of(outbox, {"traceparent": None, "id": 1})] == [
        "id",
        "traceparent",
    ]


def test_a_batch_writes_its_updates_and_rows_in_one_statement_of_ctes() -> None:
    """One round trip: every part but the last is a data-modifying WITH, each its own parameter."""
    sql = bulk.write_sql(True, ((inbox, frozenset({"event_id"})), (outbox, frozenset({"id"}))))
    assert sql.startswith("WITH w1 AS (UPDATE records AS r SET ")
    assert "json_to_recordset($1::json) AS u(id bigint" in sql
    assert ", w2 AS (INSERT INTO inbox (event_id) SELECT event_id FROM json_to_recordset($2" in sql
    last = ") INSERT INTO outbox (id) SELECT id FROM json_to_recordset($3::json) AS r(id BIGINT)"
    assert sql.endswith(last)
    alone = bulk.write_sql(False, ((inbox, frozenset({"event_id"})),))
    assert alone == bulk.insert_sql("inbox", bulk.columns_of(inbox, {"event_id"}))


def test_an_evolved_record_state_is_the_copy_replace_makes_and_refuses_unknown_fields() -> None:
    before = RecordState(id=1, prospect_id=2, sf_record_id="00Q5g0000ZW0001AAA", email="a@b.c")
    after = before.evolve(id=7, sf_owner_id="0055g0000Zti3ElAQI")
    assert after == dataclasses.replace(before, id=7, sf_owner_id="0055g0000Zti3ElAQI")
    assert type(after) is RecordState and hash(after) == hash(after.evolve())
    assert before.id == 1 and before.sf_owner_id is None  # the original is left alone
    with pytest.raises(dataclasses.FrozenInstanceError):
        after.id = 8  # type: ignore[misc]
    with pytest.raises(TypeError, match="no field \\['owner'\\]"):
        before.evolve(owner="x")


class _Consumer:
    """Stands in for the RabbitMQ consumer: 'decodes' a message into a delivery of n events."""

    role = QueueRole.SYNCER

    def __init__(self) -> None:
        self.decoded: list[int] = []

    def delivery(self, message: Any) -> Delivery:
        if message == "bad":
            raise RuntimeError("headers the consumer cannot read")
        self.decoded.append(message)

        async def settle(outcome: Outcome, reason: str | None) -> None:
            return None

        return Delivery(b"", 0, settle, events=[object()] * message)  # type: ignore[list-item]


async def test_messages_are_decoded_in_order_ahead_of_their_batch_up_to_one_batch() -> None:
    consumer = _Consumer()
    ahead = _DecodeAhead(consumer, limit=150)  # type: ignore[arg-type]
    for size in (100, 100, 100, 1):
        await ahead.arrived(size)  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    assert consumer.decoded == [100, 100]  # 200 events wait decoded; the rest waits as bytes
    assert [(await ahead.get()).size for _ in range(2)] == [100, 100]
    await asyncio.sleep(0.01)
    assert consumer.decoded == [100, 100, 100, 1]
    assert [(await ahead.get()).size for _ in range(2)] == [100, 1]
    ahead.decoding.cancel()


async def test_a_message_that_cannot_be_decoded_makes_the_consumer_start_over() -> None:
    ahead = _DecodeAhead(_Consumer(), limit=10)  # type: ignore[arg-type]
    await ahead.arrived("bad")  # type: ignore[arg-type]
    with pytest.raises(ConsumerLost):
        await asyncio.wait_for(ahead.get(), 1)


def test_the_syncer_holds_prefetch_messages_and_the_assigner_a_full_batch_of_webhooks() -> None:
    """SF messages carry up to 100 events: the syncer's window stays at `prefetch` messages
    whatever the batch size (500 of them were ~24 MB of bodies under a backlog); webhooks
    carry one, so the assigner's window is raised to a batch."""
    broker = RabbitBroker("amqp://guest:guest@127.0.0.1:1/", prefetch=100)
    assert broker.window(QueueRole.SYNCER, batch_size=500) == 100
    assert broker.window(QueueRole.ASSIGNER, batch_size=500) == 500
    assert broker.window(QueueRole.ASSIGNER, batch_size=50) == 100


def test_startup_objects_are_frozen_so_a_full_collection_skips_them() -> None:
    """What the imports made goes to the permanent generation: a full collection afterwards
    traverses only what came later (gc.get_objects lists the collected generations)."""
    import gc

    try:
        frozen = freeze_startup_objects()
        assert frozen > 10_000  # this test process's modules, classes and functions
        assert gc.get_freeze_count() == frozen
        assert len(gc.get_objects()) < frozen / 10
    finally:
        gc.unfreeze()
