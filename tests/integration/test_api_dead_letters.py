"""/v1 dead letters on the real RabbitMQ: listed without being lost, replayed to the events
exchange under their event type, discarded; a tenant's key sees only its own."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import aio_pika
import pytest
from aio_pika.abc import HeadersType

from services.common.broker.base import REASON_HEADER
from services.common.broker.rabbit import RabbitBroker
from services.common.messages import SfRecord, SfRecordEvent, dump_event, event_id_for
from tests.integration.api_support import ACME, ALICE_SF, GLOBEX, Api, error

pytestmark = pytest.mark.integration


def _event(tenant: str, n: int) -> SfRecordEvent:
    now = datetime.now(UTC)
    return SfRecordEvent(
        type="sf.record.created",
        tenant=tenant,
        event_id=event_id_for(tenant, "sf", f"04l-{n}-{uuid.uuid4().hex[:6]}"),
        source_id=f"04l-{n}",
        occurred_at=now,
        received_at=now,
        payload=SfRecord(
            object="Lead",
            record_id="00Q5g0000ZWHszxEQD",
            owner_id=ALICE_SF,
            system_modstamp=now,
        ),
    )


async def _park(
    broker: RabbitBroker,
    body: bytes,
    headers: HeadersType,
    *,
    message_id: str,
    type: str | None = None,
) -> None:
    """Put a message in the dead letters the way the workers do (through the DLX)."""
    await broker.connect()
    assert broker._connection is not None
    async with broker._connection.channel(publisher_confirms=True) as channel:
        dlx = await channel.get_exchange(broker.dlx_name)
        message = aio_pika.Message(body, headers=headers, message_id=message_id, type=type)
        await dlx.publish(message, routing_key="")


async def _park_event(broker: RabbitBroker, event: SfRecordEvent, reason: str) -> str:
    await _park(
        broker,
        dump_event(event),
        {REASON_HEADER: reason, "x-ownersync-queue": "syncer", "tenant": event.tenant},
        message_id=str(event.event_id),
        type=event.type,
    )
    return str(event.event_id)


async def _letters(api: Api) -> tuple[RabbitBroker, list[str]]:
    broker = api.runtime.broker
    assert isinstance(broker, RabbitBroker)
    ids = [
        await _park_event(broker, _event(ACME, 1), "delivery limit 3 reached: boom"),
        await _park_event(broker, _event(ACME, 2), "unknown tenant"),
        await _park_event(broker, _event(GLOBEX, 3), "globex trouble"),
    ]
    await _park(
        broker, b"not json at all", {REASON_HEADER: "undecodable event"}, message_id="junk-1"
    )
    return broker, ids


async def _depths(broker: RabbitBroker) -> dict[str, int]:
    return await broker.queue_depths()


async def test_listing_shows_the_tenants_own_letters_with_reasons_and_loses_none(api: Api) -> None:
    broker, (a1, a2, g1) = await _letters(api)
    first = (await api.get(f"/v1/tenants/{ACME}/dead-letters", key="read")).json()
    assert [(d["id"], d["reason"]) for d in first["items"]] == [
        (a1, "delivery limit 3 reached: boom"),
        (a2, "unknown tenant"),
    ]
    letter = first["items"][0]
    assert (letter["tenant"], letter["eventType"], letter["queue"]) == (
        ACME,
        "sf.record.created",
        "syncer",
    )
    assert letter["body"]["payload"]["owner_id"] == ALICE_SF
    again = (await api.get(f"/v1/tenants/{ACME}/dead-letters", key="read")).json()
    assert again == first
    assert (await _depths(broker))["dead-letters"] == 4
    globex = (await api.get(f"/v1/tenants/{GLOBEX}/dead-letters", key="globex")).json()
    assert [d["id"] for d in globex["items"]] == [g1]
    paged = (
        await api.get(f"/v1/tenants/{ACME}/dead-letters", key="read", params={"limit": 1})
    ).json()
    assert [d["id"] for d in paged["items"]] == [a1] and paged["nextCursor"]
    rest = await api.get(
        f"/v1/tenants/{ACME}/dead-letters",
        key="read",
        params={"limit": 1, "cursor": paged["nextCursor"]},
    )
    assert [d["id"] for d in rest.json()["items"]] == [a2] and rest.json()["nextCursor"] is None


async def test_operator_sees_every_letter_undecodable_ones_included(api: Api) -> None:
    await _letters(api)
    every = (await api.get("/v1/dead-letters")).json()["items"]
    assert [d["id"] for d in every][-1] == "junk-1"
    junk = every[-1]
    assert junk["body"] == "not json at all" and junk["tenant"] is None
    assert (await api.get("/v1/dead-letters", key="admin")).status_code == 403


async def test_replaying_one_letter_republishes_it_to_its_work_queue(api: Api) -> None:
    broker, (a1, a2, _) = await _letters(api)
    before = await _depths(broker)
    response = await api.post(f"/v1/tenants/{ACME}/dead-letters/{a1}/replay", key="admin")
    assert response.status_code == 200
    assert response.json() == {"replayed": [a1], "notReplayable": []}
    after = await _depths(broker)
    assert after["syncer"] == before["syncer"] + 1
    assert after["dead-letters"] == before["dead-letters"] - 1
    left = (await api.get(f"/v1/tenants/{ACME}/dead-letters", key="read")).json()["items"]
    assert [d["id"] for d in left] == [a2]
    gone = await api.post(f"/v1/tenants/{ACME}/dead-letters/{a1}/replay", key="admin")
    assert gone.status_code == 404 and error(gone)["code"] == "not_found"


async def test_replay_all_replays_only_the_tenants_letters(api: Api) -> None:
    broker, (a1, a2, g1) = await _letters(api)
    response = await api.post(f"/v1/tenants/{ACME}/dead-letters/replay", key="admin")
    assert response.json() == {"replayed": [a1, a2], "notReplayable": []}
    depths = await _depths(broker)
    assert depths["syncer"] == 2 and depths["dead-letters"] == 2
    globex = (await api.get(f"/v1/tenants/{GLOBEX}/dead-letters", key="globex")).json()["items"]
    assert [d["id"] for d in globex] == [g1]


async def test_discarding_removes_a_letter_for_good(api: Api) -> None:
    broker, (a1, a2, _) = await _letters(api)
    response = await api.delete(f"/v1/tenants/{ACME}/dead-letters/{a2}", key="admin")
    assert response.json() == {"discarded": a2}
    left = (await api.get(f"/v1/tenants/{ACME}/dead-letters", key="read")).json()["items"]
    assert [d["id"] for d in left] == [a1]
    assert (
        await api.delete(f"/v1/tenants/{ACME}/dead-letters/{a2}", key="admin")
    ).status_code == 404
    assert (await _depths(broker))["syncer"] == 0


async def test_another_tenants_key_can_neither_replay_nor_discard_a_letter(api: Api) -> None:
    broker, (a1, _, _) = await _letters(api)
    for call in (
        api.post(f"/v1/tenants/{GLOBEX}/dead-letters/{a1}/replay", key="globex"),
        api.delete(f"/v1/tenants/{GLOBEX}/dead-letters/{a1}", key="globex"),
        api.post(f"/v1/tenants/{ACME}/dead-letters/{a1}/replay", key="globex"),
    ):
        response = await call
        assert response.status_code == 404
    assert (await _depths(broker))["dead-letters"] == 4


async def test_a_letter_without_event_type_is_kept_as_not_replayable_then_discarded(
    api: Api,
) -> None:
    broker, _ = await _letters(api)
    response = await api.post("/v1/dead-letters/junk-1/replay")
    assert response.json() == {"replayed": [], "notReplayable": ["junk-1"]}
    assert (await _depths(broker))["dead-letters"] == 4
    assert (await api.delete("/v1/dead-letters/junk-1")).json() == {"discarded": "junk-1"}
    assert (await _depths(broker))["dead-letters"] == 3


async def test_replay_and_discard_need_the_admin_scope(api: Api) -> None:
    _, (a1, _, _) = await _letters(api)
    for key in ("read", "write"):
        response = await api.post(f"/v1/tenants/{ACME}/dead-letters/{a1}/replay", key=key)
        assert response.status_code == 403
