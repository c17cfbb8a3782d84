"""Round robin over the members of an AE assignment group (row A5): who gets the next prospect.

With equal weights (the default) the member with the least recent assignment wins, ties to
the earliest created user, exactly as the decision table says. With unequal weights each
member gets its share of `weight / total weight`; the order is Tijdeman's chairman
assignment, which keeps every member within one assignment of its share at all times
(plain `assigned_total / weight` can drift by more than two). Shares are counted from the
lifetime totals, so a member who joins late or comes back from a pause catches up first.

Members who are off (their working hours, services/common/hours.py) are skipped. When nobody
is on, `when_closed` says what happens: pick among everyone available anyway, or pick nobody and
say when the first member comes on (`Pick.wait_until`).

`assigned_today` is reset by the caller at each UTC midnight; a count whose
`last_assigned_at` is on an earlier UTC day is read as 0 anyway, so a missed reset never
keeps anyone capped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from fractions import Fraction

from services.common.domain import Member
from services.common.hours import is_on, next_on


@dataclass(frozen=True)
class Pick:
    member: Member | None
    reason: str
    wait_until: datetime | None = None  # nobody is on: the first member comes on then


def pick_member(members: Sequence[Member], now: datetime, *, when_closed: bool = True) -> Pick:
    if not members:
        return Pick(None, "the group has no members")
    available = [m for m in members if _available(m, now)]
    if not available:
        return Pick(None, "every member is paused, inactive or at their daily cap")
    on = [m for m in available if is_on(m.hours, now)]
    if on:
        return _pick(on)
    if when_closed:
        chosen = _pick(available)
        return replace(chosen, reason=f"{chosen.reason}; nobody is on: assigned when closed")
    comes = [t for m in available if (t := next_on(m.hours, now)) is not None]
    first = min(comes) if comes else None
    until = f"the first one comes on at {first.isoformat()}" if first else "nobody ever comes on"
    return Pick(None, f"no member is working now: {until}", first)


def _pick(available: Sequence[Member]) -> Pick:
    if len({m.weight for m in available}) == 1:
        chosen = min(available, key=_least_recent_first)
        return Pick(chosen, f"user {chosen.ae_user_id}: {_last_assignment(chosen)}")
    chosen = _weighted_choice(available)
    return Pick(
        chosen,
        f"user {chosen.ae_user_id}: furthest behind its weighted share "
        f"(weight {chosen.weight}, {chosen.assigned_total} assigned so far)",
    )


def record_assignment(member: Member, now: datetime) -> Member:
    return replace(
        member,
        last_assigned_at=now,
        assigned_today=assigned_today(member, now) + 1,
        assigned_total=member.assigned_total + 1,
    )


def assigned_today(member: Member, now: datetime) -> int:
    last = member.last_assigned_at
    if last is not None and _utc_day(last) < _utc_day(now):
        return 0
    return member.assigned_today


def _available(member: Member, now: datetime) -> bool:
    if not member.active or member.paused:
        return False
    return member.daily_cap is None or assigned_today(member, now) < member.daily_cap


def _least_recent_first(member: Member) -> tuple[bool, datetime, int]:
    # Never assigned sorts first; the datetime is only compared between assigned members.
    last = member.last_assigned_at
    return (last is not None, _as_utc(last) if last else datetime.min, member.created_order)


def _weighted_choice(available: Sequence[Member]) -> Member:
    # Tijdeman (1980), "The chairman assignment problem": at step n, among the members whose
    # ideal count n·λ is ahead of their real count by at least δ = 1/(2k-2), take the one whose
    # next assignment is due first. Bound: |count - n·λ| <= 1 - δ for every member and every n.
    k = len(available)
    total_weight = sum(m.weight for m in available)
    step = sum(m.assigned_total for m in available) + 1
    slack = Fraction(1, 2 * k - 2)
    owed = [
        m for m in available if Fraction(step * m.weight, total_weight) - m.assigned_total >= slack
    ]
    # Only empty when the counts did not come from this scheme (members joined, paused, capped).
    candidates = owed or available

    def due(m: Member) -> tuple[Fraction, bool, datetime, int]:
        deadline = (m.assigned_total + 1 - slack) * Fraction(total_weight, m.weight)
        return (deadline, *_least_recent_first(m))

    return min(candidates, key=due)


def _last_assignment(member: Member) -> str:
    if member.last_assigned_at is None:
        return "never assigned, so the least recent"
    return f"least recent assignment ({member.last_assigned_at.isoformat()})"


def _utc_day(moment: datetime) -> date:
    return _as_utc(moment).date()


def _as_utc(moment: datetime) -> datetime:
    # A naive datetime (SQLite) is UTC already; mixing it with aware ones must still compare.
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
