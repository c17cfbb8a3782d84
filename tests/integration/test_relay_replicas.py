"""The relay at N replicas and through outages, on the real Postgres with the AE simulator over
HTTP: records leased and fenced, settled one per transaction, effects that wait out an outage,
Retry-After and AE's daily quota shared by every replica."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import bindparam, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.ae_client import AeClient
from services.common.db.engine import make_engine
from services.common.db.store import Cause, outbox_row
from services.common.db.tables import ae_quota, outbox, records, relay_leases
from services.common.domain import AeProspectUpsert, Learned, RecordState
from services.common.settings import Settings
from services.common.sf_auth import SfTokenSource
from services.common.web import serve_app
from services.relay.ae_limits import SharedAeLimits
from services.relay.relay import AeSender, Attempt, Relay, Senders
from services.relay.senders import ae_prospect_sender
from services.sim.ae import AeSimState, create_ae_app
from services.sim.sf import SfSimState, create_sf_app
from services.sim.sf.tokens import AccessTokens
from tests.integration.api_support import sf_id

pytestmark = pytest.mark.integration

ORG_ID = "00D5e000000RelyAAA"
CLIENT_ID, CLIENT_SECRET = "relay-test-app", "relay-test-app-secret"
UNIT = "0Uv5e000000RelayAA"
PROSPECTS = "/api/v5/objects/prospects"
USERS = (101, 102, 103, 104, 105)
CAUSE = Cause(None, "test", "test")


@dataclass
class Remote:
    ae: AeSimState
    ae_url: str
    tokens: SfTokenSource
    engine: AsyncEngine


@pytest.fixture
async def remote(base_settings: Settings, clean: None) -> AsyncIterator[Remote]:
    sf_state = SfSimState(
        org_id=ORG_ID, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, tokens=AccessTokens()
    )
    ae_state = AeSimState(tokens=sf_state.tokens)
    ae_state.add_business_unit(UNIT, sf_state.org_id)
    for user in USERS:
        ae_state.add_user(f"u{user}@example.com", user_id=user)
    ae_app, sf_app = create_ae_app(ae_state), create_sf_app(sf_state)
    engine = make_engine(base_settings.database_url, pool_size=10)
    async with (
        serve_app(ae_app) as ae_url,
        serve_app(sf_app) as sf_url,
        SfTokenSource(sf_url, CLIENT_ID, CLIENT_SECRET) as tokens,
    ):
        yield Remote(ae_state, ae_url, tokens, engine)
    await engine.dispose()


@contextlib.asynccontextmanager
async def relay_of(
    remote: Remote,
    owner: str,
    *,
    lease: float = 30.0,
    quota: int | None = None,
    batch_size: int = 200,
    wrap: Callable[[AeSender], AeSender] | None = None,
) -> AsyncIterator[Relay]:
    """A relay replica named `owner`, its AE client counting AE's limits in Postgres with every
    other replica's, and trying each call once (the relay does the retrying)."""
    limits = SharedAeLimits(remote.engine, UNIT, owner=owner, daily_quota=quota)
    async with (
        AeClient(remote.ae_url, remote.tokens, UNIT, max_attempts=1, shared_limits=limits) as ae,
        contextlib.AsyncExitStack() as stack,
    ):
        stack.push_async_callback(limits.aclose)
        sender = ae_prospect_sender(ae)
        yield Relay(
            remote.engine,
            Senders(ae=wrap(sender) if wrap else sender),
            owner=owner,
            batch_size=batch_size,
            interval=0.02,
            backoff_base=0.02,
            backoff_max=0.1,
            lease=lease,
            observe_every=1.0,
        )


