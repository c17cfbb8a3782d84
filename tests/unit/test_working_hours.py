"""Working hours: on/off, next on time, business seconds and due times, across DST and midnight."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from services.common.hours import (
    HoursError,
    WorkingHours,
    add_business_seconds,
    business_seconds,
    is_on,
    next_on,
)

NY = ZoneInfo("America/New_York")
WEEKDAYS_9_TO_5 = {d: "09:00-17:00" for d in ("mon", "tue", "wed", "thu", "fri")}


def ny(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=NY)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def office(zone: str = "America/New_York", **weekly: str) -> WorkingHours:
    return WorkingHours.parse(zone, weekly or WEEKDAYS_9_TO_5)


def test_member_is_on_inside_their_local_hours_and_off_outside() -> None:
    hours = office()
    # Tuesday 2026-11-03: 09:00 New York is 14:00 UTC (EST, UTC-5).
    assert is_on(hours, utc(2026, 11, 3, 14, 0))
    assert not is_on(hours, utc(2026, 11, 3, 13, 59))
    assert is_on(hours, utc(2026, 11, 3, 21, 59))
    assert not is_on(hours, utc(2026, 11, 3, 22, 0))  # 17:00 local: the end is excluded


def test_member_without_hours_is_always_on() -> None:
    assert is_on(None, utc(2026, 11, 1, 3, 0))
    assert is_on(WorkingHours.parse("Europe/Berlin", None), utc(2026, 11, 1, 3, 0))


def test_away_date_is_a_local_date_of_the_member() -> None:
    hours = WorkingHours.parse("America/New_York", WEEKDAYS_9_TO_5, ["2026-11-03"])
    assert not is_on(hours, ny(2026, 11, 3, 10, 0))
    assert is_on(hours, ny(2026, 11, 4, 10, 0))
    assert next_on(hours, ny(2026, 11, 3, 10, 0)) == ny(2026, 11, 4, 9, 0)


def test_next_on_after_friday_evening_is_monday_morning_local() -> None:
    assert next_on(office(), ny(2026, 11, 6, 17, 30)) == ny(2026, 11, 9, 9, 0)
    at = ny(2026, 11, 6, 10, 0)
    assert next_on(office(), at) == at


def test_next_on_is_none_for_a_member_with_no_hours_on_any_day() -> None:
    assert next_on(WorkingHours.parse("UTC", {}), utc(2026, 11, 2, 9)) is None


def test_midnight_in_the_members_zone_not_utc_ends_their_day() -> None:
    # A night shift 18:00-24:00 in Tokyo (UTC+9): 09:00-15:00 UTC of the same day.
    hours = WorkingHours.parse("Asia/Tokyo", {"mon": "18:00-24:00", "tue": "00:00-02:00"})
    monday_23_tokyo = utc(2026, 11, 2, 14, 0)
    assert is_on(hours, monday_23_tokyo)
    # 24:00 Monday and 00:00 Tuesday join into one stretch: an hour before midnight plus
    # 2 hours after it.
    assert business_seconds(hours, monday_23_tokyo, utc(2026, 11, 2, 23, 0)) == 3 * 3600
    assert add_business_seconds(hours, monday_23_tokyo, 2 * 3600) == utc(2026, 11, 2, 16, 0)


def test_business_seconds_count_only_on_time() -> None:
    hours = office()
    # Tuesday 16:00 to Wednesday 10:00 local: one hour Tuesday, one hour Wednesday.
    assert business_seconds(hours, ny(2026, 11, 3, 16), ny(2026, 11, 4, 10)) == 2 * 3600
    assert business_seconds(hours, ny(2026, 11, 4, 10), ny(2026, 11, 3, 16)) == 0


def test_due_time_skips_nights_and_weekends() -> None:
    hours = office()
    friday_4pm = ny(2026, 11, 6, 16)
    assert add_business_seconds(hours, friday_4pm, 2 * 3600) == ny(2026, 11, 9, 10)


def test_due_time_started_while_off_counts_from_the_next_on_time() -> None:
    assert add_business_seconds(office(), ny(2026, 11, 3, 7), 1800) == ny(2026, 11, 3, 9, 30)


def test_spring_forward_day_in_new_york_is_an_hour_shorter_around_the_change() -> None:
    # 2026-03-08 (Sunday) 02:00 EST -> 03:00 EDT. A 00:00-24:00 Sunday lasts 23 real hours.
    hours = WorkingHours.parse("America/New_York", {"sun": "00:00-24:00"})
    assert business_seconds(hours, ny(2026, 3, 8, 0), ny(2026, 3, 9, 0)) == 23 * 3600
    # 01:30 local + 1 h of on-time lands at 03:30 EDT, not 02:30 (which does not exist).
    due = add_business_seconds(hours, ny(2026, 3, 8, 1, 30), 3600)
    assert due == utc(2026, 3, 8, 7, 30) and due.astimezone(NY).hour == 3


def test_nine_to_five_is_eight_real_hours_either_side_of_the_spring_change() -> None:
    hours = office()
    # Friday 2026-03-06 (EST) 16:00 + 2 h -> Monday 2026-03-09 (EDT) 10:00 local.
    due = add_business_seconds(hours, ny(2026, 3, 6, 16), 2 * 3600)
    assert due == ny(2026, 3, 9, 10)
    assert due.astimezone(UTC) == utc(2026, 3, 9, 14)  # UTC-4 now, not UTC-5


def test_fall_back_day_in_new_york_is_an_hour_longer() -> None:
    # 2026-11-01 (Sunday) 02:00 EDT -> 01:00 EST: a 00:00-24:00 Sunday lasts 25 real hours.
    hours = WorkingHours.parse("America/New_York", {"sun": "00:00-24:00"})
    assert business_seconds(hours, ny(2026, 11, 1, 0), ny(2026, 11, 2, 0)) == 25 * 3600
    start = ny(2026, 11, 1, 0)
    assert add_business_seconds(hours, start, 24 * 3600) == start.astimezone(UTC) + timedelta(
        hours=24
    )


def test_weekly_hours_round_trip_through_their_text_form() -> None:
    hours = WorkingHours.parse("UTC", {"Monday": "13:00-17:00, 08:00-12:00", "sat": "20:00-24:00"})
    assert hours.weekly_text() == {"mon": "08:00-12:00,13:00-17:00", "sat": "20:00-24:00"}


@pytest.mark.parametrize(
    ("zone", "weekly", "away", "message"),
    [
        ("Mars/Olympus", {}, [], "unknown time zone"),
        ("UTC", {"mon": "9-17"}, [], "HH:MM-HH:MM"),
        ("UTC", {"mon": "17:00-09:00"}, [], "ends before it starts"),
        ("UTC", {"mon": "09:00-12:00,11:00-13:00"}, [], "overlap"),
        ("UTC", {"funday": "09:00-12:00"}, [], "not a weekday"),
        ("UTC", {"mon": "25:00-26:00"}, [], "not a time of day"),
        ("UTC", {}, ["03/11/2026"], "YYYY-MM-DD"),
    ],
)
def test_unreadable_hours_are_refused_with_the_reason(
    zone: str, weekly: dict[str, str], away: list[str], message: str
) -> None:
    with pytest.raises(HoursError, match=message):
        WorkingHours.parse(zone, weekly, away)


def test_away_dates_accept_dates() -> None:
    assert WorkingHours.parse("UTC", None, [date(2026, 12, 24)]).away == {date(2026, 12, 24)}
