"""Times from the future: a source timestamp too far ahead of the receiver's clock is refused.

Ordering uses the sources' own times (SF's SystemModstamp, AE's occurredAt): one from 2099 would
stick as the record's newest and make every genuine later event look stale. A little skew
between SF's, AE's and our clocks is normal; more than this is not.
"""

from __future__ import annotations

from datetime import datetime, timedelta

MAX_CLOCK_AHEAD = timedelta(minutes=5)


def too_far_ahead(stamp: datetime, now: datetime) -> bool:
    return stamp > now + MAX_CLOCK_AHEAD


def ahead_message(what: str, stamp: datetime) -> str:
    minutes = int(MAX_CLOCK_AHEAD.total_seconds() // 60)
    return (
        f"{what} {stamp.isoformat()} is more than {minutes} minutes ahead of this receiver's clock"
    )