async def new_records(remote: Remote, count: int, *, prospects: bool) -> list[dict[str, Any]]:
    """`count` records of acme, each with its prospect in AE already (owned by user 101) or
    none yet; no effect written."""
    made = []
    now = datetime.now(UTC)
    async with remote.engine.begin() as conn:
        for n in range(count):
            email = f"r{n}@example.com"
            sf_record_id = sf_id("00Q", 5000 + n)
            prospect_id = None
            if prospects:
                prospect = remote.ae.add_prospect(
                    email, assigned_user_id=101, salesforce_id=sf_record_id
                )
                prospect_id = prospect["id"]
            row = {
                "tenant_id": "acme",
                "prospect_id": prospect_id,
                "sf_record_id": sf_record_id,
                "sf_object": "Lead",
                "email": email,
                "created_at": now,
                "updated_at": now,
            }
            record_id = (
                await conn.execute(insert(records).values(row).returning(records.c.id))
            ).scalar_one()
            made.append({**row, "id": record_id})
    return made


async def write_owners(remote: Remote, owners: dict[int, int], **rows: Any) -> None:
    """One AE effect per record (record id -> AE user), as a worker's commit writes them: the
    record's new AE owner and the effect, in one transaction."""
    now = datetime.now(UTC)
    async with remote.engine.begin() as conn:
        await conn.execute(
            update(records)
            .where(records.c.id == bindparam("rid"))
            .values(ae_assigned_user_id=bindparam("user"), updated_at=now),
            [{"rid": record_id, "user": user} for record_id, user in owners.items()],
        )
        found = await conn.execute(select(records).where(records.c.id.in_(list(owners))))
        by_id = {r.id: r for r in found}
        await conn.execute(
            insert(outbox),
            [
                {
                    **outbox_row(
                        "acme",
                        record_id,
                        CAUSE,
                        AeProspectUpsert(
                            assigned_user_id=user,
                            assigned_queue_id=None,
                            email=by_id[record_id].email,
                            salesforce_id=by_id[record_id].sf_record_id,
                        ),
                        now,
                    ),
                    **rows,
                }
                for record_id, user in owners.items()
            ],
        )


async def outbox_rows(remote: Remote) -> list[dict[str, Any]]:
    async with remote.engine.connect() as conn:
        found = await conn.execute(select(outbox).order_by(outbox.c.id))
        return [dict(r._mapping) for r in found]


async def stored(remote: Remote) -> dict[int, dict[str, Any]]:
    async with remote.engine.connect() as conn:
        return {r.id: dict(r._mapping) for r in await conn.execute(select(records))}


async def unsent(remote: Remote) -> int:
    async with remote.engine.connect() as conn:
        query = select(func.count()).where(outbox.c.status.in_(("pending", "sending")))
        return int((await conn.execute(query)).scalar_one())


async def until(check: Callable[[], Awaitable[bool]], within: float = 30.0) -> None:
    async with asyncio.timeout(within):
        while not await check():
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(relays: Iterable[Relay]) -> AsyncIterator[None]:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(r.run(stop)) for r in relays]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks)


def patches_of(ae: AeSimState, prospect_id: int) -> int:
    return len(ae.calls("PATCH", f"{PROSPECTS}/{prospect_id}"))


