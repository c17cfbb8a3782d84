"""The outbox relay: sends the effects the workers committed to AE (and SF), until done.

Coalescing by state, not by time. A record's pending rows are sent as one call carrying the
record's latest decided state: an AE prospect upsert is built from the `records` row read just
before the call (not from an older row's payload), an SF upsert is the newest pending row at the
claim. Every older pending row of the record is superseded by that call, and so are rows that
appear while the call is in flight when the state sent already is the record's state once the
call is answered (and no change came from that system meanwhile). A record whose latest state
is the one its last settled send carried (kept with its lease, so any replica knows; the lease
version grew by one since: nothing was tried in between) costs no call at all. So a record
reassigned five times costs one write when the changes land before or during its send,
whatever the window (`coalesce`, an optional extra wait), and a write
never carries an owner older than the newest decided when the call starts.

Safe at N replicas. A claim takes due rows with `FOR UPDATE SKIP LOCKED` and a lease on each of
their records (`relay_leases`: owner = this replica, a fencing `version` that grows with every
claim, expiry from the database clock), so one record's effects go out from one relay at a time,
in order. The claimed rows are `sending`, stamped with owner and version. They are sent outside
any transaction; then the records are settled, many in one transaction (each first releasing
the lease it still holds: a record whose lease expired and was taken over finds another version
there and settles nothing). A batch settle that fails falls back to one transaction per record;
a record whose settle keeps failing is claimed again when its lease expires. Expired leases are
claimed like due rows.

Pipelined: `run` keeps claiming while earlier records are in flight (up to `batch_size`
outstanding), each tenant's AE and SF get up to `concurrency` calls at once (AE allows 5 per
business unit), a slow call holds only its own record, and answered records are settled in
batches as they come.

A failure waits (`retry`): transient ones back off up to a cap and are retried until they
succeed or an operator discards them; a spent AE quota waits for the next quota day without
counting an attempt; permanent refusals are dead, with the reason.

Each row is rebuilt into its typed effect from its `kind` and versioned payload, and the effect's
type picks the sender. What an answer teaches (a new prospect id, SF record id or SF owner) is
written to the record with an audit row, in the settling transaction.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, assert_never

from sqlalchemy import bindparam, exists, func, select, text, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.common import metrics, tracing
from services.common.db.engine import single_statements
from services.common.db.store import Answered, apply_relay_answers, one_of, record_from_row
from services.common.db.tables import outbox, records, relay_leases
from services.common.domain import (
    AeProspectUpsert,
    Effect,
    EffectPayloadError,
    Learned,
    RecordState,
    SfOwnerReassign,
    SfRecordUpsert,
    Target,
    effect_from_outbox,
    effect_payload,
)
from services.relay.retry import Rejected, classify, next_quota_day, retry_delay

log = logging.getLogger("ownersync.relay")

__all__ = ["Attempt", "Rejected", "Relay", "Senders", "StateReader", "db_now", "replica_id"]

LEASE = timedelta(seconds=60)
# The part of a lease that sends may take: the rest is margin for the settle and clock rates.
SEND_WINDOW = 0.75


class LeaseRunningOut(Exception):
    """A send not made, or cut short, because the record's lease is about to end: transient."""


def replica_id() -> str:
    """This relay's name in leases: the pod (host) name and the process id."""
    return f"{socket.gethostname()}:{os.getpid()}"[:128]


async def db_now(conn: AsyncConnection) -> datetime:
    """The database's clock (Postgres `now()`, the transaction's start), which every replica
    shares; SQLite runs one process, whose clock it is."""
    if conn.dialect.name == "postgresql":
        value: datetime = (await conn.execute(text("SELECT now()"))).scalar_one()
        return value
    return datetime.now(UTC)


class Held(Exception):
    """The effect waits for something outside it (its tenant's connection): it is tried again
    with backoff and never dies of it."""


@dataclass(frozen=True)
class Attempt:
    """What the relay knows of this try at an effect, for a sender whose create is not safe to
    repeat: where it goes, since when it could have been applied, and whether it may have been
    already (then the sender looks for what it would create before creating it)."""

    tenant_id: str
    written_at: datetime  # when the oldest pending row of the effect was written
    tried_before: bool  # an earlier try failed, or was claimed and never settled


# A sender applies one effect to a record and returns what the answer taught (e.g. the new
# prospect id). It raises Rejected for permanent failures; anything else is retried.
AeSender = Callable[[RecordState, AeProspectUpsert, Attempt], Awaitable[Learned]]
SfSender = Callable[[RecordState, SfRecordUpsert | SfOwnerReassign, Attempt], Awaitable[Learned]]


