"""The relay against the AE simulator: repeated changes of one record go out as one call with
the newest owner; a failing AE is retried with a growing backoff, capped, for as long as the
outage lasts (the effect waits, it never dies of it); an effect AE refuses for good is dead at
once.

The effects are written by the real syncer (one transaction per batch, as the worker does) and
sent by the real relay and AE sender, one pass at a time. The AE client makes one try per call
here, so what is observed is the relay's own backoff, not the client's retries inside a pass.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from services.common.db.tables import outbox
from services.common.messages import SF_RECORD_REASSIGNED, SfRecordEvent
from services.common.runtime import Runtime
from services.common.settings import Settings
from services.relay.relay import Relay, Senders
from services.relay.senders import ae_prospect_sender
from services.sim.ae import AeSimState
from services.syncer.worker import apply_sf_events
from tests.events import sf_record_event
from tests.sims import ae_client_on_sims

KIM = "00Q5g0000ZWHszxEQD"
ALICE_SF, BOB_SF = "0055g0000Zti3ElAQI", "0055g0000M6fuVCAQY"
ALICE_AE, BOB_AE = 101, 102
BACKOFF, BACKOFF_MAX = 0.1, 0.4


@dataclass
class World:
    runtime: Runtime
    relay: Relay
    ae: AeSimState

    async def apply(self, *events: SfRecordEvent) -> None:
        """The syncer applies the events as one batch: decisions and their effects."""
        async with self.runtime.engine.begin() as conn:
            await apply_sf_events(conn, events, datetime.now(UTC))

    async def outbox_rows(self) -> list[dict[str, Any]]:
        async with self.runtime.engine.connect() as conn:
            rows = await conn.execute(select(outbox).order_by(outbox.c.id))
            return [dict(r._mapping) for r in rows]

    async def only_row(self) -> dict[str, Any]:
        [row] = await self.outbox_rows()
        return row

    async def until_due(self) -> None:
        """Until the pending effect's retry is due."""
        row = await self.only_row()
        wait = (_utc(row["next_attempt_at"]) - datetime.now(UTC)).total_seconds()
        await asyncio.sleep(max(wait, 0) + 0.01)

    async def pass_when_due(self) -> int:
        """One relay pass, once the pending effect's retry is due."""
        await self.until_due()
        return await self.relay.run_once()


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@pytest.fixture
async def world(runtime: Runtime, service_settings: Settings) -> AsyncIterator[World]:
    async with contextlib.AsyncExitStack() as stack:
        ae, client = await ae_client_on_sims(runtime, service_settings.ae_business_unit_id, stack)
        relay = Relay(
            runtime.engine,
            Senders(ae=ae_prospect_sender(client)),
            backoff_base=BACKOFF,
            backoff_max=BACKOFF_MAX,
        )
        yield World(runtime, relay, ae.state)


def _reassigned(owner: str, minute: int) -> SfRecordEvent:
    modstamp = datetime(2026, 11, 2, 9, minute, tzinfo=UTC)
    return sf_record_event(KIM, owner, type=SF_RECORD_REASSIGNED, modstamp=modstamp)


async def test_repeated_reassignments_of_one_record_go_out_as_one_call_with_the_newest_owner(
    world: World,
) -> None:
    created = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    await world.apply(sf_record_event(KIM, ALICE_SF, email="kim@example.com", modstamp=created))
    assert await world.relay.run_once() == 1
    [prospect_id] = world.ae.prospects
    world.relay.coalesce = timedelta(seconds=0.3)
    for minute, owner in enumerate([BOB_SF, ALICE_SF] * 2 + [BOB_SF], start=1):  # … bob
        await world.apply(_reassigned(owner, minute))
    patches_before = len(world.ae.calls("PATCH"))

    assert await world.relay.run_once() == 0, "changes younger than the window wait for more"
    await asyncio.sleep(0.35)
    assert await world.relay.run_once() == 5

    assert world.ae.prospects[prospect_id]["assignedUserId"] == BOB_AE  # the newest owner
    assert len(world.ae.calls("PATCH")) - patches_before == 1
    statuses = [r["status"] for r in await world.outbox_rows()]
    assert statuses == ["done"] + ["superseded"] * 4 + ["done"]


