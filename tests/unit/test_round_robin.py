"""Who gets the next prospect of a round-robin group (row A5)."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from services.assigner.round_robin import pick_member, record_assignment
from services.common.domain import Member
from services.common.hours import WorkingHours

NOW = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


def ago(minutes: int) -> datetime:
    return NOW - timedelta(minutes=minutes)


def picked(members: list[Member]) -> int | None:
    member = pick_member(members, NOW).member
    return member.ae_user_id if member else None


def run(members: list[Member], picks: int, start: datetime = NOW) -> tuple[list[Member], list[int]]:
    """`picks` assignments a second apart, the way the assigner stores the counters back."""
    order = []
    for step in range(picks):
        now = start + timedelta(seconds=step)
        chosen = pick_member(members, now).member
        if chosen is None:
            break
        order.append(chosen.ae_user_id)
        members = [record_assignment(m, now) if m == chosen else m for m in members]
    return members, order


def test_member_with_the_least_recent_assignment_is_picked() -> None:
    members = [
        Member(1, created_order=1, last_assigned_at=ago(5)),
        Member(2, created_order=2, last_assigned_at=ago(50)),
        Member(3, created_order=3, last_assigned_at=ago(20)),
    ]

    assert picked(members) == 2


def test_never_assigned_member_counts_as_least_recent() -> None:
    members = [
        Member(1, created_order=1, last_assigned_at=ago(500)),
        Member(2, created_order=2),
    ]

    assert picked(members) == 2


def test_tie_goes_to_the_earliest_created_user() -> None:
    members = [
        Member(1, created_order=3, last_assigned_at=ago(5)),
        Member(2, created_order=2, last_assigned_at=ago(5)),
        Member(3, created_order=9, last_assigned_at=ago(5)),
    ]

    assert picked(members) == 2


def test_paused_and_inactive_members_are_skipped() -> None:
    members = [
        Member(1, created_order=1, paused=True),
        Member(2, created_order=2, active=False),
        Member(3, created_order=3, last_assigned_at=ago(1)),
    ]

    assert picked(members) == 3


def test_member_at_their_daily_cap_is_skipped() -> None:
    members = [
        Member(1, created_order=1, daily_cap=2, assigned_today=2, last_assigned_at=ago(60)),
        Member(2, created_order=2, daily_cap=2, assigned_today=1, last_assigned_at=ago(1)),
    ]

    assert picked(members) == 2


def test_everyone_capped_picks_nobody_and_says_why() -> None:
    members = [
        Member(1, created_order=1, daily_cap=1, assigned_today=1, last_assigned_at=ago(60)),
        Member(2, created_order=2, daily_cap=0),
        Member(3, created_order=3, paused=True),
    ]

    pick = pick_member(members, NOW)

    assert pick.member is None
    assert pick.reason == "every member is paused, inactive or at their daily cap"


def test_empty_group_picks_nobody_and_says_why() -> None:
    assert pick_member([], NOW).reason == "the group has no members"


def test_yesterdays_count_does_not_cap_today() -> None:
    yesterday = NOW - timedelta(days=1)
    member = Member(1, created_order=1, daily_cap=3, assigned_today=3, last_assigned_at=yesterday)

    assert picked([member]) == 1
    assert record_assignment(member, NOW).assigned_today == 1


def test_recording_an_assignment_updates_the_counters() -> None:
    member = Member(1, created_order=1, assigned_today=2, assigned_total=7, last_assigned_at=ago(3))

    assert record_assignment(member, NOW) == replace(
        member, assigned_today=3, assigned_total=8, last_assigned_at=NOW
    )


def test_equal_weights_rotate_in_least_recent_order() -> None:
    members = [Member(user, created_order=user) for user in (3, 1, 2)]

    _, order = run(members, 7)

    assert order == [1, 2, 3, 1, 2, 3, 1]


def test_equal_weights_keep_least_recent_order_after_a_member_returns_from_a_pause() -> None:
    # Bob missed a morning of assignments; he rejoins the rotation instead of catching up.
    members = [
        Member(1, created_order=1, assigned_total=10, last_assigned_at=ago(2)),
        Member(2, created_order=2, assigned_total=2, last_assigned_at=ago(300)),
        Member(3, created_order=3, assigned_total=10, last_assigned_at=ago(1)),
    ]

    _, order = run(members, 4)

    assert order == [2, 1, 3, 2]


def test_heavier_member_gets_its_weighted_share() -> None:
    members = [Member(1, created_order=1, weight=2), Member(2, created_order=2, weight=1)]

    _, order = run(members, 30)

    assert Counter(order) == {1: 20, 2: 10}


member_settings = st.tuples(
    st.integers(min_value=1, max_value=5),  # weight
    st.none() | st.integers(min_value=0, max_value=15),  # daily cap
    st.booleans(),  # paused
)


@given(configs=st.lists(member_settings, min_size=1, max_size=8), picks=st.integers(0, 80))
def test_shares_follow_weights_caps_hold_and_paused_members_get_nothing(
    configs: list[tuple[int, int | None, bool]], picks: int
) -> None:
    members = [
        Member(user, created_order=user, weight=weight, daily_cap=cap, paused=paused)
        for user, (weight, cap, paused) in enumerate(configs, start=1)
    ]
    # Midnight start: every pick falls on the same UTC day, so the caps really are daily caps.
    start = NOW.replace(hour=0, minute=0)
    counts: Counter[int] = Counter()
    caps_bound = False
    for step in range(picks):
        now = start + timedelta(seconds=step)
        caps_bound = caps_bound or any(
            m.daily_cap is not None and m.assigned_today >= m.daily_cap
            for m in members
            if not m.paused
        )
        chosen = pick_member(members, now).member
        if chosen is None:
            break
        counts[chosen.ae_user_id] += 1
        members = [record_assignment(m, now) if m == chosen else m for m in members]

    for member in members:
        assert counts[member.ae_user_id] == member.assigned_today
        if member.paused:
            assert counts[member.ae_user_id] == 0
        if member.daily_cap is not None:
            assert counts[member.ae_user_id] <= member.daily_cap
    if not caps_bound:
        working = [m for m in members if not m.paused]
        total_weight = sum(m.weight for m in working)
        made = sum(counts.values())
        for member in working:
            share = Fraction(made * member.weight, total_weight)
            assert abs(counts[member.ae_user_id] - share) < 1, (member, share)


def test_naive_and_aware_assignment_times_compare_as_utc() -> None:
    members = [
        Member(1, created_order=1, last_assigned_at=ago(5)),
        Member(2, created_order=2, last_assigned_at=ago(50).replace(tzinfo=None)),
    ]

    assert picked(members) == 2


def test_round_robin_skips_members_who_are_off_when_the_assignment_is_made() -> None:
    # NOW is Monday 09:30 UTC: 04:30 in New York, before that member's day starts.
    new_york = WorkingHours.parse("America/New_York", {"mon": "09:00-17:00"})
    members = [
        Member(ae_user_id=1, created_order=0, hours=new_york),
        Member(ae_user_id=2, created_order=1, last_assigned_at=ago(1)),
    ]
    assert picked(members) == 2


def test_round_robin_when_nobody_is_on_assigns_anyway_or_names_the_first_on_time() -> None:
    later = WorkingHours.parse("UTC", {"mon": "12:00-13:00"})
    members = [Member(ae_user_id=1, created_order=0, hours=later)]

    anyway = pick_member(members, NOW)
    assert anyway.member is not None and "nobody is on" in anyway.reason
    waits = pick_member(members, NOW, when_closed=False)
    assert waits.member is None and waits.wait_until == NOW.replace(hour=12, minute=0)