@dataclass(frozen=True)
class Senders:
    """How each type of effect leaves. Without an SF sender (no SF org to write to) SF effects
    are not claimed: they wait in the outbox."""

    ae: AeSender
    sf: SfSender | None = None

    @property
    def kinds(self) -> list[str]:
        sf = [SfRecordUpsert.kind, SfOwnerReassign.kind] if self.sf is not None else []
        return [AeProspectUpsert.kind, *sf]

    @property
    def targets(self) -> list[Target]:
        return [AeProspectUpsert.target] + ([SfRecordUpsert.target] if self.sf is not None else [])

    async def send(self, record: RecordState, effect: Effect, attempt: Attempt) -> Learned:
        match effect:
            case AeProspectUpsert():
                return await self.ae(record, effect, attempt)
            case SfRecordUpsert() | SfOwnerReassign():
                if self.sf is None:
                    raise RuntimeError("an SF effect was claimed with no SF sender")
                return await self.sf(record, effect, attempt)
            case _:
                assert_never(effect)


class RunsBeside(Protocol):
    """A loop that runs beside the relay's own until `stop`: bulk mode (services.relay.bulk)."""

    async def run(self, stop: asyncio.Event) -> None: ...

    def leave_to_bulk(self) -> list[Any]:
        """Conditions the normal claim adds: it leaves alone the rows bulk mode will take."""
        ...


class SendsEffects(Protocol):
    """What the relay sends with: `Senders`, or `TenantSenders` (each tenant's own)."""

    @property
    def kinds(self) -> list[str]: ...

    @property
    def targets(self) -> list[Target]: ...

    async def send(self, record: RecordState, effect: Effect, attempt: Attempt) -> Learned: ...


@dataclass
class _Group:
    """The pending rows of one record and effect kind: one call sends the latest state."""

    record: RecordState  # as claimed; for AE, as read again just before the call
    tenant_id: str
    kind: str
    target: Target
    row_ids: list[int]
    payload: Mapping[str, Any]
    event_id: str | None
    attempts: int
    written_at: datetime
    tried_before: bool = False
    traceparent: str | None = None  # the trace of the newest row's decision
    sent: Effect | None = None  # what the call carried (or would have: see `unchanged`)
    unchanged: bool = False  # this relay sent that state last: no call made


@dataclass
class _Claim:
    """A record leased by this relay, its groups of rows to send, and until when (this
    process's clock) sends may start or run."""

    record_id: int
    version: int
    groups: list[_Group]
    deadline: float = 0.0
    # The lease's `sent`: by effect kind, what the last settled send carried ("effect"), under
    # which lease version ("v"), and the record's stamp of the target's own changes ("stamp").
    sent: dict[str, Any] = field(default_factory=dict)


Outcome = Learned | BaseException
# Sends of a lane that read their state while its calls are all in flight.
READ_AHEAD = 2


