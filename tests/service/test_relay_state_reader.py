"""The relay reads the latest decided state of the records it sends to AE in batches: the sends
that ask at about the same time (once each holds its lane, just before its call) share one
query, and what goes out is still the state decided last before that read, not the claim's.

The effects are written by the real syncer and sent by the real relay and AE sender over HTTP
to the AE simulator, on the SQLite store (the Postgres form is in tests/integration)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from services.common.db.engine import make_engine
from services.common.db.tables import records
from services.common.messages import SF_RECORD_REASSIGNED, SfRecordEvent
from services.common.runtime import Runtime
from services.common.settings import Settings
from services.common.sfid import to18
from services.relay.relay import Relay, Senders, StateReader
from services.relay.senders import ae_prospect_sender
from services.sim.ae import AeSimState
from services.syncer.worker import apply_sf_events
from tests.events import sf_record_event
from tests.sims import ae_client_on_sims

ALICE_SF, BOB_SF = "0055g0000Zti3ElAQI", "0055g0000M6fuVCAQY"
ALICE_AE, BOB_AE = 101, 102
CREATED = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def lead(n: int) -> str:
    return to18(f"00Q5g{n:010d}")


@dataclass
class World:
    runtime: Runtime
    relay: Relay
    ae: AeSimState

    async def apply(self, events: list[SfRecordEvent]) -> None:
        async with self.runtime.engine.begin() as conn:
            await apply_sf_events(conn, events, datetime.now(UTC))

    async def created(self, count: int) -> list[int]:
        """`count` leads owned by alice, decided; their record ids."""
        await self.apply(
            [
                sf_record_event(lead(n), ALICE_SF, email=f"l{n}@example.com", modstamp=CREATED)
                for n in range(count)
            ]
        )
        async with self.runtime.engine.connect() as conn:
            return list((await conn.execute(select(records.c.id).order_by(records.c.id))).scalars())

    async def reassigned(self, count: int, owner: str, minute: int) -> None:
        modstamp = CREATED + timedelta(minutes=minute)
        await self.apply(
            [
                sf_record_event(lead(n), owner, type=SF_RECORD_REASSIGNED, modstamp=modstamp)
                for n in range(count)
            ]
        )


@pytest.fixture
async def world(runtime: Runtime, service_settings: Settings) -> AsyncIterator[World]:
    async with contextlib.AsyncExitStack() as stack:
        ae, client = await ae_client_on_sims(runtime, service_settings.ae_business_unit_id, stack)
        relay = Relay(runtime.engine, Senders(ae=ae_prospect_sender(client)))
        yield World(runtime, relay, ae.state)


async def test_reads_asked_together_are_one_query_and_each_gets_its_own_row(
    world: World,
) -> None:
    ids = await world.created(30)
    reader = StateReader(world.runtime.engine)
    missing = max(ids) + 1000

    rows = await asyncio.gather(*(reader.read(i) for i in [*ids, ids[0], missing]))

    assert reader.queries == 1
    assert [row.id for row in rows[: len(ids)]] == ids
    assert [row.sf_record_id for row in rows[: len(ids)]] == [lead(n) for n in range(30)]
    assert rows[len(ids)].id == ids[0], "two sends asking for one record both get it"
    assert rows[-1] is None, "a record that is gone reads as None"


async def test_a_read_asked_after_a_change_sees_it_and_a_later_ask_is_a_new_query(
    world: World,
) -> None:
    [record_id] = await world.created(1)
    reader = StateReader(world.runtime.engine)
    assert (await reader.read(record_id)).ae_assigned_user_id == ALICE_AE

    await world.reassigned(1, BOB_SF, minute=1)

    assert (await reader.read(record_id)).ae_assigned_user_id == BOB_AE
    assert reader.queries == 2


async def test_a_failed_read_fails_every_send_that_asked_and_the_next_read_works(
    world: World, tmp_path: Path
) -> None:
    ids = await world.created(3)
    broken = make_engine(f"sqlite+aiosqlite:///{tmp_path}/no/such/dir/ownersync.db")
    reader = StateReader(broken)

    results = await asyncio.gather(*(reader.read(i) for i in ids), return_exceptions=True)
    assert all(isinstance(r, Exception) for r in results), results
    await broken.dispose()

    reader.engine = world.runtime.engine  # the database is back
    assert (await reader.read(ids[0])).id == ids[0]


async def test_a_pass_of_many_sends_reads_states_in_fewer_queries_than_sends(
    world: World,
) -> None:
    count = 40
    await world.created(count)
    assert await world.relay.run_once() == count  # the creates
    queries_before = world.relay.states.queries

    await world.reassigned(count, BOB_SF, minute=1)
    assert await world.relay.run_once() == count

    queries = world.relay.states.queries - queries_before
    # The first sends (5 calls and their read-ahead) ask at once; the rest as calls end.
    assert 1 <= queries <= count - 6
    assert all(p["assignedUserId"] == BOB_AE for p in world.ae.prospects.values())


async def test_an_owner_decided_after_the_claim_is_the_one_sent(world: World) -> None:
    await world.created(5)
    assert await world.relay.run_once() == 5  # AE holds alice
    await world.reassigned(5, BOB_SF, minute=1)
    patches_before = len(world.ae.calls("PATCH"))

    claims = await world.relay.claim()  # the claimed rows carry bob
    await world.reassigned(5, ALICE_SF, minute=2)  # decided while the records are claimed
    assert await world.relay.deliver(claims) == 5

    # Read after the claim: alice, which AE holds from the last send, so no call at all (the
    # claim's bob would have cost 5 PATCHes carrying an owner already replaced).
    assert len(world.ae.calls("PATCH")) == patches_before
    assert world.relay.unchanged == 5
    assert all(p["assignedUserId"] == ALICE_AE for p in world.ae.prospects.values())
