"""Reads and writes of the decision state, used inside the worker's one transaction per batch."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Select,
    and_,
    any_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.common import tracing
from services.common.db import bulk, sla_store
from services.common.db.tables import (
    ae_users,
    audit_log,
    connected_users,
    group_members,
    groups,
    inbox,
    outbox,
    queues,
    records,
    tenants,
)
from services.common.domain import (
    Decision,
    Effect,
    Learned,
    Member,
    RecordState,
    Rule,
    TenantPolicy,
    effect_payload,
)
from services.common.messages import AeProspectEvent, SfRecordEvent

# The audit rows of what the relay learned from AE's and SF's answers.
RELAY_EVENT_TYPE = "ownersync.relay"

_RECORD_FIELDS = (
    "id",
    "prospect_id",
    "sf_record_id",
    "sf_object",
    "email",
    "ae_assigned_user_id",
    "ae_assigned_queue_id",
    "sf_owner_id",
    "last_modstamp",
    "ae_modstamp",
)


def record_from_row(row: Any) -> RecordState:
    """The record of a row that selected the `records` table (alone or joined: keyed by column)."""
    m = row._mapping
    return RecordState(**{name: m[records.c[name]] for name in _RECORD_FIELDS})


def _record_of(values: Any) -> RecordState:
    """The record of values indexed by column name (an asyncpg row of `bulk`)."""
    return RecordState(**{name: values[name] for name in _RECORD_FIELDS})


def policy_from_row(row: Any) -> TenantPolicy:
    """The policy the decisions read, from a row that selected the `tenants` table."""
    return policy_of(row._mapping)


def policy_of(values: Any) -> TenantPolicy:
    """The policy of values indexed by column name (a SQLAlchemy row's mapping, an asyncpg row)."""
    return TenantPolicy(
        tenant_id=values["id"],
        connector_user_id=values["connector_user_id"],
        sync_mode=values["sync_mode"],
        auto_create_prospects=values["auto_create_prospects"],
        connector_verified=values["connector_verified"],
    )


def one_of(
    conn: AsyncConnection, column: ColumnElement[Any], values: Iterable[Any]
) -> ColumnElement[bool]:
    """`column IN (values)`; on Postgres `column = ANY(array)`, one statement (prepared and
    planned once) whatever the number of values, where IN makes one per count."""
    values = bulk.array_of(values)
    if conn.dialect.name == "postgresql":
        return column == any_(bindparam(None, values, type_=ARRAY(column.type)))
    return column.in_(values)


async def load_policies(
    conn: AsyncConnection, tenant_ids: Iterable[str]
) -> dict[str, TenantPolicy]:
    if bulk.applies(conn):
        return {r["id"]: policy_of(r) for r in await bulk.policy_rows(conn, tenant_ids)}
    rows = await conn.execute(select(tenants).where(one_of(conn, tenants.c.id, tenant_ids)))
    return {r.id: policy_from_row(r) for r in rows}


async def processed_event_ids(conn: AsyncConnection, event_ids: Iterable[str]) -> set[str]:
    if bulk.applies(conn):
        return await bulk.processed_event_ids(conn, event_ids)
    rows = await conn.execute(
        select(inbox.c.event_id).where(one_of(conn, inbox.c.event_id, event_ids))
    )
    return {r.event_id for r in rows}


async def records_by_any_id(
    conn: AsyncConnection,
    tenant_id: str,
    *,
    prospect_ids: Iterable[int] = (),
    sf_record_ids: Iterable[str] = (),
) -> list[RecordState]:
    """The tenant's records holding any of the ids, locked for this batch (in id order)."""
    prospects, sf_ids = set(prospect_ids), set(sf_record_ids)
    wheres = [
        one_of(conn, column, ids)
        for column, ids in ((records.c.prospect_id, prospects), (records.c.sf_record_id, sf_ids))
        if ids
    ]
    if not wheres:
        return []
    query = _locked_records(conn, tenant_id, wheres)
    return [record_from_row(r) for r in await conn.execute(query)]


def _locked_records(
    conn: AsyncConnection, tenant_id: str, wheres: Sequence[ColumnElement[bool]]
) -> Select[Any]:
    """The tenant's records that meet any of `wheres`, locked (in id order).

    Each condition is looked up on its own (and so on its own index, whatever the planner
    knows of the table: one WHERE with an OR is planned as a scan of all the tenant's rows
    until the table has statistics); the conditions are repeated on the locked rows, so that
    a row another transaction changed meanwhile is returned only if it still meets them."""
    of_tenant = records.c.tenant_id == tenant_id
    found = [select(records.c.id).where(of_tenant, where) for where in wheres]
    ids = found[0] if len(found) == 1 else union_all(*found)
    if conn.dialect.name != "postgresql":
        return select(records).where(records.c.id.in_(ids), or_(*wheres))
    # = ANY(ARRAY(…)): the ids are found first, then their rows by primary key; as an IN
    # (a semi-join) it may be planned as a loop over the tenant's rows.
    return (
        select(records)
        .where(records.c.id == any_(func.array(ids.scalar_subquery())), or_(*wheres))
        .order_by(records.c.id)
        .with_for_update()
    )


async def records_of_sf_events(
    conn: AsyncConnection,
    tenant_id: str,
    sf_record_ids: Iterable[str],
    emails: Iterable[str | None],
) -> tuple[dict[str, RecordState], dict[str, RecordState]]:
    """In one round trip, locked for this batch (in id order): the tenant's records of the SF
    ids (by SF id), and for each email the oldest prospect with that email and no SF record
    yet (S9 links it; by lower-case email).

    Locked, so that two workers never link the same prospect to two SF records; a candidate
    another transaction linked meanwhile is not returned (Postgres checks the WHERE again once
    it has the lock)."""
    sf_ids = set(sf_record_ids)
    wanted = {e.lower() for e in emails if e}
    if not sf_ids and not wanted:
        return {}, {}
    if bulk.applies(conn):
        return _known_and_oldest(await bulk.records_of_sf_events(conn, tenant_id, sf_ids, wanted))
    wheres = []
    if sf_ids:
        wheres.append(one_of(conn, records.c.sf_record_id, sf_ids))
    if wanted:
        unlinked = and_(records.c.sf_record_id.is_(None), records.c.prospect_id.is_not(None))
        wheres.append(and_(one_of(conn, records.c.email, wanted), unlinked))
    query = _locked_records(conn, tenant_id, wheres)
    return _known_and_oldest([row._mapping for row in await conn.execute(query)])


def _known_and_oldest(
    rows: Iterable[Any],
) -> tuple[dict[str, RecordState], dict[str, RecordState]]:
    """The records by SF id, and the oldest unlinked record of each email (rows indexed by
    column name, `created_at` included)."""
    known: dict[str, RecordState] = {}
    oldest: dict[str, tuple[tuple[datetime, int], RecordState]] = {}
    for row in rows:
        record = _record_of(row)
        if record.sf_record_id is not None:
            known[record.sf_record_id] = record
        elif record.email is not None:
            age = (row["created_at"], row["id"])
            if record.email not in oldest or age < oldest[record.email][0]:
                oldest[record.email] = (age, record)
    return known, {email: record for email, (_, record) in oldest.items()}


def can_merge(one: RecordState, other: RecordState) -> bool:
    """Whether two records may be one: no id of one contradicts an id of the other."""
    return all(
        a is None or b is None or a == b
        for a, b in (
            (one.prospect_id, other.prospect_id),
            (one.sf_record_id, other.sf_record_id),
        )
    )


def merged_state(keep: RecordState, gone: RecordState) -> RecordState:
    """`keep` completed with what only `gone` knew; the newest of each modstamp."""
    owner = keep if keep.ae_assigned or not gone.ae_assigned else gone
    return keep.evolve(
        prospect_id=keep.prospect_id or gone.prospect_id,
        sf_record_id=keep.sf_record_id or gone.sf_record_id,
        sf_object=keep.sf_object or gone.sf_object,
        email=keep.email or gone.email,
        ae_assigned_user_id=owner.ae_assigned_user_id,
        ae_assigned_queue_id=owner.ae_assigned_queue_id,
        sf_owner_id=keep.sf_owner_id or gone.sf_owner_id,
        last_modstamp=_newest(keep.last_modstamp, gone.last_modstamp),
        ae_modstamp=_newest(keep.ae_modstamp, gone.ae_modstamp),
    )


def _newest(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else max(a, b)


async def merge_records(
    conn: AsyncConnection,
    tenant_id: str,
    one: RecordState,
    other: RecordState,
    cause: Cause,
    now: datetime,
) -> RecordState:
    """Merge two stored, locked records that are one into the older (smaller id): its audit
    and outbox rows move to it, the younger row goes, and an audit row (MERGE) says so.
    Written at once, so that the ids the younger row held are free for the merged row."""
    assert one.id is not None and other.id is not None and one.id != other.id
    keep, gone = (one, other) if one.id < other.id else (other, one)
    merged = merged_state(keep, gone)
    for table in (audit_log, outbox):
        await conn.execute(
            update(table).where(table.c.record_id == gone.id).values(record_id=keep.id)
        )
    await conn.execute(delete(records).where(records.c.id == gone.id))
    await conn.execute(
        update(records)
        .where(records.c.id == keep.id)
        .values(updated_at=now, **_record_values(merged))
    )
    reason = (
        f"records {keep.id} and {gone.id} are one (prospect {merged.prospect_id}, SF record "
        f"{merged.sf_record_id}): merged into {keep.id}"
    )
    await conn.execute(
        insert(audit_log),
        [audit_row(tenant_id, keep.id, cause, Rule.MERGE, reason, gone, merged, now)],
    )
    return merged


async def ae_users_connected_to(
    conn: AsyncConnection, tenant_id: str, sf_user_ids: Iterable[str]
) -> dict[str, int]:
    if bulk.applies(conn):
        return await bulk.ae_users_connected_to(conn, tenant_id, sf_user_ids)
    rows = await conn.execute(
        select(connected_users.c.sf_user_id, connected_users.c.ae_user_id).where(
            connected_users.c.tenant_id == tenant_id,
            one_of(conn, connected_users.c.sf_user_id, sf_user_ids),
        )
    )
    return {r.sf_user_id: r.ae_user_id for r in rows}


async def sf_users_connected_to(
    conn: AsyncConnection, tenant_id: str, ae_user_ids: Iterable[int]
) -> dict[int, str]:
    rows = await conn.execute(
        select(connected_users.c.ae_user_id, connected_users.c.sf_user_id).where(
            connected_users.c.tenant_id == tenant_id,
            one_of(conn, connected_users.c.ae_user_id, ae_user_ids),
        )
    )
    return {r.ae_user_id: r.sf_user_id for r in rows}


Event = SfRecordEvent | AeProspectEvent


@dataclass(frozen=True)
class Cause:
    """What made a decision, as its audit and outbox rows name it: an event, or an operator's
    run (reconcile) that is not an event and leaves no inbox row."""

    event_id: str | None
    source_id: str
    event_type: str

    @classmethod
    def of(cls, event: Event) -> Cause:
        return cls(str(event.event_id), event.source_id, event.type)


@dataclass
class BatchWriter:
    """Collects what one batch of decisions changes and writes it in a few statements.

    The one writer of decisions: the workers and reconcile stage theirs here."""

    conn: AsyncConnection
    now: datetime
    _inbox: list[dict[str, Any]] = field(default_factory=list)
    _audit: list[dict[str, Any]] = field(default_factory=list)
    _outbox: list[dict[str, Any]] = field(default_factory=list)
    _updates: dict[int, RecordState] = field(default_factory=dict)
    _new: dict[int, tuple[str, RecordState]] = field(default_factory=dict)

    async def apply(self, tenant_id: str, event: Event, decision: Decision) -> RecordState | None:
        """Stage the event as processed and its decision; returns the record state to keep
        using in this batch, or None.

        A record created in this batch carries a temporary negative id until `flush`."""
        self._inbox.append(
            {
                "event_id": str(event.event_id),
                "tenant_id": tenant_id,
                "type": event.type,
                "source_id": event.source_id,
                "processed_at": self.now,
            }
        )
        return await self.apply_decision(tenant_id, Cause.of(event), decision)

    async def apply_decision(
        self, tenant_id: str, cause: Cause, decision: Decision
    ) -> RecordState | None:
        """Stage a decision: its record, its audit row and its effects."""
        after = await self._store_record(tenant_id, decision.after)
        if decision.audited:
            record_id = (after or decision.before or RecordState()).id
            self._audit.append(
                audit_row(
                    tenant_id,
                    record_id,
                    cause,
                    decision.rule,
                    decision.reason,
                    decision.before,
                    after,
                    self.now,
                )
            )
        for effect in decision.effects:
            assert after is not None and after.id is not None, "an effect needs a stored record"
            self._outbox.append(outbox_row(tenant_id, after.id, cause, effect, self.now))
        return after

    async def _store_record(self, tenant_id: str, state: RecordState | None) -> RecordState | None:
        """Stage the record; a new one gets a temporary negative id until `flush` inserts it."""
        if state is None:
            return None
        if state.email and state.email != state.email.lower():
            state = state.evolve(email=state.email.lower())
        record_id = state.id if state.id is not None else -(len(self._new) + 1)
        state = state.evolve(id=record_id)
        if record_id < 0:
            self._new[record_id] = (tenant_id, state)
        else:
            self._updates[record_id] = state
        return state

    async def flush(self) -> None:
        """Write the batch: new records in one INSERT … RETURNING, then everything else."""
        if bulk.applies(self.conn):
            await self._flush_postgres()
            return
        real_id: dict[int, int] = {}
        if self._new:
            staged = list(self._new.items())
            inserted = await self.conn.execute(
                insert(records).returning(records.c.id, sort_by_parameter_order=True),
                [
                    {
                        "tenant_id": tenant_id,
                        "created_at": self.now,
                        "updated_at": self.now,
                        **_record_values(state),
                    }
                    for _, (tenant_id, state) in staged
                ],
            )
            real_id = {tmp: new for (tmp, _), new in zip(staged, inserted.scalars(), strict=True)}
        if self._updates:
            await self.conn.execute(
                update(records).where(records.c.id == bindparam("rid")),
                [
                    {"rid": s.id, "updated_at": self.now, **_record_values(s)}
                    for s in self._updates.values()
                ],
            )
        self._resolve(real_id)
        for table, rows in ((inbox, self._inbox), (audit_log, self._audit), (outbox, self._outbox)):
            if rows:
                await self.conn.execute(insert(table), rows)

    def _resolve(self, real_id: dict[int, int]) -> None:
        """The audit and outbox rows of new records get their real ids."""
        for rows in (self._audit, self._outbox):
            for row in rows:
                if row["record_id"] is not None and row["record_id"] < 0:
                    row["record_id"] = real_id[row["record_id"]]

    async def _flush_postgres(self) -> None:
        """`flush` on Postgres: the new records in one statement whatever the batch size (their
        ids come back), then the updates and the inbox, audit and outbox rows in one more."""
        conn, now = self.conn, self.now
        real_id: dict[int, int] = {}
        if self._new:
            staged = list(self._new.items())
            ids = await bulk.insert_records(
                conn,
                [
                    {"tenant_id": tenant_id, "created_at": now, "updated_at": now, **vars(state)}
                    for _, (tenant_id, state) in staged
                ],
            )
            real_id = {tmp: new for (tmp, _), new in zip(staged, ids, strict=True)}
        self._resolve(real_id)
        await bulk.write(
            conn,
            [{"updated_at": now, **vars(s)} for s in self._updates.values()],
            ((inbox, self._inbox), (audit_log, self._audit), (outbox, self._outbox)),
        )


def _record_values(state: RecordState) -> dict[str, Any]:
    return {name: getattr(state, name) for name in _RECORD_FIELDS if name != "id"}


def audit_row(
    tenant_id: str,
    record_id: int | None,
    cause: Cause,
    rule: Rule,
    reason: str,
    before: RecordState | None,
    after: RecordState | None,
    now: datetime,
) -> dict[str, Any]:
    """An `audit_log` row: of a decision, or of what the relay learned."""
    return {
        "tenant_id": tenant_id,
        "record_id": record_id,
        "event_id": cause.event_id,
        "source_id": cause.source_id,
        "event_type": cause.event_type,
        "rule": rule.value,
        "before": _jsonable(before),
        "after": _jsonable(after),
        "reason": reason,
        "created_at": now,
        "trace_id": tracing.trace_id_for(cause.event_id),
    }


def outbox_row(
    tenant_id: str, record_id: int, cause: Cause, effect: Effect, now: datetime
) -> dict[str, Any]:
    """An `outbox` row, due now: the effect's kind and its versioned payload."""
    return {
        "tenant_id": tenant_id,
        "record_id": record_id,
        "target": effect.target,
        "kind": effect.kind,
        "payload": effect_payload(effect),
        "event_id": cause.event_id,
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
        "traceparent": tracing.traceparent_for(cause.event_id),
    }


def _jsonable(state: RecordState | None) -> dict[str, Any] | None:
    return state.owners() if state is not None else None  # owners() holds JSON types only


@dataclass(frozen=True)
class Answered:
    """An effect the relay sent (the newest outbox row of its record and kind), and what the
    answer taught about the record."""

    tenant_id: str
    record_id: int
    outbox_id: int
    event_id: str | None
    learned: Learned


async def apply_relay_answers(
    conn: AsyncConnection, answers: Sequence[Answered], now: datetime
) -> None:
    """Set the record columns the answers taught (a new prospect id, SF record id or SF owner),
    with an audit row on each record for what it did not hold yet."""
    taught = [a for a in answers if a.learned.columns()]
    if not taught:
        return
    query = select(records).where(records.c.id.in_({a.record_id for a in taught}))
    if conn.dialect.name == "postgresql":
        # The lock the UPDATE below takes anyway (not FOR UPDATE, which would also wait for
        # the foreign-key checks of the workers' audit and outbox inserts).
        query = query.order_by(records.c.id).with_for_update(key_share=True)
    current = {r.id: record_from_row(r) for r in await conn.execute(query)}
    changes: list[dict[str, Any]] = []
    audit: list[dict[str, Any]] = []
    for answer in taught:
        before = current.get(answer.record_id)
        if before is None:
            continue  # deleted with its tenant since it was claimed
        columns = answer.learned.columns()
        changes.append({"rid": answer.record_id, "updated_at": now, **columns})
        new = {name: value for name, value in columns.items() if getattr(before, name) != value}
        if not new:
            continue
        after = current[answer.record_id] = before.evolve(**columns)
        cause = Cause(answer.event_id, f"outbox {answer.outbox_id}", RELAY_EVENT_TYPE)
        reason = f"the relay learned: {_what_was_learned(new, after)}"
        audit.append(
            audit_row(
                answer.tenant_id, answer.record_id, cause, Rule.RELAY, reason, before, after, now
            )
        )
    # One statement per set of columns, not one per record.
    shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in changes:
        shapes.setdefault(tuple(sorted(row)), []).append(row)
    for shape, rows in shapes.items():
        await conn.execute(
            update(records)
            .where(records.c.id == bindparam("rid"))
            .values({c: bindparam(c) for c in shape if c != "rid"}),
            rows,
        )
    if audit:
        await conn.execute(insert(audit_log), audit)
    # SF confirmed the owner ownersync set through a group: its follow-up SLA starts now.
    confirmed = {a.record_id: a.learned.sf_owner_id for a in taught if a.learned.sf_owner_id}
    await sla_store.start_confirmed(conn, confirmed, now)


def _what_was_learned(new: dict[str, Any], after: RecordState) -> str:
    said = []
    for name, value in new.items():
        if name == "prospect_id":
            said.append(f"AE created prospect {value}")
        elif name == "sf_record_id":
            said.append(f"SF created {after.sf_object or 'record'} {value}")
        elif name == "sf_owner_id":
            said.append(f"SF owner is now {value}")
        elif name == "sf_object" and "sf_record_id" not in new:
            said.append(f"the SF record is a {value}")
    return "; ".join(said)


async def group_members_of(
    conn: AsyncConnection, tenant_id: str, group_ids: Iterable[int]
) -> dict[int, list[Member]]:
    """Round-robin members per group, locked so two workers never pick from stale counters."""
    group_ids = set(group_ids)
    if not group_ids:
        return {}
    known = await conn.execute(
        select(groups.c.id).where(groups.c.tenant_id == tenant_id, groups.c.id.in_(group_ids))
    )
    found: dict[int, list[Member]] = {row.id: [] for row in known}
    query = (
        select(group_members, ae_users.c.active, ae_users.c.created_at)
        .join(
            ae_users,
            and_(
                ae_users.c.tenant_id == group_members.c.tenant_id,
                ae_users.c.id == group_members.c.ae_user_id,
            ),
        )
        .where(group_members.c.tenant_id == tenant_id, group_members.c.group_id.in_(group_ids))
        .order_by(ae_users.c.created_at, ae_users.c.id)
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(of=group_members)
    for order, row in enumerate(await conn.execute(query)):
        found[row.group_id].append(
            Member(
                ae_user_id=row.ae_user_id,
                created_order=order,
                weight=row.weight,
                daily_cap=row.daily_cap,
                paused=row.paused,
                active=row.active,
                last_assigned_at=row.last_assigned_at,
                assigned_today=row.assigned_today,
                assigned_total=row.assigned_total,
                hours=sla_store.hours_from_row(row),
            )
        )
    return found


async def save_member_counters(
    conn: AsyncConnection, tenant_id: str, group_id: int, member: Member
) -> None:
    await conn.execute(
        update(group_members)
        .where(
            group_members.c.tenant_id == tenant_id,
            group_members.c.group_id == group_id,
            group_members.c.ae_user_id == member.ae_user_id,
        )
        .values(
            last_assigned_at=member.last_assigned_at,
            assigned_today=member.assigned_today,
            assigned_total=member.assigned_total,
            counted_on=member.last_assigned_at.date().isoformat()
            if member.last_assigned_at
            else None,
        )
    )


async def tenant_queue_ids(conn: AsyncConnection, tenant_id: str) -> set[str]:
    rows = await conn.execute(select(queues.c.id).where(queues.c.tenant_id == tenant_id))
    return {r.id for r in rows}


async def pending_effects(engine: AsyncEngine) -> int:
    """Effects the relay has still to send (or retry), or is sending."""
    async with engine.connect() as conn:
        return int(
            (
                await conn.execute(
                    select(func.count())
                    .select_from(outbox)
                    .where(outbox.c.status.in_(("pending", "sending")))
                )
            ).scalar_one()
        )