class StateReader:
    """Reads records' current rows for the sends that ask within `window` seconds of the first
    (0: the same loop turn), in ONE query: a send asks once it holds its lane, just before its
    call, so a burst of sends costs one connection and one round trip, not one each
    (`store.one_of`: on Postgres `id = ANY(:ids)`, one prepared statement whatever the count)."""

    def __init__(self, engine: AsyncEngine, *, window: float = 0.001) -> None:
        self.engine = engine
        self.window = window
        self.queries = 0  # for tests and benches: how many reads were made
        self._waiting: dict[int, list[asyncio.Future[Any]]] = {}
        self._reading: asyncio.Task[None] | None = None

    async def read(self, record_id: int) -> Any:
        """The `records` row of `record_id` as it is now (read after this call), or None."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Any] = loop.create_future()
        self._waiting.setdefault(record_id, []).append(waiter)
        if self._reading is None:
            self._reading = loop.create_task(self._read_waiting(), name="relay-read-states")
        return await waiter

    async def _read_waiting(self) -> None:
        waiting: dict[int, list[asyncio.Future[Any]]] = {}
        try:
            await asyncio.sleep(self.window)
            # Whoever asks from here on waits for the next read: this one may have begun.
            waiting, self._waiting, self._reading = self._waiting, {}, None
            async with single_statements(self.engine) as conn:  # one statement, one snapshot
                query = select(records).where(one_of(conn, records.c.id, waiting))
                rows = (await conn.execute(query)).all()
            self.queries += 1
            found = {row._mapping[records.c.id]: row for row in rows}
        except BaseException as exc:
            if self._reading is asyncio.current_task():  # failed before taking the waiters
                waiting, self._waiting, self._reading = self._waiting, {}, None
            cancelled = isinstance(exc, asyncio.CancelledError)
            for waiters in waiting.values():
                for waiter in waiters:
                    if waiter.done():
                        continue
                    if cancelled:
                        waiter.cancel()
                    else:
                        waiter.set_exception(exc)
            if cancelled:
                raise
            return
        for record_id, waiters in waiting.items():
            for waiter in waiters:
                if not waiter.done():  # its send was cancelled meanwhile
                    waiter.set_result(found.get(record_id))


class Relay:
    def __init__(
        self,
        engine: AsyncEngine,
        senders: SendsEffects,
        *,
        owner: str | None = None,
        batch_size: int = 200,
        interval: float = 0.2,
        backoff_base: float = 1.0,
        backoff_max: float = 300.0,
        coalesce: float = 0.0,
        lease: float = LEASE.total_seconds(),
        quota_timezone: str = "UTC",
        concurrency: int = 5,
        settle_batch: int = 100,
        settle_wait: float = 0.1,
        observe_every: float = 10.0,
    ) -> None:
        """`batch_size`: records claimed and not settled yet, at most; `concurrency`: calls
        in flight per tenant and target; `settle_batch`: records settled per transaction;
        `settle_wait`: how long an answer waits for others still in flight to share its
        settle transaction; `observe_every`: seconds between two counts of the outbox for
        /metrics."""
        self.engine = engine
        self.senders = senders
        self.owner = owner or replica_id()
        self.batch_size = batch_size
        self.interval = interval
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.coalesce = timedelta(seconds=coalesce)
        self.lease = timedelta(seconds=lease)
        self.quota_timezone = quota_timezone
        self.concurrency = concurrency
        self.settle_batch = settle_batch
        self.settle_wait = settle_wait
        self.observe_every = observe_every
        self.observed = 0  # counts of the outbox made for /metrics
        self.sent = 0
        self.unchanged = 0  # effects superseded without a call: the state sent last is current
        self.fenced = 0  # settles refused because another relay took the lease over
        self.wake = asyncio.Event()
        self._observed_at = -math.inf  # the first count is at start
        self._lanes: dict[tuple[str, Target], asyncio.Semaphore] = {}
        self._outstanding = 0
        self._freed = asyncio.Event()
        self.bulk: RunsBeside | None = None  # set by BulkMode: large AE backlogs go by import
        self.states = StateReader(engine)  # the reads sends make just before their calls

    async def run(self, stop: asyncio.Event) -> None:
        """Claim, send and settle until `stop`, pipelined: claims go on while earlier records
        are in flight, up to `batch_size` outstanding; then what is in flight is finished."""
        log.info("relay %s started for %s", self.owner, ", ".join(sorted(self.senders.targets)))
        answered: asyncio.Queue[tuple[_Claim, list[Outcome]] | None] = asyncio.Queue()
        settler = asyncio.create_task(self._settle_answered(answered), name="relay-settle")
        bulk = asyncio.create_task(self.bulk.run(stop), name="relay-bulk") if self.bulk else None
        sending: set[asyncio.Task[None]] = set()
        try:
            while not stop.is_set():
                claims: list[_Claim] = []
                # Claims in chunks of half a batch at least: fewer, larger claim transactions,
                # and still a chunk waiting whenever a call ends.
                if self._outstanding <= self.batch_size // 2:
                    try:
                        claims = await self.claim(limit=self.batch_size - self._outstanding)
                    except Exception:
                        log.exception("relay claim failed")
                for claim in claims:
                    self._outstanding += 1
                    task = asyncio.create_task(self._deliver_one(claim, answered))
                    sending.add(task)
                    task.add_done_callback(sending.discard)
                try:
                    await self._observe_outbox()
                except Exception:
                    log.exception("relay could not observe the outbox")
                self._freed.clear()
                full = self._outstanding > self.batch_size // 2
                if claims and not full:
                    continue  # more may be due now
                self.wake.clear()
                # Full: wait for settles to make room. Else for new effects or the interval
                # (not for a settle: every replica polls alike, so they share the records).
                signals = [stop.wait(), self._freed.wait() if full else self.wake.wait()]
                waits = [asyncio.ensure_future(s) for s in signals]
                timeout = None if full else self.interval
                await asyncio.wait(waits, timeout=timeout, return_when="FIRST_COMPLETED")
                for waiting in waits:
                    waiting.cancel()
        finally:
            if sending:
                await asyncio.gather(*sending, return_exceptions=True)
            answered.put_nowait(None)
            await settler
            if bulk is not None:
                bulk.cancel()  # an import under way is left to its leases: see bulk.py
                await asyncio.gather(bulk, return_exceptions=True)
        log.info("relay stopped")

    async def run_once(self) -> int:
        """One pass: claim due records, send their effects, settle them. Returns the effects
        handled."""
        return await self.deliver(await self.claim())

    async def claim(self, limit: int | None = None) -> list[_Claim]:
        """Lease due records (at most `limit`, or `batch_size`) and mark their rows
        `sending`."""
        claims = await self._claim(limit or self.batch_size)
        deadline = asyncio.get_running_loop().time() + self.send_window
        for claim in claims:
            claim.deadline = deadline
        return claims

    async def deliver(self, claims: list[_Claim]) -> int:
        """Send what `claim` leased and settle the records (in one transaction when it can).

        Sends must finish well within the lease (`send_window`), measured on this process's
        clock from the claim: past it another relay may own the record, so nothing more is sent
        (the effect waits, as after a timeout)."""
        if not claims:
            return 0
        outcomes = await asyncio.gather(*(self._send_claim(c) for c in claims))
        await self._settle_batch(list(zip(claims, outcomes, strict=True)))
        return sum(len(g.row_ids) for c in claims for g in c.groups)

    @property
    def send_window(self) -> float:
        return self.lease.total_seconds() * SEND_WINDOW

    async def _deliver_one(
        self, claim: _Claim, answered: asyncio.Queue[tuple[_Claim, list[Outcome]] | None]
    ) -> None:
        try:
            outcome = await self._send_claim(claim)
        except asyncio.CancelledError as exc:  # settled as a transient failure
            answered.put_nowait((claim, [exc for _ in claim.groups]))
            raise
        answered.put_nowait((claim, outcome))

    async def _settle_answered(
        self, answered: asyncio.Queue[tuple[_Claim, list[Outcome]] | None]
    ) -> None:
        """Settle answered records as they come, as many per transaction as arrive within
        `settle_wait` of the first while others are in flight.

        Why wait: against AE (5 calls at once, 100-300 ms each) answers come one at a time,
        every 20-60 ms, and a transaction per answer (about eight statements) was a third of
        the relay's CPU there. A record that waits 100 ms more to be settled costs nothing: its
        call is made and its lease runs for a minute. Nothing else in flight: settled at once."""
        loop = asyncio.get_running_loop()
        done = False
        while not done:
            first = await answered.get()
            if first is None:
                break
            batch = [first]
            deadline = loop.time() + self.settle_wait
            while len(batch) < self.settle_batch:
                if answered.empty():
                    left = deadline - loop.time()
                    if left <= 0 or self._outstanding <= len(batch):
                        break
                    try:
                        item = await asyncio.wait_for(answered.get(), left)
                    except TimeoutError:
                        break
                else:
                    item = answered.get_nowait()
                if item is None:
                    done = True
                    break
                batch.append(item)
            try:
                await self._settle_batch(batch)
            except Exception:
                log.exception("settle of %d records failed", len(batch))
            self._outstanding -= len(batch)
            self._freed.set()

    async def _send_claim(self, claim: _Claim) -> list[Outcome]:
        results = await asyncio.gather(
            *(self._send(claim, g) for g in claim.groups), return_exceptions=True
        )
        return list(results)

    async def _observe_outbox(self) -> None:
        """Outbox depth and age for /metrics, at most every `observe_every` seconds.

        Not more often: the count reads every unsettled row (a parallel sequential scan of
        the outbox), 72 ms with 84,000 effects waiting, and once a second it took a sixth of
        Postgres's time in the bench while AE held the backlog; Prometheus scrapes every
        15-30 s."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._observed_at < self.observe_every:
            return
        self._observed_at = loop.time()
        self.observed += 1
        async with self.engine.connect() as conn:
            now = await db_now(conn)
            rows = await conn.execute(
                select(
                    outbox.c.tenant_id,
                    outbox.c.target,
                    outbox.c.status,
                    func.count(),
                    func.min(outbox.c.created_at),
                )
                .where(outbox.c.status.in_(("pending", "sending", "dead")))
                .group_by(outbox.c.tenant_id, outbox.c.target, outbox.c.status)
            )
            seen = [(r[0], r[1], r[2], r[3], r[4]) for r in rows]
        unsent: dict[str, tuple[int, datetime | None]] = {}
        waiting: dict[str, tuple[int, datetime | None]] = {}
        dead: dict[str, int] = {}
        for tenant, target, status, count, oldest in seen:
            if status == "dead":
                dead[tenant] = dead.get(tenant, 0) + count
                continue
            tallies = [(unsent, target)] + ([(waiting, tenant)] if status == "pending" else [])
            for into, key in tallies:
                n, first = into.get(key, (0, None))
                into[key] = (n + count, oldest if first is None else min(first, oldest))
        for target in self.senders.targets:
            count, oldest = unsent.get(target, (0, None))
            metrics.OUTBOX_DEPTH.labels(target).set(count)
            metrics.OUTBOX_AGE.labels(target).set(_age(now, oldest))
        for gauge in (metrics.EFFECTS_WAITING, metrics.EFFECTS_OLDEST_AGE, metrics.EFFECTS_DEAD):
            gauge.clear()
        for tenant, (count, oldest) in waiting.items():
            metrics.EFFECTS_WAITING.labels(tenant).set(count)
            metrics.EFFECTS_OLDEST_AGE.labels(tenant).set(_age(now, oldest))
        for tenant, count in dead.items():
            metrics.EFFECTS_DEAD.labels(tenant).set(count)

    async def _claim(self, limit: int) -> list[_Claim]:
        async with self.engine.begin() as conn:
            now = await db_now(conn)
            held = exists().where(
                relay_leases.c.record_id == outbox.c.record_id, relay_leases.c.expires_at > now
            )
            # Due rows, and rows left `sending` by a relay whose lease expired.
            due = select(outbox.c.record_id).where(
                outbox.c.status.in_(("pending", "sending")),
                outbox.c.next_attempt_at <= now,
                outbox.c.created_at <= now - self.coalesce,
                outbox.c.kind.in_(self.senders.kinds),
                ~held,
                *(self.bulk.leave_to_bulk() if self.bulk is not None else ()),
            )
            if conn.dialect.name == "postgresql":
                due = due.with_for_update(of=outbox, skip_locked=True)
            found = await conn.execute(due.order_by(outbox.c.id).limit(limit))
            wanted = sorted({r.record_id for r in found})
            if not wanted:
                return []
            taken = await self._take_leases(conn, wanted, now)
            return await self._gather(conn, taken, self.senders.kinds)

    async def _gather(
        self,
        conn: AsyncConnection,
        taken: dict[int, tuple[int, dict[str, Any]]],
        kinds: list[str],
    ) -> list[_Claim]:
        """The claims of the records just leased (`taken`): their pending rows of `kinds`,
        grouped by kind and marked `sending` under the lease."""
        if not taken:
            return []
        versions = {record_id: version for record_id, (version, _) in taken.items()}
        # All pending rows of those records, due or backing off: the newest state wins.
        # A row another relay's claim holds locked right now (it lost the lease race) is
        # left for the next pass, after this one: waiting for it could deadlock.
        gather = (
            select(outbox, records)
            .join(records, records.c.id == outbox.c.record_id)
            .where(
                outbox.c.status.in_(("pending", "sending")),
                outbox.c.record_id.in_(list(versions)),
                outbox.c.kind.in_(kinds),
            )
            .order_by(outbox.c.id)
        )
        if conn.dialect.name == "postgresql":
            gather = gather.with_for_update(of=outbox, skip_locked=True)
        rows = (await conn.execute(gather)).all()
        claims: dict[int, _Claim] = {}
        groups: dict[tuple[int, str], _Group] = {}
        stamps: list[dict[str, Any]] = []
        for row in rows:
            m = row._mapping
            record_id, kind = m[outbox.c.record_id], m[outbox.c.kind]
            claim = claims.get(record_id)
            if claim is None:
                version, sent = taken[record_id]
                claim = claims[record_id] = _Claim(record_id, version, [], sent=sent)
            group = groups.get((record_id, kind))
            if group is None:
                group = groups[(record_id, kind)] = _Group(
                    record=record_from_row(row),
                    tenant_id=m[outbox.c.tenant_id],
                    kind=kind,
                    target=m[outbox.c.target],
                    row_ids=[],
                    payload={},
                    event_id=None,
                    attempts=0,
                    written_at=m[outbox.c.created_at],
                )
                claim.groups.append(group)
            group.row_ids.append(m[outbox.c.id])
            group.payload = m[outbox.c.payload]
            group.event_id = m[outbox.c.event_id]
            group.traceparent = m[outbox.c.traceparent]
            group.attempts = max(group.attempts, m[outbox.c.attempts])
            # Sending already: a relay claimed it and never settled (it died, or was
            # fenced). Due later than written: it waited after a try, or for the quota.
            group.tried_before |= (
                m[outbox.c.attempts] > 0
                or m[outbox.c.status] == "sending"
                or m[outbox.c.next_attempt_at] > m[outbox.c.created_at]
            )
            stamps.append({"oid": m[outbox.c.id], "v": claim.version})
        if stamps:
            await conn.execute(
                update(outbox)
                .where(outbox.c.id == bindparam("oid"))
                .values(status="sending", lease_owner=self.owner, lease_version=bindparam("v")),
                stamps,
            )
        return [c for c in claims.values() if c.groups]

    async def _take_leases(
        self,
        conn: AsyncConnection,
        record_ids: list[int],
        now: datetime,
        lease: timedelta | None = None,
    ) -> dict[int, tuple[int, dict[str, Any]]]:
        """Lease the records no other relay holds (for `lease`, or the relay's): their fencing
        versions and what their last settled sends carried. Inserted in record order, so that
        two relays taking overlapping sets wait for each other, never deadlock."""
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        expires = now + (lease or self.lease)
        insert = dialect.insert(relay_leases).values(
            [
                {"record_id": r, "owner": self.owner, "version": 1, "expires_at": expires}
                for r in record_ids
            ]
        )
        taken = insert.on_conflict_do_update(
            index_elements=[relay_leases.c.record_id],
            set_={
                "owner": insert.excluded.owner,
                "version": relay_leases.c.version + 1,
                "expires_at": insert.excluded.expires_at,
            },
            where=relay_leases.c.expires_at <= now,
        ).returning(relay_leases.c.record_id, relay_leases.c.version, relay_leases.c.sent)
        return {r.record_id: (r.version, dict(r.sent or {})) for r in await conn.execute(taken)}

    def _lane(self, group: _Group) -> asyncio.Semaphore:
        """The sends of one tenant to one system under way at once: its `concurrency` calls
        (which its client holds to) and a few more reading their state, so that a call starts
        as soon as one ends."""
        key = (group.tenant_id, group.target)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = asyncio.Semaphore(self.concurrency + READ_AHEAD)
        return lane

    async def _send(self, claim: _Claim, group: _Group) -> Learned:
        try:
            effect = effect_from_outbox(group.kind, group.payload)
        except EffectPayloadError as exc:
            raise Rejected(str(exc)) from exc
        async with self._lane(group):
            left = claim.deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise LeaseRunningOut(f"not sent: the lease of record {claim.record_id} runs out")
            if isinstance(effect, AeProspectUpsert):
                # The latest decided state, read as the call starts: what AE should hold.
                group.record = await self._current(group.record)
                effect = AeProspectUpsert.of(group.record)
            group.sent = effect
            if self._sent_last(claim, group, effect):
                group.unchanged = True
                return Learned()
            attempt = Attempt(group.tenant_id, group.written_at, group.tried_before)
            try:
                with tracing.sending(
                    group.traceparent, target=group.target, kind=group.kind, tenant=group.tenant_id
                ):
                    async with asyncio.timeout(left):
                        return await self.senders.send(group.record, effect, attempt)
            except TimeoutError as exc:
                raise LeaseRunningOut(
                    f"send of record {claim.record_id} outlasted {self.send_window:.0f}s of its "
                    "lease"
                ) from exc

    async def _current(self, claimed: RecordState) -> RecordState:
        """The record's latest decided state (as claimed if it is gone), read with the other
        sends that want theirs at about the same time."""
        assert claimed.id is not None, "the relay sends effects of stored records only"
        row = await self.states.read(claimed.id)
        return record_from_row(row) if row is not None else claimed

    def _sent_last(self, claim: _Claim, group: _Group, effect: Effect) -> bool:
        """The last settled send of this kind (by any replica) carried exactly this state, and
        nothing may have been sent since: no relay claimed the record in between (its lease
        version grew by one since, even a claim whose send failed counts) and the target
        reported no change of its own. Never for a create, which has to happen."""
        last = claim.sent.get(group.kind)
        if not isinstance(last, dict) or _creates(group):
            return False
        return (
            last.get("v") == claim.version - 1
            and last.get("effect") == effect_payload(effect)
            and last.get("stamp") == _stamp_text(group.target, group.record)
        )

    async def _settle_batch(self, items: list[tuple[_Claim, list[Outcome]]]) -> None:
        """Settle records in one transaction; if that fails, each in its own."""
        traces = {g.event_id: g.traceparent for claim, _ in items for g in claim.groups}
        with tracing.answering(traces):
            await self._settle_many(items)

    async def _settle_many(self, items: list[tuple[_Claim, list[Outcome]]]) -> None:
        if len(items) > 1:
            try:
                await self._settle(items)
                return
            except Exception:
                log.warning("settle of %d records in one go failed: one by one", len(items))
        for claim, outcome in items:
            await self._settle_record(claim, outcome)

    async def _settle_record(self, claim: _Claim, results: list[Outcome], tries: int = 3) -> None:
        """Settle one record in its own transaction. A settle that keeps failing leaves the
        record `sending` under this lease: it is claimed again once the lease expires."""
        for attempt in range(1, tries + 1):
            try:
                await self._settle([(claim, results)])
                return
            except Exception:
                if attempt == tries:
                    log.exception(
                        "settle of record %s failed %d times: it is sent again after its lease",
                        claim.record_id,
                        tries,
                    )
                    return
                log.warning("settle of record %s failed, trying again", claim.record_id)
                await asyncio.sleep(0.05 * attempt)

    async def _settle(self, items: list[tuple[_Claim, list[Outcome]]]) -> None:
        items = sorted(items, key=lambda item: item[0].record_id)
        async with self.engine.begin() as conn:
            now = await db_now(conn)
            released = await self._release(conn, [claim for claim, _ in items], now)
            ours = (outbox.c.status == "sending") & (outbox.c.lease_owner == self.owner)
            answered: list[Answered] = []
            superseded: list[int] = []
            done: list[dict[str, Any]] = []
            sent: list[tuple[_Claim, _Group]] = []
            for claim, results in items:
                if claim.record_id not in released:
                    self.fenced += 1
                    log.warning(
                        "lease of record %s (version %d) was taken over: %s settles nothing",
                        claim.record_id,
                        claim.version,
                        self.owner,
                    )
                    continue
                for group, result in zip(claim.groups, results, strict=True):
                    if isinstance(result, BaseException):
                        await conn.execute(
                            update(outbox)
                            .where(outbox.c.id.in_(group.row_ids), ours)
                            .values(**self._failure(group, result, now))
                        )
                        continue
                    sent.append((claim, group))
                    if group.unchanged:
                        superseded += group.row_ids  # what AE or SF holds already
                        continue
                    *older, newest = group.row_ids
                    superseded += older
                    done.append({"oid": newest, "n": group.attempts + 1})
                    assert group.record.id is not None
                    answered.append(
                        Answered(group.tenant_id, group.record.id, newest, group.event_id, result)
                    )
            if superseded:
                await conn.execute(
                    update(outbox)
                    .where(outbox.c.id.in_(superseded), ours)
                    .values(status="superseded", done_at=now, **_UNLEASED)
                )
            if done:
                await conn.execute(
                    update(outbox)
                    .where(outbox.c.id == bindparam("oid"), ours)
                    .values(status="done", done_at=now, attempts=bindparam("n"), **_UNLEASED),
                    done,
                )
            await apply_relay_answers(conn, answered, now)
            await self._supersede_covered(conn, sent, now)
            await self._record_sent(conn, sent)
        # Once committed.
        for _, group in sent:
            if group.unchanged:
                self.unchanged += 1
                continue
            self.sent += 1
            log.info(
                "effect sent",
                extra={
                    "record": group.record.sf_record_id,
                    "target": group.target,
                    "coalesced": len(group.row_ids),
                },
            )

    async def _record_sent(self, conn: AsyncConnection, sent: list[tuple[_Claim, _Group]]) -> None:
        """Keep with each lease what its send carried, for the next claim of the record (by
        any replica). The stamp is the one read before the call: a change the target reported
        during it means the call may not be what the target holds."""
        states: dict[int, dict[str, Any]] = {}
        for claim, group in sent:
            if group.sent is None:
                continue
            state = states.setdefault(claim.record_id, dict(claim.sent))
            state[group.kind] = {
                "v": claim.version,
                "effect": effect_payload(group.sent),
                "stamp": _stamp_text(group.target, group.record),
            }
        if states:
            await conn.execute(
                update(relay_leases)
                .where(relay_leases.c.record_id == bindparam("rid"))
                .values(sent=bindparam("sent_state")),
                [{"rid": rid, "sent_state": state} for rid, state in states.items()],
            )

    async def _release(
        self, conn: AsyncConnection, claims: list[_Claim], now: datetime
    ) -> set[int]:
        """Fencing: release the leases still ours at the versions claimed; the records whose
        lease was. Locked in record order first, as leases are taken, so a settle and a claim
        that overlap wait for each other instead of deadlocking."""
        pairs = [(c.record_id, c.version) for c in claims]
        mine = (relay_leases.c.owner == self.owner) & tuple_(
            relay_leases.c.record_id, relay_leases.c.version
        ).in_(pairs)
        if conn.dialect.name == "postgresql" and len(pairs) > 1:
            lock = select(relay_leases.c.record_id).where(mine).order_by(relay_leases.c.record_id)
            await conn.execute(lock.with_for_update())
        released = await conn.execute(
            update(relay_leases)
            .where(mine)
            .values(owner=None, expires_at=now)
            .returning(relay_leases.c.record_id)
        )
        return {r.record_id for r in released}

    async def _supersede_covered(
        self, conn: AsyncConnection, sent: list[tuple[_Claim, _Group]], now: datetime
    ) -> None:
        """Supersede the rows that came in while a record's call was in flight when what the
        call sent is still the record's latest state (and the target system reported no change
        of its own meanwhile): sending them would repeat the call."""
        if not sent:
            return
        by_key = {(claim.record_id, group.kind): group for claim, group in sent}
        found = await conn.execute(
            select(outbox.c.id, outbox.c.record_id, outbox.c.kind, outbox.c.payload, records)
            .join(records, records.c.id == outbox.c.record_id)
            .where(
                outbox.c.record_id.in_({claim.record_id for claim, _ in sent}),
                outbox.c.kind.in_({group.kind for _, group in sent}),
                outbox.c.status == "pending",
                outbox.c.lease_owner.is_(None),
            )
            .order_by(outbox.c.id)
        )
        newer: dict[tuple[int, str], list[int]] = {}
        newest: dict[tuple[int, str], Mapping[str, Any]] = {}
        states: dict[int, RecordState] = {}
        for row in found:
            key = (row.record_id, row.kind)
            if key not in by_key:
                continue
            newer.setdefault(key, []).append(row.id)
            newest[key] = row.payload
            states[row.record_id] = record_from_row(row)
        covered: list[int] = []
        for key, ids in newer.items():
            group = by_key[key]
            if _covers(group, states[key[0]], newest[key]):
                covered += ids
        if covered:
            await conn.execute(
                update(outbox)
                .where(
                    outbox.c.id.in_(covered),
                    outbox.c.status == "pending",
                    outbox.c.lease_owner.is_(None),
                )
                .values(status="superseded", done_at=now)
            )
            log.debug("%d effects superseded by the call in flight as they came", len(covered))

    def _failure(self, group: _Group, exc: BaseException, now: datetime) -> dict[str, Any]:
        failure = classify(exc)
        if failure.kind == "quota":
            # Not an attempt: nothing was sent. The quota is back on the next quota day.
            until = next_quota_day(now, self.quota_timezone)
            log.warning(
                "AE daily quota spent: effect on record %s waits until %s",
                group.record.id,
                until.isoformat(),
            )
            return {"last_error": failure.error, "next_attempt_at": until, **_PENDING}
        attempts = group.attempts + 1
        if failure.kind == "permanent":
            log.error(
                "effect on record %s is dead after %d attempts: %s",
                group.record.id,
                attempts,
                failure.error,
            )
            return {
                "status": "dead",
                "attempts": attempts,
                "last_error": failure.error,
                "done_at": now,
                **_UNLEASED,
            }
        delay = retry_delay(failure, attempts, base=self.backoff_base, cap=self.backoff_max)
        log.warning(
            "effect on record %s failed (attempt %d), waits %.1fs: %s",
            group.record.id,
            attempts,
            delay,
            failure.error,
        )
        return {
            "attempts": attempts,
            "last_error": failure.error,
            "next_attempt_at": now + timedelta(seconds=delay),
            **_PENDING,
        }


