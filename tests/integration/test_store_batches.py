"""The store's batch path on Postgres: one locked query for a batch's records, and two statements
for its writes (the new records, whose ids come back, then the updates and the inbox, audit and
outbox rows together), each table's rows as one JSON parameter: the same statements for any
batch size."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.common.db import bulk, sla_store, store
from services.common.db.engine import make_engine
from services.common.db.tables import (
    audit_log,
    connected_users,
    inbox,
    outbox,
    records,
    sla_timers,
)
from services.common.domain import AeProspectUpsert, Decision, RecordState, Rule
from services.common.messages import SfRecord, SfRecordEvent, event_id_for
from services.common.settings import Settings
from services.common.sla import SlaPolicy, SlaTimer

pytestmark = pytest.mark.integration

TENANT = "acme"
NOW = datetime(2026, 11, 2, 9, tzinfo=UTC)
OWNER = "0055g0000Zti3ElAQI"


@pytest.fixture
async def engine(base_settings: Settings, clean: None) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(base_settings.database_url)
    yield engine
    await engine.dispose()


async def insert_record(engine: AsyncEngine, age_minutes: int, **values: Any) -> int:
    created = NOW - timedelta(minutes=age_minutes)
    async with engine.begin() as conn:
        inserted = await conn.execute(
            records.insert().returning(records.c.id),
            [{"tenant_id": TENANT, "created_at": created, "updated_at": created, **values}],
        )
        return int(inserted.scalar_one())


def timer_row(record_id: int, state: str, **values: Any) -> dict[str, Any]:
    """A timer row as the assigner writes it, moved on to `state`."""
    row = sla_store.new_timer(TENANT, record_id, 1, 5, OWNER, SlaPolicy(seconds=3600), 0, NOW)
    return {**row, "state": state, "started_at": NOW, "due_at": None, "ended_at": None, **values}


@contextlib.asynccontextmanager
async def statements(conn: AsyncConnection) -> AsyncIterator[list[str]]:
    """Every statement sent on `conn` meanwhile, through SQLAlchemy or straight through asyncpg
    (but the BEGIN that opens the transaction)."""
    seen: list[str] = []
    driver = (await conn.get_raw_connection()).driver_connection
    assert driver is not None

    def logged(query: Any) -> None:  # asyncpg's own execute/fetch
        if not query.query.startswith("BEGIN"):
            seen.append(query.query)

    def executed(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    driver.add_query_logger(logged)
    event.listen(conn.sync_connection, "before_cursor_execute", executed)
    try:
        yield seen
    finally:
        driver.remove_query_logger(logged)
        event.remove(conn.sync_connection, "before_cursor_execute", executed)


async def test_a_batch_finds_its_records_and_the_oldest_unlinked_prospects_in_one_query(
    engine: AsyncEngine,
) -> None:
    known_id = await insert_record(engine, 5, sf_record_id="00Q5g0000ZW0001AAA", prospect_id=1)
    await insert_record(engine, 5, prospect_id=2, email="kim@example.com")  # younger
    await insert_record(engine, 9, prospect_id=3, email="kim@example.com")
    await insert_record(engine, 20, prospect_id=4, email="kim@example.com")  # the oldest
    # Linked already: not a candidate for S9 although older.
    linked = "00Q5g0000ZW0009AAA"
    await insert_record(engine, 30, prospect_id=5, email="kim@example.com", sf_record_id=linked)
    async with engine.begin() as conn:
        # asyncpg learns the array types on a connection's first use of them
        await store.records_of_sf_events(conn, TENANT, ["00Q5g0000ZW0003AAA"], [])
        async with statements(conn) as seen:
            known, unlinked = await store.records_of_sf_events(
                conn,
                TENANT,
                ["00Q5g0000ZW0001AAA", "00Q5g0000ZW0002AAA"],
                ["Kim@Example.com", None],
            )
    assert len(seen) == 1 and "FOR UPDATE" in seen[0]
    assert {k: r.id for k, r in known.items()} == {"00Q5g0000ZW0001AAA": known_id}
    assert {email: r.prospect_id for email, r in unlinked.items()} == {"kim@example.com": 4}


def sf_event(n: int) -> SfRecordEvent:
    source = f"04l5g0000u{n:05d}"
    return SfRecordEvent(
        type="sf.record.created",
        tenant=TENANT,
        event_id=event_id_for(TENANT, "sf", source),
        source_id=source,
        occurred_at=NOW,
        received_at=NOW,
        payload=SfRecord(
            object="Lead",
            record_id=f"00Q5g0000ZW{n:04d}",
            owner_id=OWNER,
            system_modstamp=NOW + timedelta(n),
        ),
    )


async def write_batch(engine: AsyncEngine, first: int, size: int) -> list[str]:
    """Stage `size` S2 decisions of new records and flush them; the statements flush sent."""
    async with engine.begin() as conn:
        writer = store.BatchWriter(conn, NOW)
        for n in range(first, first + size):
            e = sf_event(n)
            after = RecordState(
                sf_record_id=e.payload.record_id,
                sf_object="Lead",
                email=f"Lead{n}@Example.com",
                sf_owner_id=OWNER,
                ae_assigned_user_id=n,
                last_modstamp=e.payload.system_modstamp,
            )
            await writer.apply(
                TENANT, e, Decision(Rule.S2, f"new {n}", None, after, (AeProspectUpsert.of(after),))
            )
        async with statements(conn) as seen:
            await writer.flush()
    return seen


async def test_a_batch_of_new_records_writes_their_audit_and_outbox_rows_with_the_real_ids(
    engine: AsyncEngine,
) -> None:
    await write_batch(engine, 0, 3)
    async with engine.connect() as conn:
        stored = {r.sf_record_id: r for r in await conn.execute(select(records))}
        audit = list(await conn.execute(select(audit_log).order_by(audit_log.c.id)))
        effects = list(await conn.execute(select(outbox).order_by(outbox.c.id)))
        processed = {r.event_id for r in await conn.execute(select(inbox))}
    assert processed == {str(sf_event(n).event_id) for n in range(3)}
    for n, (row, effect) in enumerate(zip(audit, effects, strict=True)):
        record = stored[sf_event(n).payload.record_id]
        assert row.record_id == effect.record_id == record.id
        assert record.email == f"lead{n}@example.com" and record.ae_assigned_user_id == n
        assert row.reason == f"new {n}" and row.after["ae_assigned_user_id"] == n
        assert row.before is None
        assert effect.payload["assigned_user_id"] == n and effect.payload["version"] == 1
        assert effect.status == "pending" and effect.next_attempt_at == NOW


async def test_a_stored_record_is_updated_in_the_same_batch_statement(engine: AsyncEngine) -> None:
    await write_batch(engine, 0, 2)
    async with engine.begin() as conn:
        ids = [sf_event(n).payload.record_id for n in range(2)]
        known, _ = await store.records_of_sf_events(conn, TENANT, ids, [])
        writer = store.BatchWriter(conn, NOW + timedelta(hours=1))
        for n, record in enumerate(sorted(known.values(), key=lambda r: r.id or 0)):
            moved = record.evolve(ae_assigned_user_id=100 + n, sf_owner_id=None)
            effect = AeProspectUpsert.of(moved)
            await writer.apply(
                TENANT, sf_event(10 + n), Decision(Rule.S5, "moved", record, moved, (effect,))
            )
        async with statements(conn) as seen:
            await writer.flush()
    assert len(seen) == 1 and seen[0].startswith("WITH ")  # one round trip for all four
    async with engine.connect() as conn:
        rows = sorted(await conn.execute(select(records)), key=lambda r: r.id)
        processed = {r.event_id for r in await conn.execute(select(inbox))}
        audit = list(await conn.execute(select(audit_log).where(audit_log.c.reason == "moved")))
        effects = list(await conn.execute(select(outbox)))
    assert [(r.ae_assigned_user_id, r.sf_owner_id) for r in rows] == [(100, None), (101, None)]
    assert all(r.updated_at == NOW + timedelta(hours=1) and r.created_at == NOW for r in rows)
    assert {str(sf_event(10 + n).event_id) for n in range(2)} <= processed
    assert sorted(r.after["ae_assigned_user_id"] for r in audit) == [100, 101]
    assert sorted(e.payload["assigned_user_id"] for e in effects) == [0, 1, 100, 101]


async def test_batches_of_any_size_send_the_same_two_statements(engine: AsyncEngine) -> None:
    await write_batch(engine, 100, 1)  # asyncpg learns the array types on first use
    sent = [await write_batch(engine, first, size) for first, size in ((0, 1), (1, 7), (8, 40))]
    assert len(sent[0]) == 2  # records; then inbox, audit_log and outbox in one
    assert sent[0] == sent[1] == sent[2]


async def test_the_asyncpg_look_ups_answer_what_the_portable_path_answers(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Policies, processed ids, connected users, records and S9 candidates, open SLA timers:
    the same answers straight through asyncpg as through SQLAlchemy Core (the path SQLite
    takes)."""
    await write_batch(engine, 0, 3)
    await insert_record(engine, 9, prospect_id=7, email="kim@example.com")
    timed = [await insert_record(engine, 1, prospect_id=p) for p in (11, 12, 13)]
    async with engine.begin() as conn:
        await conn.execute(
            sla_timers.insert(),
            [
                timer_row(timed[0], "running", due_at=NOW + timedelta(hours=1)),
                timer_row(timed[1], "met", ended_at=NOW),  # ended: not an open timer
                timer_row(timed[2], "pending"),
            ],
        )
    async with engine.connect() as conn:
        users = [r.sf_user_id for r in await conn.execute(select(connected_users))]
    assert users, "the demo tenant has connected users"
    sf_ids = [sf_event(n).payload.record_id for n in (0, 2, 9)]
    event_ids = [str(sf_event(n).event_id) for n in (1, 5)]

    def by_id(timer: SlaTimer) -> int:
        return timer.id

    async def look_up() -> tuple[tuple[Any, ...], list[str]]:
        """The four answers, and the statements that went through SQLAlchemy for them."""
        through_core: list[str] = []
        async with engine.begin() as conn:
            event.listen(
                conn.sync_connection,
                "before_cursor_execute",
                lambda _c, _cur, statement, *_: through_core.append(statement),
            )
            answers = (
                await store.load_policies(conn, [TENANT, "nobody"]),
                await store.processed_event_ids(conn, event_ids),
                await store.ae_users_connected_to(conn, TENANT, [*users, "0055g0000Zzzzzzzzz"]),
                await store.records_of_sf_events(conn, TENANT, sf_ids, ["KIM@example.com", None]),
                # Neither path orders the timers: compared by id.
                sorted(await sla_store.open_timers_of(conn, TENANT, [*timed, -1]), key=by_id),
                await sla_store.open_timers_of(conn, "nobody", timed),
            )
        return answers, through_core

    direct, core_statements = await look_up()
    assert core_statements == []  # all six straight through asyncpg
    monkeypatch.setattr(bulk, "applies", lambda _conn: False)
    portable, core_statements = await look_up()
    assert len(core_statements) == 6
    assert direct == portable
    policies, processed, connected, (known, unlinked), timers, none = direct
    assert [(t.record_id, t.state) for t in timers] == [
        (timed[0], "running"),
        (timed[2], "pending"),
    ]
    assert timers[0].due_at == NOW + timedelta(hours=1)
    assert none == []
    assert list(policies) == [TENANT] and processed == {event_ids[0]}
    assert set(connected) == set(users)
    assert set(known) == set(sf_ids[:2]) and unlinked["kim@example.com"].prospect_id == 7