async def test_a_record_moved_back_to_the_owner_this_relay_sent_last_costs_no_call(
    world: World,
) -> None:
    created = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    await world.apply(sf_record_event(KIM, ALICE_SF, email="kim@example.com", modstamp=created))
    assert await world.relay.run_once() == 1
    for minute, owner in enumerate([BOB_SF, ALICE_SF], start=1):  # away and back
        await world.apply(_reassigned(owner, minute))

    assert await world.relay.run_once() == 2

    assert world.ae.calls("PATCH") == []  # AE holds alice since the create
    [prospect] = world.ae.prospects.values()
    assert prospect["assignedUserId"] == ALICE_AE
    statuses = [r["status"] for r in await world.outbox_rows()]
    assert statuses == ["done", "superseded", "superseded"]
    assert (world.relay.sent, world.relay.unchanged) == (1, 1)


async def test_failing_ae_is_retried_with_a_growing_backoff_until_the_effect_goes_through(
    world: World,
) -> None:
    # Delays of 250 ms and more: the pass right after each failure comes before the retry is
    # due even on a loaded machine (at 50 ms it sometimes did not).
    base = world.relay.backoff_base = 0.5
    world.relay.backoff_max = 4 * base
    world.ae.faults.configure(fail_next=100, fail_status=503)
    await world.apply(sf_record_event(KIM, BOB_SF, email="kim@example.com"))

    # The delay is drawn when the pass settles, somewhere between its start and its end: a
    # loaded machine can make the pass itself take a good part of a second.
    windows: list[tuple[float, float]] = []
    for attempt in (1, 2, 3):
        if attempt > 1:
            await world.until_due()
        before = datetime.now(UTC)
        handled = await world.relay.run_once()
        after = datetime.now(UTC)
        assert handled == 1
        row = await world.only_row()
        assert (row["status"], row["attempts"]) == ("pending", attempt)
        assert "503" in row["last_error"]
        due = _utc(row["next_attempt_at"])
        windows.append(((due - after).total_seconds(), (due - before).total_seconds()))
        # Backing off: a pass before the retry is due leaves the effect alone.
        assert await world.relay.run_once() == 0
    # Each delay is drawn from [d/2, d] with d doubling from the base.
    for attempt, (shortest, longest) in enumerate(windows, start=1):
        full = base * 2 ** (attempt - 1)
        assert shortest <= full + 0.01 and longest >= full / 2 - 0.01, (attempt, windows)
    assert sum(windows[2]) > sum(windows[0])  # it grows (the windows' midpoints)

    world.ae.faults.configure(fail_next=0)  # AE is back
    assert await world.pass_when_due() == 1
    row = await world.only_row()
    assert (row["status"], row["attempts"]) == ("done", 4)
    [prospect] = world.ae.prospects.values()  # one, made by the pass that went through
    assert prospect["assignedUserId"] == BOB_AE


async def test_an_ae_outage_makes_the_effect_wait_at_the_capped_backoff_never_die(
    world: World,
) -> None:
    world.ae.faults.configure(fail_next=1000, fail_status=503)
    await world.apply(sf_record_event(KIM, BOB_SF, email="kim@example.com"))
    assert await world.relay.run_once() == 1
    for _ in range(5):
        await world.until_due()
        assert await world.relay.run_once() == 1
        after = datetime.now(UTC)  # the delay is drawn before the pass ends: capped from there
        row = await world.only_row()
        assert row["status"] == "pending" and "503" in row["last_error"]
        assert (_utc(row["next_attempt_at"]) - after).total_seconds() <= BACKOFF_MAX + 0.01
    assert row["attempts"] == 6
    world.ae.faults.configure(fail_next=0)  # AE is back: the effect goes out
    assert await world.pass_when_due() == 1
    assert (await world.only_row())["status"] == "done"
    assert len(world.ae.prospects) == 1


async def test_effect_ae_refuses_for_good_is_dead_at_once(world: World) -> None:
    world.ae.faults.configure(fail_next=1, fail_status=400)
    await world.apply(sf_record_event(KIM, BOB_SF, email="kim@example.com"))
    assert await world.relay.run_once() == 1
    row = await world.only_row()
    assert (row["status"], row["attempts"]) == ("dead", 1)
    assert "400" in row["last_error"]
    assert world.ae.calls() == [400]
