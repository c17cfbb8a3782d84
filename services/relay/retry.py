"""What a failed send means, and when the effect is tried again. Pure: `now` is passed in.

Transient failures (no answer, timeouts, 5xx, 429, and the 4xx that say "later": 401, 408,
409) wait and are tried again, backing off up to a cap, for as long as it takes: an outage
makes effects wait, it does not kill them. A spent AE daily quota is no attempt at all: the
effect waits for the next quota day. Other refusals (4xx) are permanent: the effect is dead,
with the reason, until an operator looks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from services.common.ae_client import AeQuotaExhausted

# 4xx answers that are not a verdict on the request: retried like an outage.
TRANSIENT_4XX = frozenset({401, 408, 409, 429})

FailureKind = Literal["transient", "permanent", "quota"]


class Rejected(Exception):
    """The remote side refused the effect for good (a 4xx): retrying cannot help.
    Raised `from` the client's error, whose `status` the relay reads."""


@dataclass(frozen=True)
class Failure:
    kind: FailureKind
    error: str
    retry_after: float | None = None  # seconds the remote side asked us to wait


def classify(exc: BaseException) -> Failure:
    error = f"{type(exc).__name__}: {exc}"[:2000]
    cause = exc.__cause__ if isinstance(exc, Rejected) and exc.__cause__ is not None else exc
    if isinstance(cause, AeQuotaExhausted):
        return Failure("quota", error)
    status = getattr(cause, "status", None)
    retry_after = getattr(cause, "retry_after", None)
    if not isinstance(retry_after, int | float):
        retry_after = None
    if isinstance(exc, Rejected) and not (isinstance(status, int) and status in TRANSIENT_4XX):
        return Failure("permanent", error)
    return Failure("transient", error, retry_after)


def backoff_delay(
    attempts: int, *, base: float, cap: float, rand: random.Random | None = None
) -> float:
    """Seconds before try `attempts + 1`: exponential from `base`, capped at `cap`, with half
    jitter (so replicas retrying one outage spread out, and the wait never drops to zero)."""
    exponent = min(max(attempts - 1, 0), 60)  # the cap is reached long before
    delay = min(cap, base * 2.0**exponent)
    return (rand or random).uniform(delay / 2, delay)


def retry_delay(failure: Failure, attempts: int, *, base: float, cap: float) -> float:
    """Retry-After, when the remote side said how long, else the capped backoff."""
    if failure.retry_after is not None:
        return failure.retry_after
    return backoff_delay(attempts, base=base, cap=cap)


def next_quota_day(now: datetime, timezone: str) -> datetime:
    """When the next quota day starts: the next midnight in `timezone` (AE's account zone)."""
    zone = ZoneInfo(timezone)
    local = now.astimezone(zone)
    midnight = datetime.combine(local.date() + timedelta(days=1), time(0), tzinfo=zone)
    return midnight.astimezone(now.tzinfo)