async def test_two_relays_send_each_effect_once_and_the_latest_owner_lands_last(
    remote: Remote,
) -> None:
    remote.ae.faults.configure(latency_ms=5)
    new = await new_records(remote, 40, prospects=False)
    await write_owners(remote, {r["id"]: 101 for r in new})
    async with remote.engine.begin() as conn:
        moving = []
        for n in range(30):
            prospect = remote.ae.add_prospect(f"m{n}@example.com", assigned_user_id=101)
            now = datetime.now(UTC)
            row = {
                "tenant_id": "acme",
                "prospect_id": prospect["id"],
                "email": prospect["email"],
                "created_at": now,
                "updated_at": now,
            }
            moving.append(
                (
                    await conn.execute(insert(records).values(row).returning(records.c.id))
                ).scalar_one()
            )
    last: dict[int, int] = {}
    async with (
        # A few records in flight each: neither replica claims everything at once.
        relay_of(remote, "relay-a", batch_size=10) as a,
        relay_of(remote, "relay-b", batch_size=10) as b,
        running([a, b]),
    ):
        # Owners keep changing while both relays send: each round moves every record.
        for round_ in range(8):
            last = {r: USERS[(round_ + i) % len(USERS)] for i, r in enumerate(moving)}
            await write_owners(remote, last)
            await asyncio.sleep(0.03)
        await until(lambda: unsent_is_zero(remote))

    assert a.sent > 0 and b.sent > 0  # both replicas did part of the work
    # Every create once: one POST per new record, one prospect each, each stored.
    assert len(remote.ae.calls("POST", PROSPECTS)) == 40
    records_now = await stored(remote)
    created = {records_now[r["id"]]["prospect_id"] for r in new}
    assert None not in created and len(created) == 40
    assert {p["email"] for i, p in remote.ae.prospects.items() if i in created} == {
        r["email"] for r in new
    }
    # The latest owner of each moving record is the one AE holds.
    for record_id, user in last.items():
        prospect = remote.ae.prospects[records_now[record_id]["prospect_id"]]
        assert prospect["assignedUserId"] == user
    rows = await outbox_rows(remote)
    assert {r["status"] for r in rows} <= {"done", "superseded"}
    # Each row sent at most once: no record had two relays at once, AE's 5 calls are shared.
    done_per_record: dict[int, int] = {}
    for r in rows:
        if r["status"] == "done":
            done_per_record[r["record_id"]] = done_per_record.get(r["record_id"], 0) + 1
    for record_id in moving:
        assert (
            patches_of(remote.ae, records_now[record_id]["prospect_id"])
            == (done_per_record[record_id])
        )
    assert remote.ae.max_in_flight <= 5


async def unsent_is_zero(remote: Remote) -> bool:
    return await unsent(remote) == 0


async def test_relay_whose_lease_was_taken_over_cannot_settle(remote: Remote) -> None:
    (record,) = await new_records(remote, 1, prospects=True)
    await write_owners(remote, {record["id"]: 102})
    sent_by_a = asyncio.Event()
    taken_over = asyncio.Event()

    def hold_after_send(send: AeSender) -> AeSender:
        async def held(rec: RecordState, effect: AeProspectUpsert, attempt: Attempt) -> Learned:
            learned = await send(rec, effect, attempt)
            sent_by_a.set()
            # A stalled process (a long GC pause, SIGSTOP, a frozen VM): the lease runs out and
            # not even the relay's own send deadline can cut the stall short.
            while not taken_over.is_set():
                with contextlib.suppress(asyncio.CancelledError):
                    await taken_over.wait()
            return learned

        return held

    async with (
        relay_of(remote, "relay-a", lease=0.6, wrap=hold_after_send) as a,
        relay_of(remote, "relay-b", lease=0.6) as b,
    ):
        claims = await a.claim()
        assert [c.version for c in claims] == [1]
        delivering = asyncio.create_task(a.deliver(claims))
        await sent_by_a.wait()
        assert await b.run_once() == 0  # a's lease holds: b leaves the record alone
        await asyncio.sleep(0.7)
        await write_owners(remote, {record["id"]: 103})  # a newer owner, meanwhile
        assert await b.run_once() == 2  # the lease ran out: b takes the record over
        taken_over.set()
        await delivering

    assert a.fenced == 1 and a.sent == 0
    rows = await outbox_rows(remote)
    # b settled both rows (the first superseded by the second); a's settle changed nothing.
    assert [(r["status"], r["lease_owner"]) for r in rows] == [
        ("superseded", None),
        ("done", None),
    ]
    assert remote.ae.prospects[record["prospect_id"]]["assignedUserId"] == 103
    async with remote.engine.connect() as conn:
        lease = (await conn.execute(select(relay_leases))).one()
    assert lease.version == 2 and lease.owner is None


