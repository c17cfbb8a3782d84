"""The SF requests of an idempotent create, as text: SOQL literals that no value can break out
of, the look-up query, and the upsert path through an External ID."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.sf_client import created_since_soql, external_id_path
from services.common.soql import datetime_literal, quote
from services.sim.sf.soql import Query

INTEGRATION_USER = "0055g00000ePONxAAO"


@pytest.mark.parametrize(
    ("text", "literal"),
    [
        ("kim@example.com", "'kim@example.com'"),
        ("o'brien@example.com", "'o\\'brien@example.com'"),
        ("back\\slash@example.com", "'back\\\\slash@example.com'"),
        ('"quoted"@example.com', "'\\\"quoted\\\"@example.com'"),
        ("line\nbreak\ttab\rreturn", "'line\\nbreak\\ttab\\rreturn'"),
        ("bell\x07null\x00", "'bell\\u0007null\\u0000'"),
        ("zoë@example.com", "'zoë@example.com'"),
    ],
)
def test_quote_escapes_what_soql_reserves(text: str, literal: str) -> None:
    assert quote(text) == literal


def test_an_email_that_tries_to_end_the_string_stays_inside_it() -> None:
    hostile = "x' OR Email != 'y"

    soql = created_since_soql(
        "Lead", email=hostile, created_by=INTEGRATION_USER, since=datetime(2026, 11, 2, tzinfo=UTC)
    )

    email, creator, since = Query.parse(soql).conditions
    assert (email.field, email.op, email.value) == ("Email", "=", hostile)
    assert (creator.field, since.field) == ("CreatedById", "CreatedDate")


@given(st.text())
def test_any_text_reads_back_unchanged_through_the_simulators_soql(text: str) -> None:
    (condition,) = Query.parse(f"SELECT Id FROM Lead WHERE Email = {quote(text)}").conditions
    assert condition.value == text


def test_datetime_literal_is_utc_whole_seconds_never_later_than_the_moment() -> None:
    moment = datetime(2026, 11, 2, 10, 7, 59, 999_000, tzinfo=timezone(timedelta(hours=1)))

    assert datetime_literal(moment) == "2026-11-02T09:07:59Z"
    with pytest.raises(ValueError, match="timezone"):
        datetime_literal(datetime(2026, 11, 2))


def test_look_up_query_names_email_creator_and_time_oldest_first() -> None:
    soql = created_since_soql(
        "Contact",
        email="kim@example.com",
        created_by=INTEGRATION_USER,
        since=datetime(2026, 11, 2, 9, 0, tzinfo=UTC),
    )

    assert soql == (
        "SELECT Id, OwnerId FROM Contact WHERE Email = 'kim@example.com' "
        f"AND CreatedById = '{INTEGRATION_USER}' AND CreatedDate >= 2026-11-02T09:00:00Z "
        "ORDER BY CreatedDate ASC LIMIT 1"
    )


def test_look_up_query_without_a_known_creator_leaves_the_creator_out() -> None:
    soql = created_since_soql(
        "Lead", email="kim@example.com", created_by=None, since=datetime(2026, 11, 2, tzinfo=UTC)
    )
    assert "CreatedById" not in soql


def test_look_up_query_refuses_an_sobject_it_does_not_write() -> None:
    with pytest.raises(ValueError, match="unsupported sObject"):
        created_since_soql("Account", email="x", created_by=None, since=datetime.now(UTC))


def test_upsert_path_names_the_external_id_and_encodes_the_key() -> None:
    assert (
        external_id_path("v62.0", "Lead", "OwnersyncKey__c", "acme:42")
        == "/services/data/v62.0/sobjects/Lead/OwnersyncKey__c/acme%3A42"
    )
    assert external_id_path("v62.0", "Contact", "OwnersyncKey__c", "a/b?c").endswith(
        "/Contact/OwnersyncKey__c/a%2Fb%3Fc"
    )


@pytest.mark.parametrize("field", ["Owner/../Id", "", "Key__c/x"])
def test_upsert_path_refuses_what_is_not_a_field_name(field: str) -> None:
    with pytest.raises(ValueError, match="not a field name"):
        external_id_path("v62.0", "Lead", field, "acme:42")
