"""The outbox relay: sends the effects the workers committed to AE (and SF), until done.

Effects of one record are coalesced: only the newest desired state is sent, and a new effect
waits `coalesce` seconds for later changes of the same record, so a record reassigned five
times in quick succession costs one AE call, not five. Rows are claimed with a lease
(next_attempt_at pushed forward) in a short transaction, sent outside any transaction, then
settled: done, superseded, retried later with backoff, or dead with the error.

Each row is rebuilt into its typed effect from its `kind` and versioned payload, and the effect's
type picks the sender. What an answer teaches (a new prospect id, SF record id or SF owner) is
written to the record with an audit row, in the settling transaction.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, assert_never

from sqlalchemy import bindparam, func, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common import metrics
from services.common.db.store import Answered, apply_relay_answers, record_from_row
from services.common.db.tables import outbox, records
from services.common.domain import (
    AeProspectUpsert,
    Effect,
    EffectPayloadError,
    Learned,
    RecordState,
    SfRecordUpsert,
    Target,
    effect_from_outbox,
)

log = logging.getLogger("ownersync.relay")

LEASE = timedelta(seconds=60)


class Rejected(Exception):
    """The remote side refused the effect for good (a 4xx): retrying cannot help."""


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
SfSender = Callable[[RecordState, SfRecordUpsert, Attempt], Awaitable[Learned]]


@dataclass(frozen=True)
class Senders:
    """How each type of effect leaves. Without an SF sender (no SF org to write to) SF effects
    are not claimed: they wait in the outbox."""

    ae: AeSender
    sf: SfSender | None = None

    @property
    def kinds(self) -> list[str]:
        return [AeProspectUpsert.kind] + ([SfRecordUpsert.kind] if self.sf is not None else [])

    @property
    def targets(self) -> list[Target]:
        return [AeProspectUpsert.target] + ([SfRecordUpsert.target] if self.sf is not None else [])

    async def send(self, record: RecordState, effect: Effect, attempt: Attempt) -> Learned:
        match effect:
            case AeProspectUpsert():
                return await self.ae(record, effect, attempt)
            case SfRecordUpsert():
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


class Relay:
    def __init__(
        self,
        engine: AsyncEngine,
        senders: SendsEffects,
        *,
        batch_size: int = 200,
        interval: float = 0.2,
        max_attempts: int = 10,
        backoff_base: float = 1.0,
        backoff_max: float = 300.0,
        coalesce: float = 0.0,
    ) -> None:
        self.engine = engine
        self.senders = senders
        self.batch_size = batch_size
        self.interval = interval
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.coalesce = timedelta(seconds=coalesce)
        self.sent = 0
        self.wake = asyncio.Event()
        self._observed_at = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        log.info("relay started for %s", ", ".join(sorted(self.senders.targets)))
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
        """One pass: claim due effects, send them, settle them. Returns the effects handled."""
        groups = await self._claim(datetime.now(UTC))
        if not groups:
            return 0
        results = await asyncio.gather(*(self._send(g) for g in groups), return_exceptions=True)
        await self._settle(groups, results, datetime.now(UTC))
        return sum(len(g.row_ids) for g in groups)

    async def _observe_outbox(self, every: float = 1.0) -> None:
        """Outbox depth and age for /metrics, at most once a second."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._observed_at < every:
            return
        self._observed_at = loop.time()
        now = datetime.now(UTC)
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(outbox.c.target, func.count(), func.min(outbox.c.created_at))
                .where(outbox.c.status == "pending")
                .group_by(outbox.c.target)
            )
            seen = {r[0]: (r[1], r[2]) for r in rows}
        for target in self.senders.targets:
            count, oldest = seen.get(target, (0, None))
            metrics.OUTBOX_DEPTH.labels(target).set(count)
            age = (now - oldest).total_seconds() if oldest is not None else 0.0
            metrics.OUTBOX_AGE.labels(target).set(age)

    async def _claim(self, now: datetime) -> list[_Group]:
        async with self.engine.begin() as conn:
            due = select(outbox.c.record_id, outbox.c.kind).where(
                outbox.c.status == "pending",
                outbox.c.next_attempt_at <= now,
                outbox.c.created_at <= now - self.coalesce,
                outbox.c.kind.in_(self.senders.kinds),
            )
            if conn.dialect.name == "postgresql":
                due = due.with_for_update(skip_locked=True)
            keys = {
                (r.record_id, r.kind)
                for r in await conn.execute(due.order_by(outbox.c.id).limit(self.batch_size))
            }
            if not keys:
                return []
            # All pending rows of those records, due or backing off: the newest state wins.
            rows = (
                await conn.execute(
                    select(outbox, records)
                    .join(records, records.c.id == outbox.c.record_id)
                    .where(
                        outbox.c.status == "pending",
                        tuple_(outbox.c.record_id, outbox.c.kind).in_(list(keys)),
                    )
                    .order_by(outbox.c.id)
                )
            ).all()
            groups: dict[tuple[int, str], _Group] = {}
            for row in rows:
                m = row._mapping
                key = (m[outbox.c.record_id], m[outbox.c.kind])
                group = groups.get(key)
                if group is None:
                    group = groups[key] = _Group(
                        record=record_from_row(row),
                        tenant_id=m[outbox.c.tenant_id],
                        kind=m[outbox.c.kind],
                        target=m[outbox.c.target],
                        row_ids=[],
                        payload={},
                        event_id=None,
                        attempts=0,
                        written_at=m[outbox.c.created_at],
                    )
                group.row_ids.append(m[outbox.c.id])
                group.payload = m[outbox.c.payload]
                group.event_id = m[outbox.c.event_id]
                group.attempts = max(group.attempts, m[outbox.c.attempts])
                # A row is written due at once; later than that, a claim leased it before.
                claimed_before = m[outbox.c.next_attempt_at] > m[outbox.c.created_at]
                group.tried_before |= m[outbox.c.attempts] > 0 or claimed_before
            ids = [i for g in groups.values() for i in g.row_ids]
            await conn.execute(
                update(outbox).where(outbox.c.id.in_(ids)).values(next_attempt_at=now + LEASE)
            )
            return list(groups.values())

    async def _send(self, group: _Group) -> Learned:
        try:
            effect = effect_from_outbox(group.kind, group.payload)
        except EffectPayloadError as exc:
            raise Rejected(str(exc)) from exc
        attempt = Attempt(group.tenant_id, group.written_at, group.tried_before)
        return await self.senders.send(group.record, effect, attempt)

    async def _settle(
        self, groups: list[_Group], results: list[Learned | BaseException], now: datetime
    ) -> None:
        superseded: list[int] = []
        done: list[dict[str, Any]] = []
        answered: list[Answered] = []
        async with self.engine.begin() as conn:
            for group, result in zip(groups, results, strict=True):
                *older, newest = group.row_ids
                if isinstance(result, BaseException):
                    await conn.execute(
                        update(outbox)
                        .where(outbox.c.id.in_(group.row_ids))
                        .values(**self._failure(group, result, now))
                    )
                    continue
                superseded += older
                done.append({"oid": newest, "tries": group.attempts + 1})
                assert group.record.id is not None
                answered.append(
                    Answered(group.tenant_id, group.record.id, newest, group.event_id, result)
                )
                self.sent += 1
                log.info(
                    "effect sent",
                    extra={
                        "record": group.record.sf_record_id,
                        "prospect": result.prospect_id or group.record.prospect_id,
                        "target": group.target,
                        "coalesced": len(group.row_ids),
                    },
                )
            # A few statements for the whole pass, not a few per record.
            if superseded:
                await conn.execute(
                    update(outbox)
                    .where(outbox.c.id.in_(superseded))
                    .values(status="superseded", done_at=now)
                )
            if done:
                await conn.execute(
                    update(outbox)
                    .where(outbox.c.id == bindparam("oid"))
                    .values(status="done", done_at=now, attempts=bindparam("tries")),
                    done,
                )
            await apply_relay_answers(conn, answered, now)

    def _failure(self, group: _Group, exc: BaseException, now: datetime) -> dict[str, Any]:
        attempts = group.attempts + 1
        error = f"{type(exc).__name__}: {exc}"[:2000]
        held = isinstance(exc, Held)
        if isinstance(exc, Rejected) or (attempts >= self.max_attempts and not held):
            log.error(
                "effect on record %s is dead after %d attempts: %s",
                group.record.id,
                attempts,
                error,
            )
            return {"status": "dead", "attempts": attempts, "last_error": error, "done_at": now}
        delay = min(self.backoff_max, self.backoff_base * 2 ** (attempts - 1))
        delay = random.uniform(delay / 2, delay)
        log.warning(
            "effect on record %s failed (attempt %d), retry in %.1fs: %s",
            group.record.id,
            attempts,
            delay,
            error,
        )
        return {
            "attempts": attempts,
            "last_error": error,
            "next_attempt_at": now + timedelta(seconds=delay),
        }