_UNLEASED: dict[str, Any] = {"lease_owner": None, "lease_version": None}
_PENDING: dict[str, Any] = {"status": "pending", **_UNLEASED}


def _age(now: datetime, oldest: datetime | None) -> float:
    return max((now - oldest).total_seconds(), 0.0) if oldest is not None else 0.0


def _creates(group: _Group) -> bool:
    return (group.record.prospect_id if group.target == "ae" else group.record.sf_record_id) is None


def _stamp(target: Target, record: RecordState) -> datetime | None:
    """When the target system itself last changed the record, as far as ownersync heard."""
    return record.ae_modstamp if target == "ae" else record.last_modstamp


def _stamp_text(target: Target, record: RecordState) -> str | None:
    stamp = _stamp(target, record)
    return stamp.isoformat() if stamp is not None else None


def _covers(group: _Group, now: RecordState, newest: Mapping[str, Any]) -> bool:
    """Whether the call `group` made covers the rows written since: it carried the record's
    state as it is now, and the target reported no change of its own since the call began."""
    if group.sent is None or _stamp(group.target, now) != _stamp(group.target, group.record):
        return False
    if isinstance(group.sent, AeProspectUpsert):
        return AeProspectUpsert.of(now) == group.sent
    try:
        return effect_from_outbox(group.kind, newest) == group.sent
    except EffectPayloadError:
        return False
