"""Follow-up SLAs: a timer per record assigned through a round-robin group. Pure, `now` passed in.

A timer is `pending` from the assignment until SF confirms the owner (the relay's answer),
then `running` until its due time. It ends `met` when the record is worked (its Status leaves
the tenant's untouched statuses, or its LastActivityDate is set), `stopped` when anyone else
changes the owner, and on expiry the assigner's SLA loop decides (services/assigner/sla.py):
`escalated` to the next member, `fallback` to the group's queue or user, or `expired` when
there is nobody to move it to. `waiting` is an expired timer whose next member is not on yet:
it fires again when the first one comes on.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal

from services.common.hours import WorkingHours, add_business_seconds

SlaState = Literal[
    "pending", "running", "waiting", "met", "stopped", "escalated", "fallback", "expired"
]
OPEN_STATES: tuple[SlaState, ...] = ("pending", "running", "waiting")
DEFAULT_UNTOUCHED_STATUSES: tuple[str, ...] = ("Open - Not Contacted",)
DEFAULT_MAX_ESCALATIONS = 2


@dataclass(frozen=True)
class SlaPolicy:
    """A group's follow-up SLA (`seconds` None: off)."""

    seconds: int | None = None
    business_hours: bool = False
    assign_when_closed: bool = False
    max_escalations: int = DEFAULT_MAX_ESCALATIONS
    fallback_owner_id: str | None = None  # a SF queue or user

    @property
    def on(self) -> bool:
        return self.seconds is not None


@dataclass(frozen=True)
class SlaTimer:
    id: int
    tenant_id: str
    record_id: int
    group_id: int
    ae_user_id: int  # the member who owns the record while the clock runs
    sf_owner_id: str  # that member's SF user: the owner SF must hold
    state: SlaState
    escalations: int  # how many times this record was already moved by its SLA
    seconds: int
    business_hours: bool
    started_at: datetime | None = None
    due_at: datetime | None = None

    @property
    def open(self) -> bool:
        return self.state in OPEN_STATES


@dataclass(frozen=True)
class SfUpdate:
    """What an SF outbound message says about a record (Status/LastActivityDate when sent)."""

    owner_id: str
    status: str | None = None
    last_activity_date: date | None = None
    modstamp: datetime | None = None  # SystemModstamp: when SF made the change it reports


@dataclass(frozen=True)
class Ended:
    state: SlaState
    reason: str


def worked(update: SfUpdate, untouched: Collection[str]) -> str | None:
    """Why the record counts as worked, or None."""
    if update.last_activity_date is not None:
        return f"LastActivityDate set ({update.last_activity_date.isoformat()})"
    if update.status is not None and update.status not in untouched:
        return f"Status {update.status!r} left the untouched statuses"
    return None


def on_sf_update(timer: SlaTimer, update: SfUpdate, untouched: Collection[str]) -> Ended | None:
    """What an SF notification does to an open timer: stops it (owner changed by anyone else),
    meets it (the record was worked), or nothing.

    An owner change stops only a started clock, and only when SF made it after the clock
    started: a notification of ownersync's own earlier move (SF delivers out of order, late)
    names the previous owner, and before SF confirms the owner the move itself is still on its
    way."""
    if not timer.open:
        return None
    if update.owner_id != timer.sf_owner_id and _after_start(timer, update):
        return Ended(
            "stopped",
            f"owner changed in SF to {update.owner_id} (was {timer.sf_owner_id}): SLA stopped",
        )
    why = worked(update, untouched)
    if why is not None:
        return Ended("met", f"worked by {timer.sf_owner_id}: {why}")
    return None


def _after_start(timer: SlaTimer, update: SfUpdate) -> bool:
    if timer.started_at is None:
        return False
    return update.modstamp is None or update.modstamp > timer.started_at


def due_time(
    start: datetime, seconds: int, business_hours: bool, hours: WorkingHours | None
) -> datetime:
    """When an SLA of `seconds` started at `start` expires: wall-clock seconds, or the owner's
    business seconds. An owner who never comes on (within the horizon) gets wall-clock time."""
    if business_hours and hours is not None:
        due = add_business_seconds(hours, start, seconds)
        if due is not None:
            return due
    return start.astimezone(UTC) + timedelta(seconds=seconds)


def describe_duration(seconds: int) -> str:
    """`2 h`, `90 min`, `45 s`: how the CLI, reasons and the API show an SLA."""
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"
