"""What the A-rows read, loaded once for the assigner worker and for the API's decision preview,
so that the preview decides on exactly what the worker would."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from services.assigner.decide import AssignerDecision, decide_ae_event
from services.common.db import store
from services.common.domain import Member, RecordState, TenantPolicy
from services.common.messages import AeProspectEvent, AssignToGroup, AssignToUser


@dataclass
class AssignerState:
    """One tenant's state for a batch of its AE events; the batch's decisions update it."""

    policy: TenantPolicy
    records: dict[int, RecordState]  # by prospect id
    group_members: dict[int, list[Member]]  # by group id, for the groups the actions name
    sf_user_of: dict[int, str]  # connected AE user -> SF user, for every user in play
    queues: set[str]

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
    """The records and group members the events touch are locked until the transaction ends."""
    tenant_id = policy.tenant_id
    prospects = [e.payload.prospect for e in events]
    records = await store.records_by(conn, tenant_id, "prospect_id", (p.id for p in prospects))
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
    return AssignerState(policy, records, members, sf_user_of, queues)


def _group_of(event: AeProspectEvent) -> int | None:
    action = event.payload.action
    return action.group_id if isinstance(action, AssignToGroup) else None
