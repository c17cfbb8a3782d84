"""Follow-up SLAs, rule by rule: when the clock stops (met, stopped) and what expiry does (A9)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from services.assigner.sla import Expiry, decide_expiry
from services.common.domain import Member, RecordState, SfOwnerReassign
from services.common.hours import WorkingHours
from services.common.sla import (
    DEFAULT_UNTOUCHED_STATUSES,
    SfUpdate,
    SlaPolicy,
    SlaTimer,
    describe_duration,
    due_time,
    on_sf_update,
)

NOW = datetime(2026, 11, 3, 16, 0, tzinfo=UTC)  # a Tuesday
ANN, BEN, CY = "0055g0000Zti3ElAQI", "0055g0000Zti3EmAQI", "0055g0000Zti3EnAQI"
QUEUE = "00G5g0000QQQdLAEQ1"
SF_USER_OF = {1: ANN, 2: BEN, 3: CY}
LEAD = RecordState(id=7, prospect_id=9001, sf_record_id="00Q5g0000ZWHszxEQD", sf_object="Lead")
UNTOUCHED = DEFAULT_UNTOUCHED_STATUSES


def timer(escalations: int = 0, owner: str = ANN, user: int = 1, **kw: object) -> SlaTimer:
    fields: dict[str, object] = {
        "id": 1,
        "tenant_id": "acme",
        "record_id": 7,
        "group_id": 10,
        "ae_user_id": user,
        "sf_owner_id": owner,
        "state": "running",
        "escalations": escalations,
        "seconds": 7200,
        "business_hours": False,
        "started_at": NOW - timedelta(hours=2),
        "due_at": NOW,
    }
    return SlaTimer(**{**fields, **kw})  # type: ignore[arg-type]


def members(*hours: WorkingHours | None, **kw: object) -> list[Member]:
    return [
        Member(ae_user_id=i, created_order=i, hours=h, **kw)  # type: ignore[arg-type]
        for i, h in enumerate(hours or (None, None, None), 1)
    ]


def expire(
    t: SlaTimer,
    policy: SlaPolicy | None = None,
    ms: list[Member] | None = None,
    record: RecordState | None = None,
) -> Expiry:
    return decide_expiry(
        t,
        policy=policy or SlaPolicy(seconds=7200),
        record=record or LEAD.evolve(sf_owner_id=t.sf_owner_id),
        members=members() if ms is None else ms,
        sf_user_of=SF_USER_OF,
        now=NOW,
    )


# When the clock stops


def test_sla_is_met_when_status_leaves_the_untouched_statuses() -> None:
    ended = on_sf_update(timer(), SfUpdate(ANN, status="Working - Contacted"), UNTOUCHED)
    assert ended is not None and ended.state == "met" and "Working - Contacted" in ended.reason


def test_sla_is_met_when_last_activity_date_is_set() -> None:
    ended = on_sf_update(timer(), SfUpdate(ANN, last_activity_date=date(2026, 11, 3)), UNTOUCHED)
    assert ended is not None and ended.state == "met"


def test_sla_keeps_running_while_status_is_untouched_and_no_activity() -> None:
    assert on_sf_update(timer(), SfUpdate(ANN, status="Open - Not Contacted"), UNTOUCHED) is None
    assert on_sf_update(timer(), SfUpdate(ANN), UNTOUCHED) is None


def test_untouched_statuses_are_the_tenants() -> None:
    update = SfUpdate(ANN, status="New")
    assert on_sf_update(timer(), update, ["New"]) is None
    ended = on_sf_update(timer(), update, UNTOUCHED)
    assert ended is not None and ended.state == "met"


def test_owner_changed_by_anyone_else_stops_the_sla() -> None:
    ended = on_sf_update(timer(), SfUpdate(BEN, status="Working - Contacted"), UNTOUCHED)
    assert ended is not None and ended.state == "stopped"


def test_a_late_notification_of_ownersyncs_own_earlier_move_does_not_stop_the_new_clock() -> None:
    started = timer(owner=BEN, user=2)
    assert started.started_at is not None
    earlier = SfUpdate(ANN, modstamp=started.started_at - timedelta(seconds=5))
    assert on_sf_update(started, earlier, UNTOUCHED) is None
    later = SfUpdate(ANN, modstamp=started.started_at + timedelta(seconds=5))
    ended = on_sf_update(started, later, UNTOUCHED)
    assert ended is not None and ended.state == "stopped"


def test_an_owner_change_before_sf_confirmed_the_owner_does_not_stop_the_pending_clock() -> None:
    pending = timer(state="pending", started_at=None, due_at=None)
    assert on_sf_update(pending, SfUpdate(BEN, modstamp=NOW), UNTOUCHED) is None


def test_an_ended_timer_ignores_later_updates() -> None:
    done = timer(state="met")
    assert on_sf_update(done, SfUpdate(BEN, status="Closed"), UNTOUCHED) is None


def test_pending_timer_is_met_too_when_worked_before_sf_confirms() -> None:
    ended = on_sf_update(timer(state="pending"), SfUpdate(ANN, status="Working"), UNTOUCHED)
    assert ended is not None and ended.state == "met"


def test_due_time_is_wall_clock_or_the_owners_business_hours() -> None:
    start = datetime(2026, 11, 6, 21, 0, tzinfo=UTC)  # Friday 16:00 in New York
    hours = WorkingHours.parse("America/New_York", {"mon": "09:00-17:00", "fri": "09:00-17:00"})
    assert due_time(start, 7200, False, hours) == start + timedelta(hours=2)
    assert due_time(start, 7200, True, hours) == datetime(2026, 11, 9, 15, 0, tzinfo=UTC)
    assert due_time(start, 7200, True, None) == start + timedelta(hours=2)


def test_sla_durations_read_in_hours_minutes_or_seconds() -> None:
    assert [describe_duration(s) for s in (7200, 5400, 45)] == ["2 h", "90 min", "45 s"]


# A9: expiry


def test_a9_unworked_lead_goes_to_the_next_member_by_round_robin_never_the_owner() -> None:
    result = expire(timer(), ms=members(None, None, None))

    assert result.state == "escalated"
    assert result.assigned_member is not None and result.assigned_member.ae_user_id == 2
    assert result.next_owner == BEN
    assert result.decision.rule == "A9"
    assert result.decision.effects == (SfOwnerReassign("Lead", BEN),)
    assert result.decision.after is not None and result.decision.after.sf_owner_id == BEN
    assert result.decision.reason.startswith(f"not worked within 2 h by {ANN}")


def test_a9_round_robin_keeps_weights_caps_and_pauses() -> None:
    ms = [
        Member(ae_user_id=1, created_order=1),
        Member(ae_user_id=2, created_order=2, paused=True),
        Member(ae_user_id=3, created_order=3),
    ]
    assert expire(timer(), ms=ms).next_owner == CY
    capped = [ms[0], Member(ae_user_id=2, created_order=2), ms[2]]
    capped[1] = Member(
        ae_user_id=2, created_order=2, daily_cap=1, assigned_today=1, last_assigned_at=NOW
    )
    assert expire(timer(), ms=capped).next_owner == CY


def test_a9_skips_members_who_are_off() -> None:
    night = WorkingHours.parse("UTC", {"tue": "00:00-06:00"})
    assert expire(timer(), ms=members(None, night, None)).next_owner == CY


def test_a9_waits_for_the_first_member_to_come_on_when_nobody_is_on() -> None:
    later = WorkingHours.parse("UTC", {"tue": "18:00-20:00"})
    later2 = WorkingHours.parse("UTC", {"wed": "09:00-10:00"})
    result = expire(timer(), ms=members(None, later, later2))

    assert result.state == "waiting" and result.decision.effects == ()
    assert result.wait_until == datetime(2026, 11, 3, 18, 0, tzinfo=UTC)


def test_a9_assigns_anyway_when_closed_if_the_group_says_so() -> None:
    later = WorkingHours.parse("UTC", {"tue": "18:00-20:00"})
    policy = SlaPolicy(seconds=7200, assign_when_closed=True)
    result = expire(timer(), policy, ms=members(None, later, later))

    assert result.state == "escalated" and result.next_owner == BEN


def test_a9_after_max_escalations_goes_to_the_fallback_queue() -> None:
    policy = SlaPolicy(seconds=7200, max_escalations=2, fallback_owner_id=QUEUE)
    result = expire(timer(escalations=2, owner=CY, user=3), policy)

    assert result.state == "fallback" and result.next_owner is None
    assert result.decision.effects == (SfOwnerReassign("Lead", QUEUE),)
    assert "fallback" in result.decision.reason


def test_a9_before_max_escalations_still_escalates() -> None:
    policy = SlaPolicy(seconds=7200, max_escalations=2, fallback_owner_id=QUEUE)
    assert expire(timer(escalations=1), policy).state == "escalated"


def test_a9_without_a_fallback_the_record_stays_and_the_sla_is_expired() -> None:
    result = expire(timer(escalations=2), SlaPolicy(seconds=7200))
    assert result.state == "expired" and result.decision.effects == ()


def test_a9_with_no_other_member_goes_to_the_fallback() -> None:
    policy = SlaPolicy(seconds=7200, fallback_owner_id=QUEUE)
    result = expire(timer(), policy, ms=[Member(ae_user_id=1, created_order=1)])
    assert result.state == "fallback"


def test_a9_skips_members_not_connected_to_a_sf_user() -> None:
    ms = [*members(None, None), Member(ae_user_id=4, created_order=0)]
    assert expire(timer(), ms=ms).next_owner == BEN


def test_a9_does_nothing_when_sf_moved_the_record_already() -> None:
    result = expire(timer(), record=LEAD.evolve(sf_owner_id=CY))
    assert result.state == "stopped" and result.decision.effects == ()


def test_a9_moves_a_contact_as_a_contact() -> None:
    contact = LEAD.evolve(sf_object="Contact", sf_owner_id=ANN)
    assert expire(timer(), record=contact).decision.effects == (SfOwnerReassign("Contact", BEN),)
