"""AE side, rows A1 to A8 of the decision table: AE prospect events -> SF/AE owner decisions.

Pure functions: the caller loads the state and applies the returned decision. Two rule names
are not in the table:
- A0: the prospect is recorded and nothing needs syncing (created unassigned and waiting
  for an assignment action, created already linked to a SF record, an AE reassignment that
  names no user, or AE echoing the assignee ownersync already holds).
- DUP: the webhook id was already processed; like S8 there is no effect and no audit row.
- STALE: the event is older (occurredAt) than the newest AE event applied to the record: ignored
  as stale, audited, like S7 for SF's SystemModstamp. Every other decision that keeps a
  record stamps it with the event's occurredAt (`ae_modstamp`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

from services.assigner.round_robin import pick_member, record_assignment
from services.common.domain import (
    AeProspectUpsert,
    Decision,
    Effect,
    Member,
    RecordState,
    Rule,
    SfRecordUpsert,
    TenantPolicy,
    describe_ae_owner,
)
from services.common.messages import (
    AE_PROSPECT_CREATED,
    AE_PROSPECT_REASSIGNED,
    AeProspect,
    AeProspectEvent,
    AssignToGroup,
    AssignToQueue,
    AssignToUser,
    AssignViaActiveRule,
)

SfObject = Literal["Lead", "Contact"]


@dataclass(frozen=True)
class AssignerDecision:
    decision: Decision
    assigned_member: Member | None = None  # the round-robin member with updated counters (A5)
    wait_until: datetime | None = None  # A5 with nobody on: decide the action again then


def decide_ae_event(
    event: AeProspectEvent,
    *,
    policy: TenantPolicy,
    record: RecordState | None,
    sf_user_of: Mapping[int, str],
    group_members: Sequence[Member] | None,
    known_queues: set[str],
    already_processed: bool,
    now: datetime,
    assign_when_closed: bool = True,
) -> AssignerDecision:
    """Decide what an AE prospect event does to the owners in AE and SF.

    `record` is the stored record of the prospect (None when unknown), `sf_user_of` maps a
    connected AE user to its SF user (M), `group_members` are the members of the group an
    assign_to_group action names (None when that group is unknown); with `assign_when_closed`
    False and none of them on, the assignment waits (`wait_until`).
    """
    if already_processed:
        return AssignerDecision(
            Decision(
                Rule.DUP,
                f"webhook {event.source_id} already processed",
                record,
                record,
                audited=False,
            )
        )
    occurred = event.payload.occurred_at
    if record is not None and record.ae_modstamp is not None and occurred < record.ae_modstamp:
        reason = (
            f"stale: occurredAt {occurred.isoformat()} is older than the applied "
            f"{record.ae_modstamp.isoformat()}"
        )
        return AssignerDecision(Decision(Rule.STALE, reason, record, record))
    result = _decide(
        event, policy, record, sf_user_of, group_members, known_queues, now, assign_when_closed
    )
    after = result.decision.after
    if after is None:
        return result
    newest = occurred if after.ae_modstamp is None else max(after.ae_modstamp, occurred)
    decision = replace(result.decision, after=after.evolve(ae_modstamp=newest))
    return replace(result, decision=decision)


def _decide(
    event: AeProspectEvent,
    policy: TenantPolicy,
    record: RecordState | None,
    sf_user_of: Mapping[int, str],
    group_members: Sequence[Member] | None,
    known_queues: set[str],
    now: datetime,
    assign_when_closed: bool,
) -> AssignerDecision:
    webhook = event.payload
    if event.type == AE_PROSPECT_REASSIGNED:
        return AssignerDecision(_reassigned(webhook.prospect, record, policy, sf_user_of))
    known = _known_state(webhook.prospect, record)
    action = webhook.action
    if action is None:
        if event.type == AE_PROSPECT_CREATED:
            return AssignerDecision(_created(known, record, policy, sf_user_of))
        return AssignerDecision(
            Decision(Rule.A0, "assignment requested without an action", record, known, refused=True)
        )
    match action:
        case AssignToUser(user_id=user):
            if known.ae_assigned:
                return AssignerDecision(_already_assigned(Rule.A3, known, record))
            lead = f"assign to user: AE assignee = user {user}"
            return AssignerDecision(
                _assign_user(known, record, user, Rule.A4, lead, policy, sf_user_of)
            )
        case AssignToGroup(group_id=group):
            return _assign_group(
                group, known, record, policy, sf_user_of, group_members, now, assign_when_closed
            )
        case AssignToQueue(queue_id=queue):
            return AssignerDecision(_assign_queue(queue, known, record, policy, known_queues))
        case AssignViaActiveRule():
            return AssignerDecision(_assign_via_active_rule(known, record, policy))
    raise AssertionError(f"unhandled assignment action {action!r}")


def _known_state(prospect: AeProspect, record: RecordState | None) -> RecordState:
    """The stored record completed with what the event says about the AE prospect."""
    known = _identified(prospect, record)
    if known.ae_assigned:
        return known
    return known.evolve(
        ae_assigned_user_id=prospect.assigned_user_id,
        ae_assigned_queue_id=prospect.assigned_queue_id,
    )


def _identified(prospect: AeProspect, record: RecordState | None) -> RecordState:
    base = record or RecordState()
    return base.evolve(
        prospect_id=prospect.id,
        email=prospect.email or base.email,
        sf_record_id=base.sf_record_id or prospect.salesforce_id,
    )


def _created(
    known: RecordState,
    record: RecordState | None,
    policy: TenantPolicy,
    sf_user_of: Mapping[int, str],
) -> Decision:
    if not known.ae_assigned:
        reason = "created unassigned; waiting for an assignment action"
        return Decision(Rule.A0, reason, record, known)
    if _has_sf_record(known):
        reason = (
            f"created already linked to SF record {known.sf_record_id or '(being created)'}: "
            "nothing to create"
        )
        return Decision(Rule.A0, reason, record, known)
    rule, reason, after, upsert = _create_sf_record(known, policy, sf_user_of)
    return Decision(rule, reason, record, after, (upsert,))


def _assign_group(
    group: int,
    known: RecordState,
    record: RecordState | None,
    policy: TenantPolicy,
    sf_user_of: Mapping[int, str],
    group_members: Sequence[Member] | None,
    now: datetime,
    assign_when_closed: bool = True,
) -> AssignerDecision:
    # A misconfigured action is refused whatever the prospect's state, so it gets noticed.
    if group_members is None:
        return AssignerDecision(
            Decision(Rule.A5, f"unknown group {group}", record, known, refused=True)
        )
    if known.ae_assigned:
        return AssignerDecision(_already_assigned(Rule.A3, known, record))
    pick = pick_member(group_members, now, when_closed=assign_when_closed)
    if pick.member is None and pick.wait_until is not None:
        reason = (
            f"round robin in group {group}: {pick.reason}; the assignment waits until then "
            "(the group does not assign when closed)"
        )
        return AssignerDecision(
            Decision(Rule.A5, reason, record, known), wait_until=pick.wait_until
        )
    if pick.member is None:
        reason = f"round robin in group {group}: {pick.reason}; the prospect stays unassigned"
        return AssignerDecision(Decision(Rule.A5, reason, record, known))
    member = record_assignment(pick.member, now)
    lead = (
        f"round robin in group {group} picked {pick.reason}; AE assignee = user {member.ae_user_id}"
    )
    decision = _assign_user(known, record, member.ae_user_id, Rule.A5, lead, policy, sf_user_of)
    return AssignerDecision(decision, member)


def _assign_user(
    known: RecordState,
    record: RecordState | None,
    user: int,
    rule: Rule,
    lead: str,
    policy: TenantPolicy,
    sf_user_of: Mapping[int, str],
    *,
    ae_already_set: bool = False,
) -> Decision:
    """A4 from "AE assignee = user" on: `lead` says how the user was chosen."""
    assigned = known.evolve(ae_assigned_user_id=user, ae_assigned_queue_id=None)
    ae_effects: tuple[Effect, ...] = () if ae_already_set else (AeProspectUpsert.of(assigned),)
    if not _has_sf_record(assigned):
        then, why, after, upsert = _create_sf_record(assigned, policy, sf_user_of)
        return Decision(rule, f"{lead}; then {then}: {why}", record, after, (*ae_effects, upsert))
    sf_user = sf_user_of.get(user)
    if sf_user is None:
        reason = (
            f"{lead}; user {user} is not connected: the SF record keeps its owner "
            f"{assigned.sf_owner_id or '(not known yet)'} (owners differ until that user is "
            "connected)"
        )
        return Decision(rule, reason, record, assigned, ae_effects)
    after = assigned.evolve(sf_owner_id=sf_user)
    owner = SfRecordUpsert(_sobject(after, policy), sf_user, auto_assign=False, email=after.email)
    reason = f"{lead}; SF owner = {sf_user}, connected to user {user}"
    return Decision(rule, reason, record, after, (*ae_effects, owner))


def _create_sf_record(
    state: RecordState, policy: TenantPolicy, sf_user_of: Mapping[int, str]
) -> tuple[Rule, str, RecordState, SfRecordUpsert]:
    """A1/A2 for an AE-assigned prospect with no SF record: (rule, reason, after, effect)."""
    sobject: SfObject = "Contact" if policy.sync_mode == "contacts" else "Lead"
    user, queue = state.ae_assigned_user_id, state.ae_assigned_queue_id
    connector = policy.connector_user_id
    if user is not None and user in sf_user_of:
        owner, rule = sf_user_of[user], Rule.A1
        reason = f"new SF {sobject} owned by {owner}, connected to AE user {user}"
    elif user is None and queue is not None and sobject == "Lead":
        owner, rule = queue, Rule.A1
        reason = f"new SF Lead owned by the queue {queue}"
    elif user is not None:
        owner, rule = connector, Rule.A2
        reason = (
            f"AE user {user} is not connected: new SF {sobject} owned by the connector user "
            f"{connector} (the default assignment); AE keeps user {user}, so the owners differ "
            "until that user is connected"
        )
    else:
        owner, rule = connector, Rule.A2
        reason = (
            f"queues hold leads only: new SF Contact owned by the connector user {connector}; "
            f"AE keeps the queue {queue}"
        )
    after = state.evolve(sf_object=sobject, sf_owner_id=owner)
    return rule, reason, after, SfRecordUpsert(sobject, owner, auto_assign=False, email=state.email)


def _assign_queue(
    queue: str,
    known: RecordState,
    record: RecordState | None,
    policy: TenantPolicy,
    known_queues: set[str],
) -> Decision:
    refusal = _lead_action_refusal(policy, known, "queues hold leads only")
    if refusal is None and queue not in known_queues:
        refusal = f"unknown queue {queue}"
    if refusal is not None:
        return Decision(Rule.A6, f"assign to queue refused: {refusal}", record, known, refused=True)
    if known.ae_assigned:
        return _already_assigned(Rule.A6, known, record)
    after = known.evolve(
        ae_assigned_user_id=None, ae_assigned_queue_id=queue, sf_object="Lead", sf_owner_id=queue
    )
    reason = f"assign to queue: AE assignee = the queue {queue}; SF Lead owner = {queue}"
    lead = SfRecordUpsert("Lead", queue, auto_assign=False, email=after.email)
    return Decision(Rule.A6, reason, record, after, (AeProspectUpsert.of(after), lead))


def _assign_via_active_rule(
    known: RecordState, record: RecordState | None, policy: TenantPolicy
) -> Decision:
    refusal = _lead_action_refusal(policy, known, "the active assignment rule assigns leads only")
    if refusal is not None:
        reason = f"assign via active rule refused: {refusal}"
        return Decision(Rule.A7, reason, record, known, refused=True)
    if known.ae_assigned:
        return _already_assigned(Rule.A7, known, record)
    # The AE owner stays as it is: the owner SF's rule picks comes back through the syncer.
    after = known.evolve(sf_object="Lead")
    reason = "pushed to SF with no owner and Sforce-Auto-Assign: TRUE; the active rule picks it"
    push = SfRecordUpsert("Lead", None, auto_assign=True, email=after.email)
    return Decision(Rule.A7, reason, record, after, (push,))


def _reassigned(
    prospect: AeProspect,
    record: RecordState | None,
    policy: TenantPolicy,
    sf_user_of: Mapping[int, str],
) -> Decision:
    # The event shows AE after the change: the owner before it comes from the record, or from
    # the event when the prospect is new to ownersync.
    before = _identified(prospect, record) if record is not None else _known_state(prospect, None)
    new_user, new_queue = prospect.assigned_user_id, prospect.assigned_queue_id
    if record is not None and (new_user, new_queue) == (
        record.ae_assigned_user_id,
        record.ae_assigned_queue_id,
    ):
        # Usually AE echoing an assignee ownersync itself just wrote.
        reason = f"AE reports {_describe_ae_owner(record)}, as already stored: nothing to do"
        return Decision(Rule.A0, reason, record, before)
    if before.ae_assigned and _owned_in_sf(before):
        reason = (
            f"AE reassignment to {describe_ae_owner(new_user, new_queue)} refused: the "
            f"record is assigned in both systems (AE: {_describe_ae_owner(before)}, SF owner: "
            f"{before.sf_owner_id or 'set'}); the reassignment must be made in Salesforce"
        )
        return Decision(Rule.A8, reason, record, before, refused=True)
    if new_user is None:
        after = before.evolve(ae_assigned_user_id=None, ae_assigned_queue_id=new_queue)
        reason = (
            f"AE reassigned the prospect to {describe_ae_owner(new_user, new_queue)}, "
            "not a user: stored, nothing to sync to SF"
        )
        return Decision(Rule.A0, reason, record, after)
    lead = (
        f"reassigned in AE to user {new_user} before the record was assigned in both systems "
        "(AE already holds the new assignee)"
    )
    return _assign_user(
        before, record, new_user, Rule.A4, lead, policy, sf_user_of, ae_already_set=True
    )


def _already_assigned(rule: Rule, known: RecordState, record: RecordState | None) -> Decision:
    reason = (
        f"doesn't reassign prospects who already have an owner: the prospect is assigned to "
        f"{_describe_ae_owner(known)}"
    )
    return Decision(rule, reason, record, known)


def _lead_action_refusal(policy: TenantPolicy, known: RecordState, leads_only: str) -> str | None:
    """Why a queue / active-rule action cannot run for this tenant and record, if it can't."""
    if not policy.connector_verified:
        return "the connector is not verified"
    if policy.sync_mode != "leads":
        return f"{leads_only}; the connector is in contacts (reverse-sync) mode"
    if known.sf_object == "Contact":
        return f"{leads_only}; the SF record {known.sf_record_id} is a Contact"
    return None


def _has_sf_record(state: RecordState) -> bool:
    # A record ownersync already asked for counts: its create is waiting in the outbox.
    return state.sf_record_id is not None or state.sf_object is not None


def _owned_in_sf(state: RecordState) -> bool:
    # Every SF lead/contact has an owner; an A7 push without one has none until SF's rule runs.
    return state.sf_record_id is not None or state.sf_owner_id is not None


def _sobject(state: RecordState, policy: TenantPolicy) -> SfObject:
    # The record keeps the kind it was created as, even if the sync mode changed since.
    kind = state.sf_object or ("Contact" if policy.sync_mode == "contacts" else "Lead")
    return "Contact" if kind == "Contact" else "Lead"


def _describe_ae_owner(state: RecordState) -> str:
    return describe_ae_owner(state.ae_assigned_user_id, state.ae_assigned_queue_id)