async def test_a_failing_settle_of_one_record_does_not_send_the_others_again(
    remote: Remote,
) -> None:
    made = await new_records(remote, 10, prospects=True)
    await write_owners(remote, {r["id"]: 102 for r in made})
    doomed = made[3]
    async with remote.engine.begin() as conn:
        # A deadlock in the settle of one record, every time, until the trigger goes.
        await conn.execute(
            text(
                "CREATE FUNCTION fail_settle() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "RAISE EXCEPTION 'deadlock (test)' USING ERRCODE = '40P01'; END $$"
            )
        )
        await conn.execute(
            text(
                "CREATE TRIGGER fail_settle BEFORE UPDATE ON outbox FOR EACH ROW "
                f"WHEN (NEW.record_id = {doomed['id']} AND NEW.status = 'done') "
                "EXECUTE FUNCTION fail_settle()"
            )
        )
    try:
        # A lease long enough for the failing settle's tries on a loaded machine.
        async with relay_of(remote, "relay-a", lease=2.0) as relay:
            assert await relay.run_once() == 10
            assert relay.sent == 9
            rows = {r["record_id"]: r for r in await outbox_rows(remote)}
            assert rows[doomed["id"]]["status"] == "sending"
            assert all(r["status"] == "done" for k, r in rows.items() if k != doomed["id"])
            async with remote.engine.begin() as conn:
                await conn.execute(text("DROP TRIGGER fail_settle ON outbox"))
            assert await relay.run_once() == 0  # its lease still holds
            await asyncio.sleep(2.1)
            assert await relay.run_once() == 1  # claimed again once the lease ran out
    finally:
        async with remote.engine.begin() as conn:
            await conn.execute(text("DROP TRIGGER IF EXISTS fail_settle ON outbox"))
            await conn.execute(text("DROP FUNCTION IF EXISTS fail_settle()"))

    assert {r["status"] for r in await outbox_rows(remote)} == {"done"}
    for r in made:
        assert patches_of(remote.ae, r["prospect_id"]) == (2 if r is doomed else 1)


async def test_ae_down_longer_than_the_old_ten_attempts_makes_effects_wait_then_all_land(
    remote: Remote,
) -> None:
    made = await new_records(remote, 20, prospects=False)
    await write_owners(remote, {r["id"]: 104 for r in made})
    remote.ae.faults.configure(fail_next=1_000_000, fail_status=503)

    async def tried_a_dozen_times() -> bool:
        rows = await outbox_rows(remote)
        return all(r["attempts"] >= 12 for r in rows)

    async with relay_of(remote, "relay-a") as relay, running([relay]):
        await until(tried_a_dozen_times)
        rows = await outbox_rows(remote)
        assert {r["status"] for r in rows} <= {"pending", "sending"}  # none dead
        assert all("503" in (r["last_error"] or "") for r in rows)

        async def reported_waiting() -> bool:
            # The relay reports the outbox at most once a second, and an effect being tried
            # again right then is `sending`, not waiting: looked at until a report shows it.
            waiting = REGISTRY.get_sample_value("ownersync_effects_waiting", {"tenant": "acme"})
            age = REGISTRY.get_sample_value(
                "ownersync_effects_oldest_waiting_age_seconds", {"tenant": "acme"}
            )
            return bool(waiting and waiting > 0 and age is not None and age > 0.5)

        await until(reported_waiting, within=10.0)
        remote.ae.faults.configure(fail_next=0)  # AE is back
        await until(lambda: unsent_is_zero(remote))

    assert {r["status"] for r in await outbox_rows(remote)} == {"done"}
    assert len(remote.ae.prospects) == 20  # each once, though every create failed a dozen times
    records_now = await stored(remote)
    assert {remote.ae.prospects[records_now[r["id"]]["prospect_id"]]["email"] for r in made} == {
        r["email"] for r in made
    }


