"""Row A9: a follow-up SLA expired on a record nobody worked. Pure, `now` passed in.

The record goes to the group's next eligible member by the same round robin as A5 (weights,
caps, pauses), never the current owner, skipping members who are off or not connected; the
write is a PATCH of OwnerId with `Sforce-Auto-Assign: FALSE` and the new owner gets a fresh
clock (once SF confirms). After `max_escalations` moves the record goes to the group's fallback
(a queue or a user). When nobody is on the timer waits for the first member to come on, unless
the group says `assignWhenClosed`. AE follows when SF's outbound message comes back (S5).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from services.assigner.round_robin import pick_member, record_assignment
from services.common.domain import (
    Decision,
    Member,
    RecordState,
    Rule,
    SfOwnerReassign,
    SfRecordUpsert,
)
from services.common.sla import SlaPolicy, SlaState, SlaTimer, describe_duration


@dataclass(frozen=True)
class Expiry:
    """What an expired timer does: the timer's end state, the decision (audit + effects),
    the member picked (with updated counters) and the next timer's owner, if any."""

    state: SlaState
    decision: Decision
    assigned_member: Member | None = None
    next_owner: str | None = None  # the new member's SF user: a fresh timer waits for it
    wait_until: datetime | None = None  # state "waiting": fire again then


def sla_to_start(
    decision: Decision,
    member: Member | None,
    sf_user_of: Mapping[int, str],
    policy: SlaPolicy | None,
) -> str | None:
    """The SF owner whose confirmation starts a follow-up SLA after an A5 decision, or None:
    the group has an SLA and the decision writes the member's connected SF user as owner."""
    if policy is None or not policy.on or member is None or decision.rule != Rule.A5:
        return None
    owner = sf_user_of.get(member.ae_user_id)
    writes_owner = any(
        isinstance(e, SfRecordUpsert) and e.owner_id == owner and not e.auto_assign
        for e in decision.effects
    )
    return owner if owner is not None and writes_owner else None


def decide_expiry(
    timer: SlaTimer,
    *,
    policy: SlaPolicy,
    record: RecordState,
    members: Sequence[Member],
    sf_user_of: Mapping[int, str],
    now: datetime,
) -> Expiry:
    """Decide what an expired SLA timer does to its record (A9)."""
    owner = timer.sf_owner_id
    if record.sf_owner_id not in (None, owner):
        # SF moved it already and the notification has not reached the syncer yet.
        reason = f"SLA of {owner} ended: the SF owner is {record.sf_owner_id} now"
        return Expiry("stopped", Decision(Rule.A9, reason, record, record))
    missed = (
        f"not worked within {describe_duration(timer.seconds)}"
        f"{' of business hours' if timer.business_hours else ''} by {owner} "
        f"(AE user {timer.ae_user_id})"
    )
    sobject: Literal["Lead", "Contact"] = "Contact" if record.sf_object == "Contact" else "Lead"
    if timer.escalations >= policy.max_escalations:
        why = (
            f"{missed}; escalated {timer.escalations} times already (max {policy.max_escalations})"
        )
        return _fallback(timer, policy, record, sobject, why)
    eligible = [
        m
        for m in members
        if m.ae_user_id != timer.ae_user_id and sf_user_of.get(m.ae_user_id) not in (None, owner)
    ]
    pick = pick_member(eligible, now, when_closed=policy.assign_when_closed)
    if pick.member is None and pick.wait_until is not None:
        reason = f"{missed}; round robin in group {timer.group_id}: {pick.reason}"
        return Expiry(
            "waiting", Decision(Rule.A9, reason, record, record), wait_until=pick.wait_until
        )
    if pick.member is None:
        why = f"{missed}; round robin in group {timer.group_id}: {pick.reason}"
        return _fallback(timer, policy, record, sobject, why)
    member = record_assignment(pick.member, now)
    new_owner = sf_user_of[member.ae_user_id]
    after = record.evolve(sf_owner_id=new_owner)
    reason = (
        f"{missed}; escalation {timer.escalations + 1} of {policy.max_escalations}: round robin "
        f"in group {timer.group_id} picked {pick.reason}; SF owner = {new_owner} "
        "(Sforce-Auto-Assign: FALSE); AE follows when SF reports the change"
    )
    effect = SfOwnerReassign(sobject, new_owner)
    decision = Decision(Rule.A9, reason, record, after, (effect,))
    return Expiry("escalated", decision, member, new_owner)


def _fallback(
    timer: SlaTimer,
    policy: SlaPolicy,
    record: RecordState,
    sobject: Literal["Lead", "Contact"],
    why: str,
) -> Expiry:
    fallback = policy.fallback_owner_id
    if fallback is None or fallback == timer.sf_owner_id:
        reason = f"{why}; the group names no fallback: the record stays with {timer.sf_owner_id}"
        return Expiry("expired", Decision(Rule.A9, reason, record, record))
    after = record.evolve(sf_owner_id=fallback)
    reason = f"{why}; moved to the group's fallback {fallback} (Sforce-Auto-Assign: FALSE)"
    effect = SfOwnerReassign(sobject, fallback)
    return Expiry("fallback", Decision(Rule.A9, reason, record, after, (effect,)))
