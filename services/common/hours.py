"""Working hours of a group member: a time zone, weekly hours and away dates. Pure, `now` passed in.

Hours are local wall-clock times in the member's IANA zone (`mon: 09:00-17:00`); away dates
are local dates. Business time is counted in real elapsed seconds inside the on-intervals, so
a day with a DST change is an hour shorter or longer when its hours span the change. A local
time that does not exist (the spring-forward gap) is read with the offset before the change,
as zoneinfo does with fold=0.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# How far ahead the next on-time or a due time is looked for before giving up.
HORIZON_DAYS = 400

_SPAN = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


class HoursError(ValueError):
    """Weekly hours, a time zone or away dates that cannot be read."""


Span = tuple[time, time | None]  # None as the end: midnight at the end of the day (24:00)


@dataclass(frozen=True)
class WorkingHours:
    """When a member works. No weekly hours at all means always on (away dates still apply)."""

    zone: str = "UTC"
    weekly: Mapping[int, tuple[Span, ...]] | None = None  # weekday (0 = Monday) -> spans
    away: frozenset[date] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.zone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise HoursError(f"unknown time zone {self.zone!r}") from exc

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.zone)

    @classmethod
    def parse(
        cls,
        zone: str | None,
        weekly: Mapping[str, str] | None,
        away: Iterable[str | date] | None = None,
    ) -> WorkingHours:
        """From the API / tenant.json shape: `{"mon": "09:00-17:00", "tue": "09:00-12:00,
        13:00-17:00"}`, away dates as ISO dates."""
        return cls(
            zone=zone or "UTC",
            weekly=None if weekly is None else parse_weekly(weekly),
            away=frozenset(_as_date(d) for d in away or ()),
        )

    def weekly_text(self) -> dict[str, str] | None:
        """The weekly hours in the shape `parse` reads."""
        if self.weekly is None:
            return None
        return {
            WEEKDAYS[day]: ",".join(_span_text(s) for s in spans)
            for day, spans in sorted(self.weekly.items())
            if spans
        }


def parse_weekly(weekly: Mapping[str, str]) -> dict[int, tuple[Span, ...]]:
    parsed: dict[int, tuple[Span, ...]] = {}
    for name, text in weekly.items():
        day = name.strip().lower()[:3]
        if day not in WEEKDAYS:
            raise HoursError(f"{name!r} is not a weekday (mon … sun)")
        spans = [_parse_span(part, name) for part in text.split(",") if part.strip()]
        spans.sort(key=lambda s: s[0])
        for (_, end), (start, _) in itertools.pairwise(spans):
            if end is None or end > start:
                raise HoursError(f"{name}: hours {text!r} overlap")
        parsed[WEEKDAYS.index(day)] = tuple(spans)
    return parsed


def _parse_span(text: str, day: str) -> Span:
    match = _SPAN.match(text)
    if match is None:
        raise HoursError(f"{day}: {text.strip()!r} is not HH:MM-HH:MM")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or m1 > 59 or m2 > 59 or h2 > 24 or (h2 == 24 and m2 != 0):
        raise HoursError(f"{day}: {text.strip()!r} is not a time of day")
    start = time(h1, m1)
    end = None if h2 == 24 else time(h2, m2)
    if end is not None and end <= start:
        raise HoursError(f"{day}: {text.strip()!r} ends before it starts (use 24:00 for midnight)")
    return start, end


def _span_text(span: Span) -> str:
    start, end = span
    return f"{start:%H:%M}-{'24:00' if end is None else f'{end:%H:%M}'}"


def _as_date(value: str | date) -> date:
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise HoursError(f"away date {value!r} is not YYYY-MM-DD") from exc


def intervals(hours: WorkingHours, since: datetime) -> Iterator[tuple[datetime, datetime]]:
    """The member's on-intervals (UTC, in order) that end after `since`, clipped to start at it
    at the earliest. Adjacent intervals (17:00-24:00 then 00:00-…) are merged."""
    tz = hours.tz
    since = since.astimezone(UTC)  # aware arithmetic in a local zone is wall-clock arithmetic
    day = since.astimezone(tz).date() - timedelta(days=1)
    pending: tuple[datetime, datetime] | None = None
    for _ in range(HORIZON_DAYS + 2):
        for start, end in _day_intervals(hours, day, tz):
            if end <= since:
                continue
            start = max(start, since)
            if pending is not None and pending[1] >= start:
                pending = (pending[0], max(pending[1], end))
                continue
            if pending is not None:
                yield pending
            pending = (start, end)
        day += timedelta(days=1)
    if pending is not None:
        yield pending


def _day_intervals(hours: WorkingHours, day: date, tz: ZoneInfo) -> list[tuple[datetime, datetime]]:
    if day in hours.away:
        return []
    if hours.weekly is None:
        spans: tuple[Span, ...] = ((time(0), None),)
    else:
        spans = hours.weekly.get(day.weekday(), ())
    out = []
    for start, end in spans:
        begin = datetime.combine(day, start, tzinfo=tz).astimezone(UTC)
        if end is None:
            finish = datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz)
        else:
            finish = datetime.combine(day, end, tzinfo=tz)
        stop = finish.astimezone(UTC)
        if stop > begin:
            out.append((begin, stop))
    return out


def is_on(hours: WorkingHours | None, at: datetime) -> bool:
    """Whether the member works at `at` (no hours set: always)."""
    if hours is None:
        return True
    first = next(intervals(hours, at), None)
    return first is not None and first[0] <= at


def next_on(hours: WorkingHours | None, at: datetime) -> datetime | None:
    """`at` if the member is on then, else when they next come on; None if never (within
    HORIZON_DAYS: no weekly hours on any day, or away for longer)."""
    if hours is None:
        return at
    at = at.astimezone(UTC)
    first = next(intervals(hours, at), None)
    return None if first is None else max(first[0], at)


def business_seconds(hours: WorkingHours | None, start: datetime, end: datetime) -> float:
    """Seconds of on-time between two instants."""
    if end <= start:
        return 0.0
    if hours is None:
        return (end.astimezone(UTC) - start.astimezone(UTC)).total_seconds()
    total = 0.0
    for begin, finish in intervals(hours, start):
        if begin >= end:
            break
        total += (min(finish, end) - begin).total_seconds()
    return total


def add_business_seconds(
    hours: WorkingHours | None, start: datetime, seconds: float
) -> datetime | None:
    """The instant when `seconds` of on-time have passed since `start` (None: never, within
    the horizon)."""
    if hours is None:
        return start.astimezone(UTC) + timedelta(seconds=seconds)
    left = seconds
    for begin, finish in intervals(hours, start):
        length = (finish - begin).total_seconds()
        if length >= left:
            return begin + timedelta(seconds=left)
        left -= length
    return None
