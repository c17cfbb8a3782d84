"""Bulk mode against the AE simulator over HTTP: a tenant's backlog of owner changes above the
threshold goes through one AE import (a handful of calls), failed rows are retried one by one,
a small backlog stays one by one, and a relay stopped mid-import loses nothing.

The effects are written by the real syncer and sent by the real relay, its AE sender and client.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from services.bootstrap import ROLES
from services.bootstrap import running as roles_running
from services.common.ae_client import AeClient
from services.common.db.tables import outbox, relay_leases
from services.common.runtime import Runtime
from services.common.settings import Settings
from services.common.sfid import to18
from services.relay.bulk import BulkMode, BulkResult
from services.relay.relay import Relay, Senders
from services.relay.senders import ae_prospect_sender
from services.sim.ae import AeSimState
from services.syncer.worker import apply_sf_events
from tests.events import sf_record_event
from tests.sims import ae_client_on_sims

ALICE_SF, BOB_SF = "0055g0000Zti3ElAQI", "0055g0000M6fuVCAQY"
ALICE_AE, BOB_AE = 101, 102
CREATED = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
IMPORTS = "/api/v5/imports"


def lead(n: int) -> str:
    return to18(f"00Q5g{n:010d}")


@dataclass
class World:
    runtime: Runtime
    ae: AeSimState
    client: AeClient
    created_up_to: int = 0  # the outbox rows of the creates: not what a test looks at

    def relay(self, **options: Any) -> Relay:
        options = {"interval": 0.02, "backoff_base": 0.02, "backoff_max": 0.05, **options}
        return Relay(self.runtime.engine, Senders(ae=ae_prospect_sender(self.client)), **options)

    def bulk(self, relay: Relay, **options: Any) -> BulkMode:
        options = {"threshold": 10, "size": 1000, "poll": 0.05, "interval": 0.05, **options}

        async def client(_: str) -> AeClient:
            return self.client

        return BulkMode(relay, client, **options)

    async def created(self, count: int) -> None:
        """`count` leads owned by alice, their prospects made in AE one by one."""
        await self._apply(
            [
                sf_record_event(lead(n), ALICE_SF, email=f"l{n}@example.com", modstamp=CREATED)
                for n in range(count)
            ]
        )
        relay = self.relay()
        while await relay.run_once():
            pass
        assert len(self.ae.prospects) == count
        self.ae.reset_counts()
        async with self.runtime.engine.connect() as conn:
            self.created_up_to = (await conn.execute(select(func.max(outbox.c.id)))).scalar_one()

    async def reassigned(self, count: int, owner: str) -> None:
        stamp = CREATED + timedelta(hours=1)
        await self._apply([sf_record_event(lead(n), owner, modstamp=stamp) for n in range(count)])

    async def _apply(self, events: list[Any]) -> None:
        async with self.runtime.engine.begin() as conn:
            await apply_sf_events(conn, events, datetime.now(UTC))

    async def unsent(self) -> int:
        async with self.runtime.engine.connect() as conn:
            query = select(func.count()).where(outbox.c.status.in_(("pending", "sending")))
            return int((await conn.execute(query)).scalar_one())

    async def statuses(self) -> set[str]:
        async with self.runtime.engine.connect() as conn:
            query = select(outbox.c.status).where(outbox.c.id > self.created_up_to)
            return set((await conn.execute(query)).scalars())

    def owners(self) -> set[int | None]:
        return {p["assignedUserId"] for p in self.ae.prospects.values()}

    def patched(self) -> int:
        """Prospect updates: one AE call per record."""
        return len(self.ae.calls("PATCH")) - len(self.import_calls("PATCH"))

    def import_calls(self, method: str) -> list[str]:
        return [path for m, path, _ in self.ae.call_log if m == method and path.startswith(IMPORTS)]

    async def importing(self, relay: Relay) -> asyncio.Task[BulkResult]:
        """An import of the waiting owners by `relay`, returned once AE has it (submitted)."""
        task = asyncio.create_task(self.bulk(relay).run_once("acme"))
        async with asyncio.timeout(10):
            while not self.import_calls("PATCH"):
                await asyncio.sleep(0.01)
        return task


@pytest.fixture
async def world(runtime: Runtime, service_settings: Settings) -> AsyncIterator[World]:
    async with contextlib.AsyncExitStack() as stack:
        ae, client = await ae_client_on_sims(runtime, service_settings.ae_business_unit_id, stack)
        yield World(runtime, ae.state, client)


async def drain(relay: Relay, world: World, within: float = 30.0) -> None:
    """The one-by-one path, until nothing is left to send."""
    async with asyncio.timeout(within):
        while await world.unsent():
            await relay.run_once()
            await asyncio.sleep(0.02)


async def test_a_backlog_above_the_threshold_goes_through_one_import(world: World) -> None:
    count = 40
    await world.created(count)
    await world.reassigned(count, BOB_SF)
    relay = world.relay()
    bulk = world.bulk(relay)

    result = await bulk.run_once("acme")

    assert (result.imported, result.failed, result.outcome) == (count, 0, "complete")
    assert world.owners() == {BOB_AE}
    assert await world.statuses() == {"done"}
    # One create, one submit, a few status reads; no call per prospect.
    assert len(world.import_calls("POST")) == 1 and len(world.import_calls("PATCH")) == 1
    assert world.patched() == 0
    assert result.calls == len(world.ae.call_log) <= 2 + 10
    # Recorded like a normal send: the same owner decided again costs no call.
    async with world.runtime.engine.connect() as conn:
        sent = list((await conn.execute(select(relay_leases.c.sent))).scalars())
    assert len(sent) == count
    assert all(s["ae.prospect.upsert"]["effect"]["assigned_user_id"] == BOB_AE for s in sent)


async def test_a_failed_row_is_retried_one_by_one_and_not_imported_again(world: World) -> None:
    count = 20
    await world.created(count)
    await world.reassigned(count, BOB_SF)
    busy = min(world.ae.prospects)
    world.ae.import_row_faults.add(busy)
    relay = world.relay()
    bulk = world.bulk(relay)

    result = await bulk.run_once("acme")
    assert (result.imported, result.failed) == (count - 1, 1)
    assert world.ae.prospects[busy]["assignedUserId"] == ALICE_AE
    async with world.runtime.engine.connect() as conn:
        row = (await conn.execute(select(outbox).where(outbox.c.status == "pending"))).one()
    assert row.attempts == 1 and "simulated row fault" in row.last_error
    # Still above nothing: the failed row is not for another import, it goes alone.
    assert (await bulk.run_once("acme")).outcome == "nothing"
    await drain(relay, world)

    assert world.owners() == {BOB_AE}
    assert world.patched() == 1
    assert len(world.import_calls("POST")) == 1
    assert await world.statuses() == {"done"}


async def test_a_row_for_an_unknown_user_fails_the_import_row_then_dies_alone(
    world: World,
) -> None:
    count = 12
    await world.created(count)
    await world.reassigned(count, BOB_SF)
    gone = min(world.ae.prospects)
    del world.ae.users[BOB_AE]  # removed from AE since ownersync synced its users
    relay = world.relay()

    result = await world.bulk(relay).run_once("acme")
    assert (result.imported, result.failed) == (0, count)
    await drain(relay, world)

    # AE refuses the owner one by one too: the effects are dead, with AE's reason.
    assert await world.statuses() == {"dead"}
    assert world.ae.prospects[gone]["assignedUserId"] == ALICE_AE


async def test_a_backlog_below_the_threshold_stays_one_by_one(world: World) -> None:
    count = 8
    await world.created(count)
    await world.reassigned(count, BOB_SF)
    relay = world.relay()
    world.bulk(relay, threshold=count)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        async with asyncio.timeout(30):
            while await world.unsent():
                await asyncio.sleep(0.02)
    finally:
        stop.set()
        await task

    assert world.import_calls("POST") == []
    assert world.patched() == count
    assert world.owners() == {BOB_AE}


async def test_the_relay_hook_sends_a_burst_by_import_beside_the_one_by_one_path(
    world: World,
) -> None:
    count = 120
    await world.created(count)
    world.ae.faults.configure(latency_ms=100)  # the one-by-one path takes its time
    await world.reassigned(count, BOB_SF)
    relay = world.relay(batch_size=10)
    world.bulk(relay, threshold=40)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        async with asyncio.timeout(60):
            while await world.unsent():
                await asyncio.sleep(0.02)
    finally:
        stop.set()
        await task

    assert world.owners() == {BOB_AE}
    assert await world.statuses() == {"done"}
    assert len(world.import_calls("POST")) >= 1
    assert world.patched() < count // 2, world.patched()
    assert len(world.ae.call_log) < count // 2


async def test_a_relay_killed_mid_import_loses_nothing(world: World) -> None:
    count = 30
    await world.created(count)
    world.ae.import_seconds = 0.6
    await world.reassigned(count, BOB_SF)
    task = await world.importing(world.relay(owner="killed", lease=0.8))
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert await world.unsent() == count  # nothing settled: the rows wait out their leases
    assert await world.relay(owner="early").run_once() == 0  # leased: no one sends them yet

    # Another relay, one by one, sends them once the import's leases are over.
    await asyncio.sleep(0.9)
    other = world.relay(owner="other")
    await drain(other, world)
    assert world.owners() == {BOB_AE}
    assert await world.statuses() == {"done"}


async def test_an_import_whose_create_answer_was_lost_is_never_processed_and_sent_again(
    world: World,
) -> None:
    count = 15
    await world.created(count)
    await world.reassigned(count, BOB_SF)
    relay = world.relay()
    bulk = world.bulk(relay, cooldown=0.0)
    world.ae.faults.configure(lose_answers_after_apply=1)  # the create is made, its answer lost

    lost = await bulk.run_once("acme")
    assert lost.outcome == "put_back"
    (orphan,) = world.ae.imports.values()
    assert orphan["status"] == "Open"  # made, never submitted: AE will not process it
    async with world.runtime.engine.connect() as conn:
        rows = (await conn.execute(select(outbox).where(outbox.c.id > world.created_up_to))).all()
    assert {(r.status, r.attempts) for r in rows} == {("pending", 0)}  # not an attempt

    again = await bulk.run_once("acme")
    assert (again.outcome, again.imported) == ("complete", count)
    assert [i["status"] for i in world.ae.imports.values()] == ["Open", "Complete"]
    assert world.owners() == {BOB_AE}
    assert await world.statuses() == {"done"}


async def test_an_import_refused_by_ae_rests_bulk_mode_and_the_owners_go_one_by_one(
    world: World,
) -> None:
    count = 15
    await world.created(count)
    await world.reassigned(count, BOB_SF)
    relay = world.relay()
    bulk = world.bulk(relay, cooldown=0.0, refused_rest=3600.0)
    world.ae.imports_refused = True  # no Import ability: a 403, not a passing fault

    refused = await bulk.run_once("acme")
    assert refused.outcome == "put_back"
    assert not world.ae.imports
    assert not bulk._due("acme", count)  # resting for the hour, though above the threshold
    await drain(relay, world)
    assert world.patched() == count
    assert world.owners() == {BOB_AE}
    assert await world.statuses() == {"done"}


async def test_an_import_longer_than_a_lease_keeps_its_records_leased_by_renewing(
    world: World,
) -> None:
    count = 20
    await world.created(count)
    world.ae.import_seconds = 2.0  # more than three of the relay's leases
    await world.reassigned(count, BOB_SF)
    importing = await world.importing(world.relay(owner="importer", lease=0.6))
    other = world.relay(owner="other")
    for _ in range(6):  # 1.8 s: three leases would have run out without renewals
        await asyncio.sleep(0.3)
        assert await other.run_once() == 0
    result = await importing
    assert (result.outcome, result.imported) == ("complete", count)
    assert world.patched() == 0  # nobody sent them one by one meanwhile
    assert world.owners() == {BOB_AE}
    assert await world.statuses() == {"done"}


async def test_the_relay_role_counts_backlogs_and_settles_as_its_settings_say(
    service_settings: Settings,
) -> None:
    settings = service_settings.model_copy(
        update={
            "ae_bulk_check_ms": 3000,
            "relay_metrics_interval_ms": 7000,
            "relay_settle_wait_ms": 250,
        }
    )
    async with roles_running(settings, ROLES, asyncio.Event()) as live:
        assert live.relay is not None and isinstance(live.relay.bulk, BulkMode)
        assert live.relay.bulk.interval == 3.0  # the backlog count: not every second
        assert (live.relay.observe_every, live.relay.settle_wait) == (7.0, 0.25)
