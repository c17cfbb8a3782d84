"""The outbox relay: sends the effects the workers committed to AE (and SF), until done.

Effects of one record are coalesced: only the newest desired state is sent, and a new effect
waits `coalesce` seconds for later changes of the same record, so a record reassigned five
times in quick succession costs one AE call, not five.

Safe at N replicas. A pass claims due rows with `FOR UPDATE SKIP LOCKED` and takes a lease on
each of their records (`relay_leases`: owner = this replica, a fencing `version` that grows with
every claim, expiry from the database clock), so one record's effects go out from one relay at
a time, in order. The claimed rows are `sending`, stamped with owner and version. They are sent
outside any transaction, then each record is settled in its own transaction, which first
releases the lease it still holds: a relay whose lease expired and was taken over finds another
version there and settles nothing. A settle that fails (a deadlock, a failover) touches only its
record, which is claimed again when its lease expires. Expired leases are claimed like due rows.

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
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, assert_never

from sqlalchemy import bindparam, exists, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.common import metrics, tracing
from services.common.db.store import Answered, apply_relay_answers, record_from_row
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
)
from services.relay.retry import Rejected, classify, next_quota_day, retry_delay

log = logging.getLogger("ownersync.relay")

__all__ = ["Attempt", "Rejected", "Relay", "Senders", "db_now", "replica_id"]

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


class SendsEffects(Protocol):
    """What the relay sends with: `Senders`, or `TenantSenders` (each tenant's own)."""

    @property
    def kinds(self) -> list[str]: ...

    @property
    def targets(self) -> list[Target]: ...

    async def send(self, record: RecordState, effect: Effect, attempt: Attempt) -> Learned: ...


@dataclass
class _Group:
    """The pending rows of one record and effect kind: only the newest is sent."""

    record: RecordState
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


@dataclass
class _Claim:
    """A record leased by this relay for one pass, and its groups of rows to send."""

    record_id: int
    version: int
    groups: list[_Group]


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
    ) -> None:
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
        self.sent = 0
        self.fenced = 0  # settles refused because another relay took the lease over
        self.wake = asyncio.Event()
        self._observed_at = 0.0
        self._deadline = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        log.info("relay %s started for %s", self.owner, ", ".join(sorted(self.senders.targets)))
        while not stop.is_set():
            try:
                handled = await self.run_once()
                await self._observe_outbox()
            except Exception:
                log.exception("relay pass failed")
                handled = 0
            if handled:
                continue
            self.wake.clear()
            stopping = asyncio.ensure_future(stop.wait())
            woken = asyncio.ensure_future(self.wake.wait())
            await asyncio.wait(
                {stopping, woken}, timeout=self.interval, return_when="FIRST_COMPLETED"
            )
            stopping.cancel()
            woken.cancel()
        log.info("relay stopped")

    async def run_once(self) -> int:
        """One pass: claim due records, send their effects, settle each record. Returns the
        effects handled."""
        return await self.deliver(await self.claim())

    async def claim(self) -> list[_Claim]:
        """Lease due records and mark their rows `sending` (the first half of a pass)."""
        claims = await self._claim()
        self._deadline = asyncio.get_running_loop().time() + self.send_window
        return claims

    async def deliver(self, claims: list[_Claim]) -> int:
        """Send what `claim` leased and settle each record (the second half of a pass).

        Sends must finish well within the lease (`send_window`), measured on this process's
        clock from the claim: past it another relay may own the record, so nothing more is sent
        (the effect waits, as after a timeout)."""
        if not claims:
            return 0
        groups = [g for c in claims for g in c.groups]
        results = await asyncio.gather(*(self._send(g) for g in groups), return_exceptions=True)
        by_group = dict(zip(map(id, groups), results, strict=True))
        with tracing.answering({g.event_id: g.traceparent for g in groups}):
            for claim in claims:
                await self._settle_record(claim, [by_group[id(g)] for g in claim.groups])
        return sum(len(g.row_ids) for g in groups)

    @property
    def send_window(self) -> float:
        return self.lease.total_seconds() * SEND_WINDOW

    async def _observe_outbox(self, every: float = 1.0) -> None:
        """Outbox depth and age for /metrics, at most once a second."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._observed_at < every:
            return
        self._observed_at = loop.time()
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

    async def _claim(self) -> list[_Claim]:
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
            )
            if conn.dialect.name == "postgresql":
                due = due.with_for_update(of=outbox, skip_locked=True)
            found = await conn.execute(due.order_by(outbox.c.id).limit(self.batch_size))
            wanted = sorted({r.record_id for r in found})
            if not wanted:
                return []
            versions = await self._take_leases(conn, wanted, now)
            if not versions:
                return []
            # All pending rows of those records, due or backing off: the newest state wins.
            # A row another relay's claim holds locked right now (it lost the lease race) is
            # left for the next pass, after this one: waiting for it could deadlock.
            gather = (
                select(outbox, records)
                .join(records, records.c.id == outbox.c.record_id)
                .where(
                    outbox.c.status.in_(("pending", "sending")),
                    outbox.c.record_id.in_(list(versions)),
                    outbox.c.kind.in_(self.senders.kinds),
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
                    claim = claims[record_id] = _Claim(record_id, versions[record_id], [])
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
        self, conn: AsyncConnection, record_ids: list[int], now: datetime
    ) -> dict[int, int]:
        """Lease the records no other relay holds: their fencing versions. Inserted in record
        order, so that two relays taking overlapping sets wait for each other, never deadlock."""
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        expires = now + self.lease
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
        ).returning(relay_leases.c.record_id, relay_leases.c.version)
        return {r.record_id: r.version for r in await conn.execute(taken)}

    async def _send(self, group: _Group) -> Learned:
        try:
            effect = effect_from_outbox(group.kind, group.payload)
        except EffectPayloadError as exc:
            raise Rejected(str(exc)) from exc
        attempt = Attempt(group.tenant_id, group.written_at, group.tried_before)
        left = self._deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise LeaseRunningOut(f"not sent: the lease of record {group.record.id} runs out")
        try:
            with tracing.sending(
                group.traceparent, target=group.target, kind=group.kind, tenant=group.tenant_id
            ):
                async with asyncio.timeout(left):
                    return await self.senders.send(group.record, effect, attempt)
        except TimeoutError as exc:
            raise LeaseRunningOut(
                f"send of record {group.record.id} outlasted {self.send_window:.0f}s of its lease"
            ) from exc

    async def _settle_record(
        self, claim: _Claim, results: list[Learned | BaseException], tries: int = 3
    ) -> None:
        """Settle one record in its own transaction. A settle that keeps failing leaves the
        record `sending` under this lease: it is claimed again once the lease expires."""
        for attempt in range(1, tries + 1):
            try:
                await self._settle(claim, results)
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

    async def _settle(self, claim: _Claim, results: list[Learned | BaseException]) -> None:
        async with self.engine.begin() as conn:
            now = await db_now(conn)
            # Fencing: release the lease only if it is still ours, at the version we claimed.
            released = await conn.execute(
                update(relay_leases)
                .where(
                    relay_leases.c.record_id == claim.record_id,
                    relay_leases.c.owner == self.owner,
                    relay_leases.c.version == claim.version,
                )
                .values(owner=None, expires_at=now)
                .returning(relay_leases.c.record_id)
            )
            if released.first() is None:
                self.fenced += 1
                log.warning(
                    "lease of record %s (version %d) was taken over: %s settles nothing",
                    claim.record_id,
                    claim.version,
                    self.owner,
                )
                return
            ours = (
                (outbox.c.status == "sending")
                & (outbox.c.lease_owner == self.owner)
                & (outbox.c.lease_version == claim.version)
            )
            answered: list[Answered] = []
            sent = 0
            for group, result in zip(claim.groups, results, strict=True):
                *older, newest = group.row_ids
                if isinstance(result, BaseException):
                    await conn.execute(
                        update(outbox)
                        .where(outbox.c.id.in_(group.row_ids), ours)
                        .values(**self._failure(group, result, now))
                    )
                    continue
                if older:
                    await conn.execute(
                        update(outbox)
                        .where(outbox.c.id.in_(older), ours)
                        .values(status="superseded", done_at=now, **_UNLEASED)
                    )
                await conn.execute(
                    update(outbox)
                    .where(outbox.c.id == newest, ours)
                    .values(status="done", done_at=now, attempts=group.attempts + 1, **_UNLEASED)
                )
                assert group.record.id is not None
                answered.append(
                    Answered(group.tenant_id, group.record.id, newest, group.event_id, result)
                )
                sent += 1
                log.info(
                    "effect sent",
                    extra={
                        "record": group.record.sf_record_id,
                        "prospect": result.prospect_id or group.record.prospect_id,
                        "target": group.target,
                        "coalesced": len(group.row_ids),
                    },
                )
            await apply_relay_answers(conn, answered, now)
        self.sent += sent  # once committed

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
