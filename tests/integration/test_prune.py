"""Pruning on the real Postgres: inbox entries and settled outbox rows older than the retention
go in bounded batches, several pruners side by side delete each row once, everything younger,
unsettled or in the audit log stays; the partial outbox index keeps the relay's claim off the
settled rows."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db.engine import make_engine
from services.common.db.prune import Pruner, prune_batch
from services.common.db.tables import audit_log, inbox, outbox, records
from services.common.settings import Settings

pytestmark = pytest.mark.integration

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
RETENTION = timedelta(hours=48)
OLD = NOW - RETENTION - timedelta(minutes=1)
YOUNG = NOW - RETENTION + timedelta(minutes=1)


@pytest.fixture
async def engine(base_settings: Settings, clean: None) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(base_settings.database_url)
    yield engine
    await engine.dispose()


async def a_record(engine: AsyncEngine) -> int:
    async with engine.begin() as conn:
        row = {"tenant_id": "acme", "prospect_id": 1, "created_at": OLD, "updated_at": OLD}
        return int(
            (await conn.execute(insert(records).values(row).returning(records.c.id))).scalar_one()
        )


async def fill_inbox(engine: AsyncEngine, old: int, young: int) -> None:
    rows = [
        {
            "event_id": f"{'old' if i < old else 'young'}-{i}",
            "tenant_id": "acme",
            "type": "sf.record.reassigned",
            "source_id": f"n{i}",
            "processed_at": OLD - timedelta(seconds=i) if i < old else YOUNG,
        }
        for i in range(old + young)
    ]
    async with engine.begin() as conn:
        await conn.execute(insert(inbox), rows)


async def fill_outbox(
    engine: AsyncEngine, record_id: int, rows: list[tuple[str, datetime]]
) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            insert(outbox),
            [
                {
                    "tenant_id": "acme",
                    "record_id": record_id,
                    "target": "ae",
                    "kind": "ae.prospect.upsert",
                    "payload": {},
                    "status": status,
                    "attempts": 1,
                    "next_attempt_at": at,
                    "created_at": at,
                    "done_at": at if status in ("done", "superseded", "discarded") else None,
                }
                for status, at in rows
            ],
        )


async def count(engine: AsyncEngine, query: object) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(query)).scalar_one())  # type: ignore[call-overload]


def pruned_total(table: str) -> float:
    return REGISTRY.get_sample_value("ownersync_pruned_rows_total", {"table": table}) or 0.0


async def test_inbox_entries_older_than_the_retention_are_pruned_in_batches(
    engine: AsyncEngine,
) -> None:
    await fill_inbox(engine, old=25, young=7)
    before = pruned_total("inbox")

    first = await prune_batch(engine, "inbox", NOW - RETENTION, limit=10)

    assert first == 10  # one batch is bounded
    pruned = await Pruner(engine, RETENTION, batch_size=10, clock=lambda: NOW).prune_once()
    assert pruned["inbox"] == 15
    async with engine.connect() as conn:
        remaining = {r.event_id for r in await conn.execute(select(inbox.c.event_id))}
    assert remaining == {f"young-{i}" for i in range(25, 32)}
    assert pruned_total("inbox") - before == 25


async def test_settled_outbox_rows_are_pruned_but_unsettled_and_young_ones_and_the_audit_stay(
    engine: AsyncEngine,
) -> None:
    record_id = await a_record(engine)
    await fill_outbox(
        engine,
        record_id,
        [
            ("done", OLD),
            ("superseded", OLD),
            ("discarded", OLD),
            ("dead", OLD),  # an operator's to look at: kept
            ("pending", OLD),  # still to send: kept
            ("done", YOUNG),
        ],
    )
    async with engine.begin() as conn:
        await conn.execute(
            insert(audit_log),
            [
                {
                    "tenant_id": "acme",
                    "record_id": record_id,
                    "rule": "S1",
                    "reason": "old decision",
                    "created_at": OLD,
                }
            ],
        )

    pruned = await Pruner(engine, RETENTION, clock=lambda: NOW).prune_once()

    assert pruned == {"inbox": 0, "outbox": 3}
    async with engine.connect() as conn:
        left = sorted(
            (r.status, r.created_at == YOUNG)
            for r in await conn.execute(select(outbox.c.status, outbox.c.created_at))
        )
    assert left == [("dead", False), ("done", True), ("pending", False)]
    assert await count(engine, select(func.count()).select_from(audit_log)) == 1


async def test_pruners_side_by_side_delete_every_old_entry_once(engine: AsyncEngine) -> None:
    await fill_inbox(engine, old=3000, young=50)
    pruners = [Pruner(engine, RETENTION, batch_size=100, clock=lambda: NOW) for _ in range(3)]

    results = await asyncio.gather(*(p.prune_once() for p in pruners))

    assert sum(r["inbox"] for r in results) == 3000
    assert await count(engine, select(func.count()).select_from(inbox)) == 50


async def test_the_relays_claim_reads_the_partial_index_not_the_settled_rows(
    engine: AsyncEngine,
) -> None:
    record_id = await a_record(engine)
    await fill_outbox(engine, record_id, [("done", OLD)] * 20_000 + [("pending", YOUNG)] * 3)
    async with engine.begin() as conn:
        await conn.execute(text("ANALYZE outbox"))
        plan = "\n".join(
            r[0]
            for r in await conn.execute(
                text(
                    "EXPLAIN SELECT id FROM outbox WHERE status IN ('pending', 'sending') "
                    "AND next_attempt_at <= now() ORDER BY id LIMIT 200 FOR UPDATE SKIP LOCKED"
                )
            )
        )
    assert "ix_outbox_unsettled" in plan, plan
