"""What the A-rows read, loaded once for the assigner worker and for the API's decision preview,
so that the preview decides on exactly what the worker would."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from services.assigner.decide import AssignerDecision, decide_ae_event
from services.common.db import sla_store, store
from services.common.domain import Member, RecordState, TenantPolicy
from services.common.messages import AeProspect, AeProspectEvent, AssignToGroup, AssignToUser
from services.common.sla import SlaPolicy


@dataclass(frozen=True)
class Merge:
    """Two stored records an event showed to be one: the prospect's, and the SF record's."""

    prospect_id: int
    by_prospect: RecordState
    by_sf_record: RecordState


@dataclass
class AssignerState:
    """One tenant's state for a batch of its AE events; the batch's decisions update it."""

    policy: TenantPolicy
    records: dict[int, RecordState]  # by prospect id
    group_members: dict[int, list[Member]]  # by group id, for the groups the actions name
    sf_user_of: dict[int, str]  # connected AE user -> SF user, for every user in play
    queues: set[str]
    # Records to merge before deciding (the worker writes them; the preview only looks).
    merges: list[Merge] = field(default_factory=list)
    slas: dict[int, SlaPolicy] = field(default_factory=dict)  # by group id: SLA, when closed

    def decide(
        self, event: AeProspectEvent, *, already_processed: bool, now: datetime
    ) -> AssignerDecision:
        group = _group_of(event)
        return decide_ae_event(
            event,
            policy=self.policy,
            record=self.records.get(event.payload.prospect.id),
            sf_user_of=self.sf_user_of,
            group_members=self.group_members.get(group) if group is not None else None,
            known_queues=self.queues,
            already_processed=already_processed,
            now=now,
            assign_when_closed=self.slas[group].assign_when_closed
            if group is not None and group in self.slas
            else True,
        )

    def applied(
        self, event: AeProspectEvent, stored: RecordState | None, chosen: Member | None
    ) -> None:
        """What the next event of the batch must see: the stored record, the member's counters."""
        if stored is not None:
            self.records[event.payload.prospect.id] = stored
        group = _group_of(event)
        if chosen is not None and group is not None:
            self.group_members[group] = [
                chosen if m.ae_user_id == chosen.ae_user_id else m
                for m in self.group_members[group]
            ]


async def load_assigner_state(
    conn: AsyncConnection, policy: TenantPolicy, events: Sequence[AeProspectEvent]
) -> AssignerState:
    """The records and group members the events touch are locked until the transaction ends.

    A prospect's record is found by its prospect id or by its SF record id (a record ownersync
    created learns its other id only when the relay hears back): when each id finds another
    record, the two are one, to be merged (`merges`); the records show them merged already."""
    tenant_id = policy.tenant_id
    prospects = [e.payload.prospect for e in events]
    found = await store.records_by_any_id(
        conn,
        tenant_id,
        prospect_ids=(p.id for p in prospects),
        sf_record_ids=(p.salesforce_id for p in prospects if p.salesforce_id),
    )
    records, merges = _link(prospects, found)
    groups = {g for g in map(_group_of, events) if g is not None}
    members = await store.group_members_of(conn, tenant_id, groups)
    users = {p.assigned_user_id for p in prospects}
    users |= {r.ae_assigned_user_id for r in records.values()}
    users |= {m.ae_user_id for ms in members.values() for m in ms}
    users |= {
        e.payload.action.user_id for e in events if isinstance(e.payload.action, AssignToUser)
    }
    sf_user_of = await store.sf_users_connected_to(
        conn, tenant_id, {u for u in users if u is not None}
    )
    queues = await store.tenant_queue_ids(conn, tenant_id)
    slas = await sla_store.group_policies(conn, tenant_id, groups)
    return AssignerState(policy, records, members, sf_user_of, queues, merges, slas)


def _link(
    prospects: Sequence[AeProspect], found: Sequence[RecordState]
) -> tuple[dict[int, RecordState], list[Merge]]:
    """Each prospect's record (by prospect id, else by SF record id) and the merges needed."""
    by_prospect = {r.prospect_id: r for r in found if r.prospect_id is not None}
    by_sf = {r.sf_record_id: r for r in found if r.sf_record_id is not None}
    linked: dict[int, RecordState] = {}
    merges: list[Merge] = []
    for prospect in prospects:
        if prospect.id in linked:
            continue
        mine = by_prospect.get(prospect.id)
        sf = by_sf.get(prospect.salesforce_id) if prospect.salesforce_id else None
        if sf is not None and sf.prospect_id not in (None, prospect.id):
            sf = None  # the SF record is another prospect's: not this one's to take
        if mine is not None and sf is not None and mine.id != sf.id:
            if store.can_merge(mine, sf):
                merges.append(Merge(prospect.id, mine, sf))
                keep, gone = (mine, sf) if (mine.id or 0) < (sf.id or 0) else (sf, mine)
                linked[prospect.id] = store.merged_state(keep, gone)
            else:
                linked[prospect.id] = mine
        elif (either := mine if mine is not None else sf) is not None:
            linked[prospect.id] = either
    return linked, merges


def _group_of(event: AeProspectEvent) -> int | None:
    action = event.payload.action
    return action.group_id if isinstance(action, AssignToGroup) else None
