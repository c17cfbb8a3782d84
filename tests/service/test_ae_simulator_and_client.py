"""The AE API v5 simulator served over loopback, driven by the real AeClient."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from services.common.ae_client import (
    AeClient,
    AeNotFound,
    AeOutcomeUnknown,
    AeProspectFields,
    AeQuotaExhausted,
    AeRequestRejected,
    AeTransientError,
)
from services.common.sf_auth import SfTokenSource
from services.common.web import serve_app
from services.sim.ae import AeSimState, create_ae_app
from services.sim.lost_answers import LostAnswer
from services.sim.sf import SfSimState, create_sf_app
from services.sim.sf.tokens import AccessTokens

ORG_ID = "00D5e000000TestAAA"
CLIENT_ID = "ae-test-app"
CLIENT_SECRET = "ae-test-app-secret"
BUSINESS_UNIT = "0Uv5e000000TestAAA"
PROSPECTS = "/api/v5/objects/prospects"


@dataclass
class Served:
    ae_app: FastAPI
    sf_app: FastAPI
    ae_url: str
    sf_url: str


@pytest.fixture(scope="session")
async def served() -> AsyncIterator[Served]:
    ae_app, sf_app = create_ae_app(), create_sf_app()
    async with serve_app(ae_app) as ae_url, serve_app(sf_app) as sf_url:
        yield Served(ae_app, sf_app, ae_url, sf_url)


@pytest.fixture
def org(served: Served) -> SfSimState:
    """The SF org whose connected app AE trusts (AE takes SF's access tokens)."""
    state = served.sf_app.state.sim = SfSimState(
        org_id=ORG_ID, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, tokens=AccessTokens()
    )
    return state


@pytest.fixture
def sim(served: Served, org: SfSimState) -> AeSimState:
    # A fresh state per test isolates tests without paying a server restart each time.
    state = served.ae_app.state.sim = AeSimState(tokens=org.tokens)
    state.add_business_unit(BUSINESS_UNIT, org.org_id)
    return state


@pytest.fixture
def ae_url(served: Served, sim: AeSimState) -> str:
    return served.ae_url


@pytest.fixture
async def tokens(served: Served, org: SfSimState) -> AsyncIterator[SfTokenSource]:
    async with SfTokenSource(served.sf_url, CLIENT_ID, CLIENT_SECRET) as source:
        yield source


@pytest.fixture
def auth_headers(org: SfSimState, sim: AeSimState) -> dict[str, str]:
    token = org.issue_token(CLIENT_ID, CLIENT_SECRET)
    return {"Authorization": f"Bearer {token}", "Pardot-Business-Unit-Id": BUSINESS_UNIT}


def make_client(base_url: str, tokens: SfTokenSource, **overrides: Any) -> AeClient:
    # Tiny backoff keeps retry tests fast; the schedule shape is what matters, not its scale.
    settings: dict[str, Any] = {"max_attempts": 3, "backoff_base": 0.01, "backoff_max": 0.05}
    return AeClient(base_url, tokens, BUSINESS_UNIT, **(settings | overrides))


@pytest.fixture
async def ae(ae_url: str, tokens: SfTokenSource) -> AsyncIterator[AeClient]:
    async with make_client(ae_url, tokens) as client:
        yield client


# --- the API round trip ---------------------------------------------------------------------


async def test_prospect_round_trips_through_create_read_update_and_email_query(
    sim: AeSimState, ae: AeClient
) -> None:
    owner = sim.add_user("owner@example.com", first_name="Ada", last_name="Owner")

    created = await ae.create_prospect(
        AeProspectFields(email="lead@example.com", assigned_user_id=owner["id"])
    )
    read = await ae.get_prospect(created.id)
    requeued = await ae.update_prospect(
        created.id, AeProspectFields(assigned_queue_id="00G5e000001QueueAAA")
    )
    linked = await ae.update_prospect(
        created.id, AeProspectFields(salesforce_id="00Q5e000001LeadAAA")
    )
    found = await ae.find_prospects_by_email("LEAD@example.com")

    assert created.id == 5001
    assert (created.email, created.assigned_user_id) == ("lead@example.com", owner["id"])
    assert read == created
    assert (requeued.assigned_queue_id, requeued.assigned_user_id) == ("00G5e000001QueueAAA", None)
    assert linked.salesforce_id == "00Q5e000001LeadAAA"
    assert linked.assigned_queue_id == "00G5e000001QueueAAA"
    assert [p.id for p in found] == [created.id]
    assert sim.prospects[created.id]["salesforceId"] == "00Q5e000001LeadAAA"


async def test_assigning_a_user_clears_the_queue_owner(sim: AeSimState, ae: AeClient) -> None:
    user = sim.add_user("rep@example.com")
    seeded = sim.add_prospect("p@example.com", assigned_queue_id="00G5e000001QueueAAA")

    updated = await ae.update_prospect(seeded["id"], AeProspectFields(assigned_user_id=user["id"]))

    assert (updated.assigned_user_id, updated.assigned_queue_id) == (user["id"], None)


async def test_set_prospect_applies_the_change_and_a_refusal_still_raises(
    sim: AeSimState, ae: AeClient
) -> None:
    user = sim.add_user("rep@example.com")
    seeded = sim.add_prospect("p@example.com", assigned_queue_id="00G5e000001QueueAAA")

    await ae.set_prospect(seeded["id"], AeProspectFields(assigned_user_id=user["id"]))

    assert sim.prospects[seeded["id"]]["assignedUserId"] == user["id"]
    assert sim.prospects[seeded["id"]]["assignedQueueId"] is None
    with pytest.raises(AeNotFound):
        await ae.set_prospect(9999, AeProspectFields(assigned_user_id=user["id"]))


async def test_seeded_prospects_sharing_an_email_are_all_found(
    sim: AeSimState, ae: AeClient
) -> None:
    first = sim.add_prospect("twin@example.com")
    second = sim.add_prospect("twin@example.com")
    sim.add_prospect("other@example.com")

    found = await ae.find_prospects_by_email("twin@example.com")

    assert [p.id for p in found] == [first["id"], second["id"]]


async def test_prospects_are_found_by_the_sf_record_they_are_linked_to(
    sim: AeSimState, ae: AeClient
) -> None:
    linked = sim.add_prospect("twin@example.com", salesforce_id="00Q5g0000ZWHszxEQD")
    sim.add_prospect("twin@example.com", salesforce_id="00Q5g0000IXRUVNEQ5")
    sim.add_prospect("twin@example.com")

    found = await ae.find_prospects_by_salesforce_id("00Q5g0000ZWHszxEQD")

    assert [p.id for p in found] == [linked["id"]]


async def test_users_are_listed_with_their_details(sim: AeSimState, ae: AeClient) -> None:
    sim.add_user(
        "a@example.com", first_name="Ann", last_name="A", salesforce_id="0055e000001AAAAAAA"
    )
    sim.add_user("b@example.com", is_active=False)

    users = await ae.list_users()

    assert [(u.email, u.is_active) for u in users] == [
        ("a@example.com", True),
        ("b@example.com", False),
    ]
    assert (users[0].first_name, users[0].salesforce_id) == ("Ann", "0055e000001AAAAAAA")


async def test_users_are_listed_across_every_page(sim: AeSimState, ae: AeClient) -> None:
    for n in range(7):
        sim.add_user(f"user{n}@example.com")

    users = await ae.list_users(page_size=3)

    assert [u.email for u in users] == [f"user{n}@example.com" for n in range(7)]
    assert len(sim.calls("GET", "/api/v5/objects/users")) == 3


# --- authentication and validation ----------------------------------------------------------


@pytest.mark.parametrize(
    ("scheme", "business_unit", "status"),
    [(None, BUSINESS_UNIT, 401), ("Basic", BUSINESS_UNIT, 401), ("Bearer", None, 400)],
    ids=["no-token", "not-a-bearer-token", "no-business-unit"],
)
async def test_request_without_full_credentials_is_refused(
    ae_url: str,
    auth_headers: dict[str, str],
    scheme: str | None,
    business_unit: str | None,
    status: int,
) -> None:
    token = auth_headers["Authorization"].removeprefix("Bearer ")
    headers = {"Authorization": f"{scheme} {token}"} if scheme else {}
    if business_unit:
        headers["Pardot-Business-Unit-Id"] = business_unit
    async with httpx.AsyncClient(base_url=ae_url) as raw:
        response = await raw.get("/api/v5/objects/users", headers=headers)

    assert response.status_code == status
    assert set(response.json()) == {"code", "message"}


async def test_wrong_token_is_rejected_after_one_renewal_without_retrying(
    sim: AeSimState, ae_url: str, org: SfSimState, tokens: SfTokenSource
) -> None:
    await tokens.token()
    org.revoke_tokens()
    org.oauth_scopes = frozenset({"api"})  # the renewed token lacks pardot_api: refused too

    async with make_client(ae_url, tokens) as ae:
        with pytest.raises(AeRequestRejected) as refused:
            await ae.list_users()

    assert refused.value.status == 401
    assert sim.calls() == [401, 401]
    assert tokens.fetches == 2


async def test_unknown_prospect_field_is_refused(ae_url: str, auth_headers: dict[str, str]) -> None:
    async with httpx.AsyncClient(base_url=ae_url, headers=auth_headers) as raw:
        response = await raw.post(PROSPECTS, json={"email": "x@example.com", "shoeSize": 44})

    assert response.status_code == 400
    assert "shoeSize" in response.json()["message"]


async def test_bad_request_is_not_retried(sim: AeSimState, ae: AeClient) -> None:
    with pytest.raises(AeRequestRejected) as refused:
        await ae.create_prospect(AeProspectFields(email="x@example.com", assigned_user_id=424242))

    assert refused.value.status == 400
    assert "424242" in str(refused.value)
    assert sim.calls() == [400]
    assert ae.outcomes["rejected"] == 1


async def test_unknown_prospect_raises_not_found_without_retrying(
    sim: AeSimState, ae: AeClient
) -> None:
    with pytest.raises(AeNotFound):
        await ae.update_prospect(9999, AeProspectFields(assigned_user_id=None))

    assert sim.calls("PATCH", f"{PROSPECTS}/9999") == [404]
    assert len(sim.call_log) == 1


# --- retries --------------------------------------------------------------------------------


async def test_throttled_request_is_retried_until_it_succeeds(
    sim: AeSimState, ae: AeClient
) -> None:
    sim.faults.configure(fail_next=2, fail_status=429)

    created = await ae.create_prospect(AeProspectFields(email="retry@example.com"))

    assert sim.calls("POST", PROSPECTS) == [429, 429, 201]
    assert list(sim.prospects) == [created.id]
    assert (ae.outcomes["retried"], ae.outcomes["ok"]) == (2, 1)


async def test_unavailable_longer_than_max_attempts_raises_transient_error(
    sim: AeSimState, ae: AeClient
) -> None:
    sim.faults.configure(fail_next=10, fail_status=503)

    with pytest.raises(AeTransientError) as gave_up:
        await ae.get_prospect(5001)

    assert gave_up.value.status == 503
    assert sim.calls() == [503, 503, 503]
    assert ae.outcomes["transient"] == 1


async def test_request_slower_than_the_timeout_is_retried_then_transient(
    sim: AeSimState, ae_url: str, tokens: SfTokenSource
) -> None:
    sim.faults.configure(latency_ms=300)

    async with make_client(ae_url, tokens, timeout=0.05, max_attempts=2) as ae:
        with pytest.raises(AeTransientError) as gave_up:
            await ae.list_users()

    assert gave_up.value.status is None
    assert ae.calls_made == 2


async def test_seeded_random_failures_are_reproducible(
    ae_url: str, auth_headers: dict[str, str]
) -> None:
    async def statuses(seed: int) -> list[int]:
        async with httpx.AsyncClient(base_url=ae_url, headers=auth_headers) as raw:
            await raw.post("/_sim/faults", json={"failure_rate": 0.5, "seed": seed})
            return [(await raw.get("/api/v5/objects/users")).status_code for _ in range(12)]

    first, again = await statuses(7), await statuses(7)

    assert first == again
    assert {200, 503} == set(first)


# --- answers lost after the write was applied -----------------------------------------------


@pytest.mark.parametrize("lost_answer", ["disconnect", "server_error", "timeout"])
async def test_create_whose_answer_is_lost_is_not_sent_again_and_says_so(
    sim: AeSimState, ae_url: str, tokens: SfTokenSource, lost_answer: LostAnswer
) -> None:
    sim.faults.configure(
        lose_answers_after_apply=1, lost_answer=lost_answer, lost_answer_hold_ms=3000
    )

    async with make_client(ae_url, tokens, timeout=1.0) as ae:
        with pytest.raises(AeOutcomeUnknown):
            await ae.create_prospect(AeProspectFields(email="lost@example.com"))
        assert ae.outcomes["outcome_unknown"] == 1
    # On a loaded machine the client can give up before the simulator has read the request:
    # it is in the socket, and the simulator applies it a moment later.
    async with asyncio.timeout(5):
        while not sim.prospects:
            await asyncio.sleep(0.01)

    assert [p["email"] for p in sim.prospects.values()] == ["lost@example.com"]
    assert sim.calls("POST", PROSPECTS) == [201]  # applied once, sent once
    assert sim.faults.answers_lost == 1


async def test_lost_answers_are_only_those_of_writes_that_went_through(
    sim: AeSimState, ae: AeClient
) -> None:
    sim.faults.configure(lose_answers_after_apply=1)

    await ae.list_users()
    with pytest.raises(AeRequestRejected):
        await ae.create_prospect(AeProspectFields(email="not-an-email"))
    assert sim.faults.lose_answers_after_apply == 1

    kept = await ae.update_prospect(
        sim.add_prospect("kept@example.com")["id"], AeProspectFields(assigned_user_id=None)
    )
    assert kept.email == "kept@example.com"  # a PATCH is safe to send again: its retry got it
    assert sim.faults.answers_lost == 1


async def test_lost_answers_are_switched_on_over_http(ae_url: str, sim: AeSimState) -> None:
    async with httpx.AsyncClient(base_url=ae_url) as raw:
        answer = await raw.post(
            "/_sim/faults", json={"lose_answers_after_apply": 3, "lost_answer": "server_error"}
        )

    assert answer.status_code == 200
    assert (answer.json()["lose_answers_after_apply"], answer.json()["lost_answer"]) == (
        3,
        "server_error",
    )
    assert sim.faults.lose_answers_after_apply == 3


# --- AE limits ------------------------------------------------------------------------------


async def test_client_keeps_twenty_simultaneous_updates_within_five_concurrent_requests(
    sim: AeSimState, ae: AeClient
) -> None:
    user = sim.add_user("rep@example.com")
    ids = [sim.add_prospect(f"p{n}@example.com")["id"] for n in range(20)]
    sim.faults.configure(latency_ms=30)

    updated = await asyncio.gather(
        *(ae.update_prospect(pid, AeProspectFields(assigned_user_id=user["id"])) for pid in ids)
    )

    assert all(p.assigned_user_id == user["id"] for p in updated)
    # Exactly five proves the requests really overlapped, not that they ran one by one.
    assert sim.max_in_flight == 5
    assert sim.calls() == [200] * 20


async def test_simulator_refuses_a_sixth_concurrent_request(
    sim: AeSimState, ae_url: str, auth_headers: dict[str, str]
) -> None:
    sim.faults.configure(latency_ms=100)

    async with httpx.AsyncClient(base_url=ae_url, headers=auth_headers) as raw:
        responses = await asyncio.gather(*(raw.get("/api/v5/objects/users") for _ in range(6)))

    refused = [r for r in responses if r.status_code == 429]
    assert sorted(r.status_code for r in responses) == [200] * 5 + [429]
    assert refused[0].json()["code"] == 66


async def test_local_quota_exhaustion_raises_without_calling_ae(
    sim: AeSimState, ae_url: str, tokens: SfTokenSource
) -> None:
    async with make_client(ae_url, tokens, daily_quota=2) as ae:
        await ae.list_users()
        await ae.list_users()
        with pytest.raises(AeQuotaExhausted):
            await ae.list_users()

        assert (ae.calls_made, ae.quota_remaining) == (2, 0)
    assert len(sim.call_log) == 2


async def test_daily_limit_reported_by_ae_is_not_retried(sim: AeSimState, ae: AeClient) -> None:
    sim.daily_quota = 1
    await ae.list_users()

    with pytest.raises(AeQuotaExhausted) as spent:
        await ae.list_users()

    assert spent.value.code == 122
    assert sim.calls() == [200, 429]
    assert ae.quota_remaining is None


# --- simulator controls ---------------------------------------------------------------------


async def test_latency_set_over_http_slows_every_call(ae_url: str, ae: AeClient) -> None:
    async with httpx.AsyncClient(base_url=ae_url) as raw:
        answer = await raw.post("/_sim/faults", json={"latency_ms": 200})
    assert answer.json()["latency_ms"] == 200

    started = time.perf_counter()
    await ae.list_users()

    assert time.perf_counter() - started >= 0.2


async def test_state_is_dumped_and_reset_over_http(
    sim: AeSimState, ae_url: str, ae: AeClient
) -> None:
    await ae.create_prospect(AeProspectFields(email="dump@example.com"))

    async with httpx.AsyncClient(base_url=ae_url) as raw:
        dumped = (await raw.get("/_sim/state")).json()
        await raw.post("/_sim/reset")

    assert [p["email"] for p in dumped["prospects"]] == ["dump@example.com"]
    assert dumped["callCounts"] == {f"POST {PROSPECTS} 201": 1}
    assert (sim.prospects, sim.call_log, sim.next_prospect_id) == ({}, [], 5001)


async def test_a_prospect_made_in_ae_is_seeded_outside_the_api_and_its_call_log(
    sim: AeSimState, ae_url: str, ae: AeClient
) -> None:
    async with httpx.AsyncClient(base_url=ae_url) as raw:
        body = {"id": 700123, "email": "seed@example.com", "assignedUserId": 101}
        made = await raw.post("/_sim/prospects", json=body)

    assert made.status_code == 201
    found = await ae.find_prospects_by_email("seed@example.com")
    assert [(p.id, p.assigned_user_id) for p in found] == [(700123, 101)]
    assert sim.call_log == [("GET", PROSPECTS, 200)]  # the look-up only
    assert sim.next_prospect_id == 700124
