"""`python -m bench --preload`: the tables filled in Postgres with rows shaped like the roles',
continuing a smaller preload, ids taken from each table's sequence, inbox entries inside the
retention (the pruner leaves them); the migrated indexes and keys built again; rows the roles
find and decide against."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from bench import preload
from bench.db import asyncpg_url
from services.bootstrap import Running
from services.common.messages import event_id_for
from services.common.settings import Settings
from services.common.sfid import to18
from services.demo.replay import FIXTURES
from tests.endpoints import sf_path
from tests.outbound import SOAP_HEADERS, is_ack
from tests.store import decision_rows, record_where

pytestmark = pytest.mark.integration

OWNERS = preload.Owners("acme", ("0055g0000Zti3ElAQI", "0055g0000M6fuVCAQY"), (101, 102))


async def test_preload_fills_every_table_and_a_second_level_continues_the_first(
    base_settings: Settings, clean: None
) -> None:
    url = base_settings.database_url

    await preload.preload(url, OWNERS, 0, 3000)
    await preload.preload(url, OWNERS, 3000, 2000)

    conn = await asyncpg.connect(asyncpg_url(url))
    try:
        for table in ("records", "inbox", "audit_log", "outbox"):
            assert await conn.fetchval(f"select count(*) from {table}") == 5000, table
        assert await conn.fetchval("select count(distinct sf_record_id) from records") == 5000
        # Every audit and outbox row belongs to a preloaded record (the foreign keys held).
        orphans = await conn.fetchval(
            "select count(*) from audit_log a left join records r on r.id = a.record_id "
            "where r.id is null"
        )
        assert orphans == 0
        assert await conn.fetchval("select count(*) from outbox where status = 'pending'") == 0
        # Inside the retention: the pruner would otherwise delete them during the measurement.
        now = datetime.now(UTC)
        for query in (
            "select min(processed_at), max(processed_at) from inbox",
            "select min(done_at), max(done_at) from outbox",
        ):
            oldest, newest = await conn.fetchrow(query)
            assert now - timedelta(hours=48) < oldest and newest < now - timedelta(minutes=30)
        # The roles' next rows get ids past the preload's: the sequences moved.
        top = await conn.fetchval("select max(id) from records")
        fresh = await conn.fetchval(
            "insert into records (tenant_id, created_at, updated_at) values ('acme', now(), now()) "
            "returning id"
        )
        assert fresh > top
    finally:
        await conn.close()


async def test_preload_builds_again_exactly_the_migrated_indexes_and_keys(
    base_settings: Settings, clean: None
) -> None:
    conn = await asyncpg.connect(asyncpg_url(base_settings.database_url))
    try:
        migrated = await preload.schema(conn)
        await preload.preload(base_settings.database_url, OWNERS, 0, 1000)
        assert await preload.schema(conn) == migrated
        indexes = {name for _, name, *_ in migrated.indexes}
        keys = {name for _, name, *_ in migrated.constraints}
        # Not a comparison of two empty lists: what the preload drops is in both.
        assert {"pk_inbox", "ix_audit_log_record", "ix_records_tenant_email"} <= indexes
        assert {"uq_records_sf_record", "fk_outbox_record_id_records"} <= keys
        assert all(valid for *_, valid in migrated.indexes)
        assert all(validated for *_, validated in migrated.constraints)
    finally:
        await conn.close()


async def test_preload_refuses_rows_already_loaded_and_leaves_the_schema_as_it_was(
    base_settings: Settings, clean: None
) -> None:
    url = base_settings.database_url
    await preload.preload(url, OWNERS, 0, 1000)
    conn = await asyncpg.connect(asyncpg_url(url))
    try:
        migrated = await preload.schema(conn)
        with pytest.raises(ValueError, match="already loaded"):
            await preload.preload(url, OWNERS, 500, 1000)
        assert await preload.schema(conn) == migrated
        assert await conn.fetchval("select count(*) from records") == 1000
    finally:
        await conn.close()


async def test_preloaded_ids_are_in_the_form_the_roles_store_and_derive(
    base_settings: Settings, clean: None
) -> None:
    await preload.preload(base_settings.database_url, OWNERS, 0, 1000)
    conn = await asyncpg.connect(asyncpg_url(base_settings.database_url))
    try:
        sf_ids = await conn.fetch("select sf_record_id from records")
        event_ids = {r[0] for r in await conn.fetch("select event_id from inbox")}
        audited = await conn.fetchval(
            "select count(*) from audit_log where event_id = any($1)", list(event_ids)
        )
    finally:
        await conn.close()
    assert all(to18(r[0]) == r[0] for r in sf_ids)  # found by the roles' look-ups
    assert event_ids == {preload.event_id("acme", i) for i in range(1000)}
    # Ordered as the roles order theirs: by the notification's serial (the top 58 bits, with
    # the version), so that the inbox's key takes a newer notification at its right edge.
    assert all(uuid.UUID(e).version == 8 for e in event_ids)
    notifications = (preload.sf_id(preload.NOTIFICATION_PREFIX, i) for i in range(1000))
    roles = [event_id_for("acme", "sf", n) for n in notifications]
    assert {uuid.UUID(e).int >> 70 for e in event_ids} == {e.int >> 70 for e in roles}
    assert sorted(event_ids) == [preload.event_id("acme", i) for i in range(1000)]
    assert audited == 1000  # each audit row names its notification's inbox entry


async def test_a_notification_for_a_preloaded_record_is_decided_against_it(
    stack: Running, base_settings: Settings
) -> None:
    await preload.preload(base_settings.database_url, OWNERS, 0, 1000)
    sf_id = preload.sf_id(preload.RECORD_PREFIX, 7)
    before = await record_where(stack, sf_record_id=sf_id)
    assert before["sf_owner_id"] == OWNERS.sf_users[1]  # preloaded with the second user
    audited = max(r["id"] for r in await decision_rows(stack))
    body = (
        (FIXTURES / "salesforce" / "lead-reassigned-connected.xml")
        .read_text()
        .replace("00Q5g0000ZWHszxEQD", sf_id)
        .replace("0055g0000M6fuVCAQY", OWNERS.sf_users[0])
        .replace("2026-11-02T09:10:00.000Z", datetime.now(UTC).isoformat(timespec="milliseconds"))
    )
    async with httpx.AsyncClient(base_url=stack.receiver_url or "") as http:
        response = await http.post(sf_path("record-reassigned"), content=body, headers=SOAP_HEADERS)
    assert is_ack(response)

    async with asyncio.timeout(30):  # its decision: an audit row after the preload's own
        while not (
            decided := [
                r
                for r in await decision_rows(stack)
                if r["record_id"] == before["id"] and r["id"] > audited
            ]
        ):
            await asyncio.sleep(0.05)
    assert [r["rule"] for r in decided] == ["S5"]  # reassigned to a connected user
    after = await record_where(stack, sf_record_id=sf_id)
    assert after["id"] == before["id"] and after["prospect_id"] == before["prospect_id"]
    assert (after["sf_owner_id"], after["ae_assigned_user_id"]) == (OWNERS.sf_users[0], 101)
