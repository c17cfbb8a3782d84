"""Dead letters of the in-process broker: the same operations as on RabbitMQ."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from services.admin import dead_letters as dl
from services.common.broker.base import DeadLetter, QueueRole
from services.common.broker.memory import MemoryBroker
from services.common.messages import SfRecord, SfRecordEvent, dump_event


def _event(tenant: str) -> SfRecordEvent:
    now = datetime.now(UTC)
    return SfRecordEvent(
        type="sf.record.reassigned",
        tenant=tenant,
        event_id=uuid.uuid4(),
        source_id="04l",
        occurred_at=now,
        received_at=now,
        payload=SfRecord(
            object="Lead",
            record_id="00Q5g0000ZWHszxEQD",
            owner_id="0055g0000Zti3ElAQI",
            system_modstamp=now,
        ),
    )


def _broker() -> tuple[MemoryBroker, list[SfRecordEvent]]:
    broker = MemoryBroker()
    events = [_event("acme"), _event("acme"), _event("globex")]
    for n, event in enumerate(events):
        broker.dead_letters.append(DeadLetter(str(n), "syncer", f"reason {n}", dump_event(event)))
    broker.dead_letters.append(DeadLetter("9", "syncer", "undecodable", b"\xff"))
    return broker, events


async def test_memory_dead_letters_are_listed_by_tenant_with_event_ids() -> None:
    broker, events = _broker()
    store = dl.dead_letter_store(broker)
    page = await dl.list_dead_letters(store, "acme", limit=10)
    assert [d.id for d in page.items] == [str(events[0].event_id), str(events[1].event_id)]
    assert page.items[0].reason == "reason 0" and page.items[0].event_type == "sf.record.reassigned"
    everything = await dl.list_dead_letters(store, None, limit=10)
    assert everything.items[-1].id == "memory-9" and everything.items[-1].tenant is None
    assert len(broker.dead_letters) == 4


async def test_memory_replay_republishes_and_removes_only_the_tenants_letters() -> None:
    broker, events = _broker()
    await broker.connect()
    store = dl.dead_letter_store(broker)
    replayed = await dl.replay_dead_letters(store, "acme")
    assert replayed.replayed == [str(events[0].event_id), str(events[1].event_id)]
    assert (await broker.queue_depths())[QueueRole.SYNCER.value] == 2
    assert [d.id for d in broker.dead_letters] == ["2", "9"]
    kept = await dl.replay_dead_letters(store, None, "memory-9")
    assert kept.not_replayable == ["memory-9"]
    discarded = await dl.discard_dead_letter(store, None, "memory-9")
    assert discarded.discarded == "memory-9" and [d.id for d in broker.dead_letters] == ["2"]
