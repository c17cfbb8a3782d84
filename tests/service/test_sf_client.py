"""The SF REST client against the Salesforce simulator served over real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from services.common.sf_auth import SfTokenSource
from services.common.sf_client import (
    SfClient,
    SfOutcomeUnknown,
    SfRecordFields,
    SfRecordRef,
    SfRequestRejected,
    SfTransientError,
)
from services.common.web import free_port, serve_app
from services.sim.lost_answers import LostAnswer
from services.sim.sf import CallRecord, SfSimState, create_sf_app

CLIENT_ID = "ownersync-test"
CLIENT_SECRET = "test-only-secret"
TOKEN_PATH = "/services/oauth2/token"
LEADS_PATH = "/services/data/v62.0/sobjects/Lead"


@dataclass
class Org:
    state: SfSimState
    base_url: str
    alice: str

    def calls(self, method: str, path_prefix: str) -> list[CallRecord]:
        return [
            c for c in self.state.calls if c.method == method and c.path.startswith(path_prefix)
        ]


@pytest.fixture
async def org() -> AsyncIterator[Org]:
    state = SfSimState(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    alice = state.add_user("Alice Adams", "alice@example.com")
    async with serve_app(create_sf_app(state)) as base_url:
        yield Org(state, base_url, alice)


@pytest.fixture
async def client(org: Org) -> AsyncIterator[SfClient]:
    async with (
        SfTokenSource(org.base_url, CLIENT_ID, CLIENT_SECRET) as tokens,
        SfClient(tokens, max_attempts=3, backoff_base=0.001, backoff_max=0.01) as sf,
    ):
        yield sf


def lead(email: str, owner_id: str | None = None) -> SfRecordFields:
    return SfRecordFields(last_name="Lee", company="Acme", email=email, owner_id=owner_id)


async def test_token_is_fetched_once_and_reused_across_concurrent_and_later_calls(
    org: Org, client: SfClient
) -> None:
    ids = await asyncio.gather(
        *(client.create("Lead", lead(f"p{n}@example.com"), auto_assign=True) for n in range(5))
    )
    for record_id in ids:
        await client.get("Lead", record_id)

    assert len(org.calls("POST", TOKEN_PATH)) == 1
    assert len(org.calls("GET", LEADS_PATH)) == 5
    assert client.outcomes["ok"] == 10


async def test_expired_token_is_renewed_once_and_the_call_succeeds(
    org: Org, client: SfClient
) -> None:
    record_id = await client.create("Lead", lead("kim@example.com"), auto_assign=True)
    org.state.expire_tokens()

    record = await client.get("Lead", record_id)

    assert record["Email"] == "kim@example.com"
    assert len(org.calls("POST", TOKEN_PATH)) == 2
    assert [c.status for c in org.calls("GET", LEADS_PATH)] == [401, 200]


async def test_a_second_invalid_session_is_rejected_instead_of_renewing_forever(
    org: Org, client: SfClient
) -> None:
    org.state.faults.invalid_session = 5

    with pytest.raises(SfRequestRejected) as caught:
        await client.create("Lead", lead("kim@example.com"), auto_assign=True)

    assert caught.value.status == 401
    assert caught.value.error_code == "INVALID_SESSION_ID"
    assert len(org.calls("POST", TOKEN_PATH)) == 2  # the first token and one renewal
    assert [c.status for c in org.calls("POST", LEADS_PATH)] == [401, 401]


async def test_request_limit_exceeded_is_retried_until_the_call_succeeds(
    org: Org, client: SfClient
) -> None:
    org.state.faults.request_limit_exceeded = 2

    record_id = await client.create("Lead", lead("kim@example.com"), auto_assign=True)

    assert [c.status for c in org.calls("POST", LEADS_PATH)] == [403, 403, 201]
    assert list(org.state.leads) == [record_id]
    assert client.outcomes["retried"] == 2
    assert client.outcomes["ok"] == 1


async def test_service_unavailable_beyond_max_attempts_raises_a_transient_error(
    org: Org, client: SfClient
) -> None:
    kim = await client.create("Lead", lead("kim@example.com"), auto_assign=True)
    org.state.faults.server_errors = 10

    with pytest.raises(SfTransientError) as caught:
        await client.update("Lead", kim, lead("kim@example.com", org.alice), auto_assign=False)

    assert caught.value.status == 503
    assert [c.status for c in org.calls("PATCH", LEADS_PATH)] == [503, 503, 503]
    assert org.state.leads[kim]["OwnerId"] != org.alice
    assert client.outcomes["transient"] == 1


async def test_create_answered_503_is_not_sent_again_its_outcome_is_unknown(
    org: Org, client: SfClient
) -> None:
    org.state.faults.server_errors = 10

    with pytest.raises(SfOutcomeUnknown) as caught:
        await client.create("Lead", lead("kim@example.com"), auto_assign=True)

    assert caught.value.status == 503
    assert [c.status for c in org.calls("POST", LEADS_PATH)] == [503]
    assert org.state.leads == {}
    assert client.outcomes["outcome_unknown"] == 1


async def test_unknown_owner_is_rejected_without_retry_and_carries_salesforce_message(
    org: Org, client: SfClient
) -> None:
    unknown_user = org.state.new_id("005")

    with pytest.raises(SfRequestRejected) as caught:
        await client.create("Lead", lead("kim@example.com", unknown_user), auto_assign=False)

    error = caught.value
    assert error.status == 400
    assert error.error_code == "INVALID_CROSS_REFERENCE_KEY"
    assert error.errors[0].fields == ("OwnerId",)
    assert "INVALID_CROSS_REFERENCE_KEY: invalid cross reference id" in str(error)
    assert len(org.calls("POST", LEADS_PATH)) == 1
    assert client.outcomes["rejected"] == 1


async def test_missing_record_is_rejected_as_not_found(org: Org, client: SfClient) -> None:
    with pytest.raises(SfRequestRejected) as caught:
        await client.get("Lead", org.state.new_id("00Q"))

    assert caught.value.status == 404
    assert caught.value.error_code == "NOT_FOUND"


async def test_auto_assign_header_is_sent_as_false_or_true_on_every_write(
    org: Org, client: SfClient
) -> None:
    owned = await client.create("Lead", lead("a@example.com", org.alice), auto_assign=False)
    ruled = await client.create("Lead", lead("b@example.com"), auto_assign=True)
    await client.update("Lead", owned, SfRecordFields(last_name="Lim"), auto_assign=False)
    await client.update("Lead", ruled, SfRecordFields(last_name="Lam"), auto_assign=True)
    await client.get("Lead", owned)

    writes = [
        (c.method, c.auto_assign)
        for c in org.state.calls
        if c.method in ("POST", "PATCH") and c.path.startswith(LEADS_PATH)
    ]
    assert writes == [("POST", "FALSE"), ("POST", "TRUE"), ("PATCH", "FALSE"), ("PATCH", "TRUE")]
    assert [c.auto_assign for c in org.calls("GET", LEADS_PATH)] == [None]
    assert org.state.leads[owned]["OwnerId"] == org.alice


async def test_wrong_client_secret_is_rejected_once_with_the_oauth_error(org: Org) -> None:
    async with (
        SfTokenSource(org.base_url, CLIENT_ID, "wrong") as tokens,
        SfClient(tokens, backoff_base=0.001) as client,
    ):
        with pytest.raises(SfRequestRejected) as caught:
            await client.get("Lead", org.state.new_id("00Q"))

    assert caught.value.error_code == "invalid_client"
    assert len(org.calls("POST", TOKEN_PATH)) == 1


async def test_unreachable_salesforce_is_retried_then_raises_a_transient_error() -> None:
    nobody_listens = f"http://127.0.0.1:{free_port()}"
    async with (
        SfTokenSource(nobody_listens, CLIENT_ID, CLIENT_SECRET) as tokens,
        SfClient(tokens, max_attempts=3, backoff_base=0.001) as client,
    ):
        with pytest.raises(SfTransientError) as caught:
            await client.create("Lead", lead("kim@example.com"), auto_assign=True)

    assert caught.value.status is None
    assert client.outcomes["retried"] == 2


# ---- creates that are safe to repeat, and those that are not

KEY = "OwnersyncKey__c"


@pytest.mark.parametrize("lost_answer", ["disconnect", "server_error", "timeout"])
async def test_create_whose_answer_is_lost_is_not_sent_again_and_says_so(
    org: Org, lost_answer: LostAnswer
) -> None:
    org.state.faults.lose_answers_after_apply = 1
    org.state.faults.lost_answer = lost_answer
    org.state.faults.lost_answer_hold_ms = 3000
    async with (
        SfTokenSource(org.base_url, CLIENT_ID, CLIENT_SECRET) as tokens,
        SfClient(tokens, timeout=1.0, max_attempts=3, backoff_base=0.001) as client,
    ):
        with pytest.raises(SfOutcomeUnknown):
            await client.create("Lead", lead("kim@example.com"), auto_assign=True)
        # On a loaded machine the client can give up before the simulator has read the
        # request: it is in the socket, and the simulator applies it a moment later.
        async with asyncio.timeout(5):
            while not org.state.leads:
                await asyncio.sleep(0.01)

    assert [r["Email"] for r in org.state.leads.values()] == ["kim@example.com"]
    assert [c.status for c in org.calls("POST", LEADS_PATH)] == [201]  # applied once, sent once
    assert client.outcomes["outcome_unknown"] == 1


async def test_upsert_through_the_key_creates_once_however_often_its_answer_is_lost(
    org: Org, client: SfClient
) -> None:
    org.state.external_id_fields = {KEY}
    org.state.faults.lose_answers_after_apply = 2

    first = await client.upsert("Lead", KEY, "acme:7", lead("kim@example.com"), auto_assign=True)
    again = await client.upsert(
        "Lead", KEY, "acme:7", lead("kim@example.com", org.alice), auto_assign=False
    )

    assert first == again
    assert list(org.state.leads) == [first]
    assert org.state.leads[first]["OwnerId"] == org.alice
    upserts = org.calls("PATCH", f"{LEADS_PATH}/{KEY}/acme:7")
    assert [(c.status, c.auto_assign) for c in upserts] == [
        (201, "TRUE"),
        (200, "TRUE"),
        (200, "TRUE"),
        (200, "FALSE"),
    ]


async def test_external_ids_are_read_from_the_describe_once_and_kept(
    org: Org, client: SfClient
) -> None:
    org.state.external_id_fields = {KEY}

    assert await client.external_id_fields("Lead") == {KEY}
    org.state.external_id_fields = set()
    assert await client.external_id_fields("Lead") == {KEY}  # believed for DESCRIBE_TTL
    assert await client.external_id_fields("Contact") == frozenset()

    assert len(org.calls("GET", f"{LEADS_PATH}/describe")) == 1


async def test_records_created_since_are_found_by_email_and_the_integration_user(
    org: Org, client: SfClient
) -> None:
    before = datetime.now(UTC) - timedelta(seconds=2)
    email = "o'brien+\\x@example.com"
    mine = await client.create("Lead", lead(email), auto_assign=False)
    await client.create("Lead", lead("other@example.com"), auto_assign=False)
    org.state.leads[mine]["CreatedById"] = org.alice  # made by a person, not the connected app

    assert await client.first_created_since("Lead", email=email, since=before) is None
    org.state.leads[mine]["CreatedById"] = org.state.api_user_id
    found = await client.first_created_since("Lead", email=email.upper(), since=before)
    later = datetime.now(UTC) + timedelta(seconds=2)

    assert found == SfRecordRef(mine, org.state.api_user_id)
    assert await client.first_created_since("Lead", email=email, since=later) is None
    assert [c.status for c in org.calls("GET", "/services/data/v62.0/query")] == [200] * 3


async def test_token_names_the_user_the_connected_app_acts_as(org: Org) -> None:
    async with SfTokenSource(org.base_url, CLIENT_ID, CLIENT_SECRET) as tokens:
        assert (await tokens.token()).user_id == org.state.api_user_id