@pytest.mark.parametrize("form", ["seconds", "http-date"])
async def test_429_with_retry_after_is_waited_out_before_the_next_try(
    remote: Remote, form: str
) -> None:
    in_a_day = datetime.now(UTC) + timedelta(days=1)
    retry_after = "3" if form == "seconds" else in_a_day.strftime("%a, %d %b %Y %H:%M:%S GMT")
    (record,) = await new_records(remote, 1, prospects=True)
    await write_owners(remote, {record["id"]: 105})
    remote.ae.faults.configure(fail_next=1, fail_status=429, retry_after=retry_after)
    async with relay_of(remote, "relay-a") as relay:
        assert await relay.run_once() == 1
        (row,) = await outbox_rows(remote)
        assert row["status"] == "pending" and row["attempts"] == 1
        waits = (row["next_attempt_at"] - datetime.now(UTC)).total_seconds()
        # Far beyond the relay's own backoff (at most 0.1 s here): AE's word is kept.
        expected = 3 if form == "seconds" else 86_400
        assert expected - 2 < waits <= expected
        assert await relay.run_once() == 0  # not due yet
        async with remote.engine.begin() as conn:
            await conn.execute(update(outbox).values(next_attempt_at=func.now()))
        assert await relay.run_once() == 1
    assert remote.ae.prospects[record["prospect_id"]]["assignedUserId"] == 105


async def test_spent_quota_waits_for_the_next_day_without_spending_attempts(
    remote: Remote,
) -> None:
    made = await new_records(remote, 5, prospects=True)
    await write_owners(remote, {r["id"]: 103 for r in made})
    async with relay_of(remote, "relay-a", quota=3) as a, relay_of(remote, "relay-b", quota=3) as b:
        await a.run_once()
        await b.run_once()
        rows = await outbox_rows(remote)
        done = [r for r in rows if r["status"] == "done"]
        waiting = [r for r in rows if r["status"] == "pending"]
        assert (len(done), len(waiting)) == (3, 2)  # 3 calls a day, for both replicas together
        tomorrow = datetime.combine(
            datetime.now(UTC).date() + timedelta(days=1), datetime.min.time(), tzinfo=UTC
        )
        for row in waiting:
            assert row["attempts"] == 0 and "quota" in row["last_error"]
            assert row["next_attempt_at"] == tomorrow
        async with remote.engine.connect() as conn:
            (quota,) = (await conn.execute(select(ae_quota))).all()
        assert (quota.business_unit_id, quota.calls) == (UNIT, 3)

        # A day later (the counter's day is yesterday's, the effects are due): a new count.
        async with remote.engine.begin() as conn:
            await conn.execute(update(ae_quota).values(day=ae_quota.c.day - 1))
            await conn.execute(
                update(outbox)
                .where(outbox.c.status == "pending")
                .values(next_attempt_at=func.now())
            )
        assert await a.run_once() == 2
    assert {r["status"] for r in await outbox_rows(remote)} == {"done"}
    async with remote.engine.connect() as conn:
        (quota,) = (await conn.execute(select(ae_quota))).all()
    assert quota.calls == 2 and quota.day == datetime.now(UTC).date()


async def test_a_state_another_replica_sent_last_costs_no_call(remote: Remote) -> None:
    (record,) = await new_records(remote, 1, prospects=True)
    await write_owners(remote, {record["id"]: 102})
    async with relay_of(remote, "relay-a") as a, relay_of(remote, "relay-b") as b:
        assert await a.run_once() == 1
        # Moved away and back before any relay claims it again: AE holds 102 already.
        await write_owners(remote, {record["id"]: 103})
        await write_owners(remote, {record["id"]: 102})
        assert await b.run_once() == 2
        assert (b.sent, b.unchanged) == (0, 1)
        # A try that failed in between breaks the chain: the next claim sends again.
        remote.ae.faults.configure(fail_next=1, fail_status=503)
        await write_owners(remote, {record["id"]: 104})
        assert await a.run_once() == 1  # failed: AE may or may not hold 104 now
        await write_owners(remote, {record["id"]: 102})
        async with remote.engine.begin() as conn:
            await conn.execute(update(outbox).values(next_attempt_at=func.now()))
        assert await b.run_once() == 2
        assert b.sent == 1

    assert patches_of(remote.ae, record["prospect_id"]) == 3  # 102, the failed 104, 102
    assert remote.ae.prospects[record["prospect_id"]]["assignedUserId"] == 102
    statuses = [r["status"] for r in await outbox_rows(remote)]
    assert statuses == ["done", "superseded", "superseded", "superseded", "done"]
