"""The helpers of the fast decision path: the event loop the roles run on, the arrays the
Postgres batch statements take, and the decoding of a worker's messages ahead of its batch."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import uvloop

from services.common.broker.base import Delivery, Outcome, QueueRole
from services.common.broker.rabbit import ConsumerLost, _DecodeAhead
from services.common.db import bulk
from services.common.runtime import run_event_loop


async def _loop_type() -> type:
    return type(asyncio.get_running_loop())


def test_the_roles_run_on_uvloop_when_it_is_installed_and_wanted() -> None:
    assert run_event_loop(_loop_type()) is uvloop.Loop
    assert not issubclass(run_event_loop(_loop_type(), uvloop=False), uvloop.Loop)


def test_batch_rows_become_one_array_per_column_in_row_order_with_json_as_text() -> None:
    now = datetime(2026, 11, 2, 9, tzinfo=UTC)
    rows = [
        {"tenant_id": "acme", "record_id": 7, "target": "ae", "kind": "ae.prospect.upsert",
         "payload": {"assigned_user_id": 5, "version": 1}, "event_id": "e1", "status": "pending",
         "attempts": 0, "next_attempt_at": now, "created_at": now},
        {"tenant_id": "acme", "record_id": 8, "target": "ae", "kind": "ae.prospect.upsert",
         "payload": {"assigned_user_id": None, "version": 1}, "event_id": None,
         "status": "pending", "attempts": 0, "next_attempt_at": now, "created_at": now},
    ]  # fmt: skip
    columns = dict(
        zip((name for name, _ in bulk.OUTBOX), bulk.arrays(bulk.OUTBOX, rows), strict=True)
    )
    assert columns["record_id"] == [7, 8] and columns["event_id"] == ["e1", None]
    assert [orjson.loads(p) for p in columns["payload"]] == [r["payload"] for r in rows]
    audit = bulk.arrays(bulk.AUDIT, [{**dict.fromkeys(n for n, _ in bulk.AUDIT), "before": None}])
    assert audit[[n for n, _ in bulk.AUDIT].index("before")] == [None]  # SQL NULL, not "null"


def test_a_batch_statement_is_the_same_text_whatever_the_number_of_rows() -> None:
    sql = bulk.insert_sql("inbox", bulk.INBOX)
    assert sql == (
        "INSERT INTO inbox (event_id, tenant_id, type, source_id, processed_at) SELECT * FROM "
        "unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])"
    )


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
