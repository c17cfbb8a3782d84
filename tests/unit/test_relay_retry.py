"""When a failed effect is tried again: backoff, Retry-After, what is transient, quota days."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from services.common.ae_client import AeQuotaExhausted, AeRequestRejected, AeTransientError
from services.common.retry_after import parse_retry_after
from services.common.sf_client import SfRequestRejected
from services.relay.relay import LeaseRunningOut
from services.relay.retry import (
    Failure,
    Rejected,
    backoff_delay,
    classify,
    next_quota_day,
    retry_delay,
)

NOW = datetime(2026, 12, 3, 1, 0, tzinfo=UTC)


def test_retry_after_in_seconds_is_read_as_seconds() -> None:
    assert parse_retry_after("120", NOW) == 120.0
    assert parse_retry_after(" 0 ", NOW) == 0.0


def test_retry_after_as_an_http_date_is_the_time_left_until_then() -> None:
    assert parse_retry_after("Thu, 03 Dec 2026 01:02:30 GMT", NOW) == 150.0


def test_retry_after_in_the_past_means_now() -> None:
    assert parse_retry_after("Wed, 02 Dec 2026 01:00:00 GMT", NOW) == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5e3"])
def test_unreadable_retry_after_is_none(value: str | None) -> None:
    assert parse_retry_after(value, NOW) is None


def test_backoff_doubles_then_stops_at_the_cap() -> None:
    rand = random.Random(7)
    delays = [backoff_delay(n, base=1.0, cap=300.0, rand=rand) for n in range(1, 40)]
    assert 0.5 <= delays[0] <= 1.0
    assert 4.0 <= delays[3] <= 8.0
    assert all(150.0 <= d <= 300.0 for d in delays[10:])  # capped, never zero, for ever


def test_retry_after_wins_over_the_backoff_even_beyond_the_cap() -> None:
    failure = Failure("transient", "AE 429", retry_after=3600.0)
    assert retry_delay(failure, 1, base=1.0, cap=300.0) == 3600.0
    assert retry_delay(Failure("transient", "AE 503"), 1, base=1.0, cap=300.0) <= 1.0


def rejected(status: int) -> Rejected:
    try:
        raise Rejected("refused") from AeRequestRejected(status, None, "refused")
    except Rejected as exc:
        return exc


@pytest.mark.parametrize("status", [401, 408, 409, 429])
def test_refusals_that_mean_later_are_transient(status: int) -> None:
    assert classify(rejected(status)).kind == "transient"


@pytest.mark.parametrize("status", [400, 403, 404, 422])
def test_other_refusals_are_permanent(status: int) -> None:
    assert classify(rejected(status)).kind == "permanent"


def test_an_sf_refusal_is_read_by_its_status_too() -> None:
    try:
        raise Rejected("refused") from SfRequestRejected(400)
    except Rejected as exc:
        assert classify(exc).kind == "permanent"


def test_outages_timeouts_and_unknown_outcomes_are_transient_with_their_retry_after() -> None:
    assert classify(AeTransientError(503, None, "down", retry_after=30.0)) == Failure(
        "transient", "AeTransientError: AE 503: down", 30.0
    )
    assert classify(ConnectionRefusedError("refused")).kind == "transient"
    assert classify(LeaseRunningOut("late")).kind == "transient"


def test_a_spent_quota_is_neither_transient_nor_permanent() -> None:
    assert classify(AeQuotaExhausted(429, 122, "Daily API rate limit met")).kind == "quota"


def test_the_next_quota_day_starts_at_midnight_in_the_quota_time_zone() -> None:
    assert next_quota_day(NOW, "UTC") == datetime(2026, 12, 4, tzinfo=UTC)
    # 01:00 UTC is 17:00 the day before in Los Angeles (PST, UTC-8): midnight there is 08:00.
    assert next_quota_day(NOW, "America/Los_Angeles") == datetime(2026, 12, 3, 8, tzinfo=UTC)
    assert next_quota_day(NOW, "Europe/Paris") - NOW == timedelta(hours=22)
