"""Durable follow-up SLA timers on Postgres: two SLA loops (two assigner replicas) fire each due
timer exactly once, and a pass that dies before its commit leaves its timers due for the next."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.assigner.sla import Expiry
from services.assigner.sla_loop import SlaLoop
from services.common.db.engine import make_engine
from services.common.db.tables import audit_log, groups, outbox, records, sla_timers
from services.common.settings import Settings
from services.common.sla import SlaTimer

pytestmark = pytest.mark.integration

ALICE_SF = "0055g0000Zti3ElAQI"
TIMERS = 60


@pytest.fixture
async def engine(base_settings: Settings, clean: None) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(base_settings.database_url)
    yield engine
    await engine.dispose()


async def due_timers(engine: AsyncEngine, count: int) -> None:
    """`count` leads of alice's, assigned through group 7, whose 2 h SLA ran out a minute ago."""
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        await conn.execute(
            update(groups).where(groups.c.id == 7).values(sla_seconds=7200, max_escalations=2)
        )
        ids = (
            await conn.execute(
                insert(records).returning(records.c.id),
                [
                    {
                        "tenant_id": "acme",
                        "prospect_id": 50_000 + i,
                        "sf_record_id": f"00Q5g0000A{i:05d}AAA",
                        "sf_object": "Lead",
                        "sf_owner_id": ALICE_SF,
                        "ae_assigned_user_id": 101,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for i in range(count)
                ],
            )
        ).scalars()
        await conn.execute(
            insert(sla_timers),
            [
                {
                    "tenant_id": "acme",
                    "record_id": record_id,
                    "group_id": 7,
                    "ae_user_id": 101,
                    "sf_owner_id": ALICE_SF,
                    "state": "running",
                    "escalations": 0,
                    "seconds": 7200,
                    "business_hours": False,
                    "started_at": now - timedelta(hours=2, minutes=1),
                    "due_at": now - timedelta(minutes=1),
                    "created_at": now - timedelta(hours=2, minutes=1),
                }
                for record_id in ids
            ],
        )


async def count(conn: AsyncConnection, query: object) -> int:
    return int((await conn.execute(query)).scalar_one())  # type: ignore[call-overload]


async def test_two_sla_loops_fire_each_due_timer_exactly_once(engine: AsyncEngine) -> None:
    await due_timers(engine, TIMERS)
    loops = [SlaLoop(engine, replica=name, batch_size=7) for name in ("sla-a", "sla-b")]

    async def drain(loop: SlaLoop) -> None:
        while await loop.run_once():
            pass

    await asyncio.gather(*(drain(loop) for loop in loops))

    assert sum(loop.fired for loop in loops) == TIMERS
    async with engine.connect() as conn:
        states = Counter(
            (await conn.execute(select(sla_timers.c.state, sla_timers.c.escalations))).all()
        )
        assert states == {("escalated", 0): TIMERS, ("pending", 1): TIMERS}
        a9 = (
            await conn.execute(
                select(audit_log.c.record_id, func.count())
                .where(audit_log.c.rule == "A9")
                .group_by(audit_log.c.record_id)
            )
        ).all()
        assert len(a9) == TIMERS and {n for _, n in a9} == {1}
        patches = await count(
            conn, select(func.count()).select_from(outbox).where(outbox.c.kind == "sf.record.owner")
        )
        assert patches == TIMERS
        fired_by = Counter(
            (
                await conn.execute(
                    select(sla_timers.c.fired_by).where(sla_timers.c.state == "escalated")
                )
            ).scalars()
        )
        assert set(fired_by) <= {"sla-a", "sla-b"} and sum(fired_by.values()) == TIMERS


class DiesMidPass(SlaLoop):
    """A replica that crashes after deciding its first timer, before the commit."""

    async def _fire(self, conn: AsyncConnection, timer: SlaTimer, now: datetime) -> Expiry:
        await super()._fire(conn, timer, now)
        raise RuntimeError("killed before the commit")


async def test_a_pass_that_dies_before_its_commit_leaves_the_timer_due_and_it_fires_once(
    engine: AsyncEngine,
) -> None:
    await due_timers(engine, 1)

    with pytest.raises(RuntimeError):
        await DiesMidPass(engine, replica="sla-dead").run_once()
    async with engine.connect() as conn:
        assert (await conn.execute(select(sla_timers.c.state))).scalars().all() == ["running"]
        assert await count(conn, select(func.count()).select_from(outbox)) == 0

    survivor = SlaLoop(engine, replica="sla-b")
    assert await survivor.run_once() == 1
    assert await survivor.run_once() == 0
    async with engine.connect() as conn:
        fired = (await conn.execute(select(sla_timers.c.state, sla_timers.c.fired_by))).all()
        assert sorted(fired) == [("escalated", "sla-b"), ("pending", None)]
        assert await count(conn, select(func.count()).select_from(outbox)) == 1
