"""Reconcile: find records whose AE owner disagrees with their SF owner and fix the ones the
connected users now allow, exactly as S5/S6 would on a reassignment notification.

"Disagree" means: the SF owner is a connected SF user whose AE user is not AE's assignee, or
the SF owner is a queue AE is not assigned to. A fix is written by the workers' `BatchWriter`:
the record, an audit row (rule S5/S6, reason "reconcile: …") and an AE upsert to the outbox, in
the caller's transaction; the relay sends it. Records whose SF owner is not connected are
counted and left alone (S4).
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from services.admin.schemas import ReconcileChange, ReconcileOutcome, ReconcileReport
from services.admin.tenants import tenant_row
from services.common.db.store import BatchWriter, Cause, policy_from_row, record_from_row
from services.common.db.tables import connected_users, records
from services.common.domain import Decision, RecordState, TenantPolicy
from services.common.messages import SF_RECORD_REASSIGNED, SfRecord, SfRecordEvent
from services.common.sfid import is_queue
from services.syncer.decide import decide_sf_event

CHUNK = 500
SHOWN_CHANGES = 100
EVENT_TYPE = "ownersync.reconcile"

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Verdict:
    outcome: ReconcileOutcome
    decision: Decision | None = None


def reconcile_record(
    record: RecordState,
    owner_ae_user_id: int | None,
    *,
    policy: TenantPolicy,
    run_id: uuid.UUID,
    now: datetime,
) -> Verdict:
    """Pure: what reconciling this record does (the S5/S6 decision, when it changes anything)."""
    owner = record.sf_owner_id
    if owner is None or record.sf_record_id is None:
        return Verdict("not_in_salesforce")
    if not is_queue(owner) and owner_ae_user_id is None:
        return Verdict("sf_owner_not_connected")
    as_if_reassigned = SfRecordEvent(
        type=SF_RECORD_REASSIGNED,
        tenant=policy.tenant_id,
        event_id=run_id,
        source_id="reconcile",
        occurred_at=now,
        received_at=now,
        payload=SfRecord(
            object="Contact" if record.sf_object == "Contact" else "Lead",
            record_id=record.sf_record_id,
            owner_id=owner,
            email=record.email,
            system_modstamp=record.last_modstamp or now,
        ),
    )
    # No modstamp on the record handed in: reconcile re-applies the SF owner ownersync already
    # knows, it is not a newer notification and must not look like a stale one.
    decided = decide_sf_event(
        as_if_reassigned,
        policy=policy,
        record=record.evolve(last_modstamp=None),
        ae_user_of={owner: owner_ae_user_id} if owner_ae_user_id is not None else {},
    )
    if not decided.effects or decided.after is None:
        return Verdict("agree")
    after = decided.after.evolve(
        last_modstamp=record.last_modstamp, sf_object=record.sf_object, email=record.email
    )
    return Verdict(
        "fixed",
        Decision(decided.rule, f"reconcile: {decided.reason}", record, after, decided.effects),
    )


async def reconcile(
    conn: AsyncConnection,
    tenant_id: str,
    *,
    dry_run: bool,
    now: datetime,
    on_progress: Progress | None = None,
) -> ReconcileReport:
    policy = policy_from_row(await tenant_row(conn, tenant_id, lock=not dry_run))
    total = (
        await conn.execute(
            select(func.count()).select_from(records).where(records.c.tenant_id == tenant_id)
        )
    ).scalar_one()
    run_id = uuid.uuid4()
    cause = Cause(str(run_id), "reconcile", EVENT_TYPE)
    outcomes: Counter[str] = Counter()
    by_rule: Counter[str] = Counter()
    changes: list[ReconcileChange] = []
    owner_ae = (
        select(connected_users.c.ae_user_id)
        .where(
            connected_users.c.tenant_id == records.c.tenant_id,
            connected_users.c.sf_user_id == records.c.sf_owner_id,
        )
        .scalar_subquery()
        .label("owner_ae_user_id")
    )
    done, last_id = 0, 0
    if on_progress:
        on_progress(0, total)
    while True:
        query = (
            select(records, owner_ae)
            .where(records.c.tenant_id == tenant_id, records.c.id > last_id)
            .order_by(records.c.id)
            .limit(CHUNK)
        )
        if not dry_run and conn.dialect.name == "postgresql":
            # The syncer locks the records it applies events to: no lost update either way.
            query = query.with_for_update(of=records)
        rows = (await conn.execute(query)).all()
        if not rows:
            break
        fixes: list[Decision] = []
        for row in rows:
            verdict = reconcile_record(
                record_from_row(row), row.owner_ae_user_id, policy=policy, run_id=run_id, now=now
            )
            if verdict.decision is None:
                outcomes[verdict.outcome] += 1
                continue
            outcomes["would_fix" if dry_run else "fixed"] += 1
            by_rule[verdict.decision.rule] += 1
            fixes.append(verdict.decision)
            if len(changes) < SHOWN_CHANGES:
                changes.append(_change(verdict.decision))
        if fixes and not dry_run:
            writer = BatchWriter(conn, now)
            for fix in fixes:
                await writer.apply_decision(tenant_id, cause, fix)
            await writer.flush()
        done += len(rows)
        last_id = rows[-1].id
        if on_progress:
            on_progress(done, total)
    fixed = outcomes["would_fix" if dry_run else "fixed"]
    keys: list[ReconcileOutcome] = [
        "agree",
        "would_fix" if dry_run else "fixed",
        "sf_owner_not_connected",
        "not_in_salesforce",
    ]
    return ReconcileReport(
        run_id=str(run_id),
        dry_run=dry_run,
        examined=done,
        outcomes={k: outcomes.get(k, 0) for k in keys},
        fixed_by_rule=dict(sorted(by_rule.items())),
        changes=changes,
        changes_truncated=fixed > len(changes),
    )


def _owners(state: RecordState | None) -> dict[str, Any]:
    return json.loads(json.dumps(state.owners())) if state is not None else {}


def _change(decision: Decision) -> ReconcileChange:
    before, after = decision.before, decision.after
    assert before is not None and before.id is not None and after is not None
    return ReconcileChange(
        record_id=before.id,
        prospect_id=before.prospect_id,
        sf_record_id=before.sf_record_id,
        rule=decision.rule,
        before=_owners(before),
        after=_owners(after),
    )
