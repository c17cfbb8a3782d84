"""AE authenticated as AE really is: the access token of the tenant's SF connected app (scope
`pardot_api`) plus `Pardot-Business-Unit-Id`, renewed once on a 401. Two SF org simulators
share one token registry with the AE simulator, whose business units belong to those orgs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from services.common.ae_client import AeClient, AeRequestRejected
from services.common.sf_auth import SfCredentialsRefused, SfTokenSource
from services.common.sf_client import SfClient
from services.common.tenant_clients import TenantClients
from services.common.web import serve_app
from services.sim.ae import AeSimState, create_ae_app
from services.sim.embedded import EmbeddedAe, EmbeddedSf, simulated_connections
from services.sim.sf import SfSimState, create_sf_app
from services.sim.sf.tokens import AccessTokens

ORG_A, ORG_B = "00D5e000000OrgAAAA", "00D5e000000OrgBAAA"
UNIT_A, UNIT_B = "0Uv5e000000UnitAAA", "0Uv5e000000UnitBAA"
TOKEN_PATH = "/services/oauth2/token"


@dataclass
class Org:
    state: SfSimState
    url: str

    def tokens(self) -> SfTokenSource:
        assert self.state.client_secret is not None
        return SfTokenSource(self.url, self.state.client_id, self.state.client_secret)

    def token_requests(self) -> list[int]:
        return [c.status for c in self.state.calls if c.path == TOKEN_PATH]


@dataclass
class World:
    ae: AeSimState
    ae_url: str
    a: Org
    b: Org
    alice: str  # a user of org A


@pytest.fixture
async def world() -> AsyncIterator[World]:
    shared = AccessTokens()
    org_a = SfSimState(org_id=ORG_A, client_id="app-a", client_secret="a-secret", tokens=shared)
    org_b = SfSimState(org_id=ORG_B, client_id="app-b", client_secret="b-secret", tokens=shared)
    alice = org_a.add_user("Alice Adams", "alice@example.com")
    ae = AeSimState(tokens=shared)
    ae.add_business_unit(UNIT_A, org_a.org_id)
    ae.add_business_unit(UNIT_B, org_b.org_id)
    ae.add_user("rep@example.com")
    async with (
        serve_app(create_ae_app(ae)) as ae_url,
        serve_app(create_sf_app(org_a)) as url_a,
        serve_app(create_sf_app(org_b)) as url_b,
    ):
        yield World(ae, ae_url, Org(org_a, url_a), Org(org_b, url_b), alice)


def ae_client(world: World, tokens: SfTokenSource, unit: str = UNIT_A) -> AeClient:
    return AeClient(world.ae_url, tokens, unit, max_attempts=2, backoff_base=0.001)


async def test_ae_admits_the_token_of_the_org_that_owns_the_business_unit(world: World) -> None:
    async with world.a.tokens() as tokens, ae_client(world, tokens) as ae:
        users = await ae.list_users()

    assert [u.email for u in users] == ["rep@example.com"]
    assert world.ae.calls() == [200]
    assert world.a.token_requests() == [200]


async def test_ae_refuses_a_token_without_the_pardot_api_scope(world: World) -> None:
    world.a.state.oauth_scopes = frozenset({"api"})

    async with world.a.tokens() as tokens, ae_client(world, tokens) as ae:
        with pytest.raises(AeRequestRejected) as refused:
            await ae.list_users()

    assert refused.value.status == 401
    assert "pardot_api" in refused.value.message
    assert world.ae.calls() == [401, 401]  # refused, renewed once, refused again
    assert tokens.fetches == 2


async def test_ae_refuses_a_token_of_another_org_for_a_business_unit(world: World) -> None:
    async with world.b.tokens() as tokens, ae_client(world, tokens, UNIT_A) as ae:
        with pytest.raises(AeRequestRejected) as refused:
            await ae.list_users()
        own_unit = await AeClient(world.ae_url, tokens, UNIT_B).list_users()

    assert refused.value.status == 401
    assert UNIT_A in refused.value.message
    assert [u.email for u in own_unit] == ["rep@example.com"]


async def test_an_expired_token_is_renewed_once_on_ae_401_and_the_call_goes_through(
    world: World,
) -> None:
    async with world.a.tokens() as tokens, ae_client(world, tokens) as ae:
        await ae.list_users()
        async with httpx.AsyncClient(base_url=world.a.url) as sim:
            switched = await sim.post("/_sim/oauth", json={"expire_tokens": True})
        users = await ae.list_users()

    assert switched.json()["live_tokens"] == 0
    assert [u.email for u in users] == ["rep@example.com"]
    assert world.ae.calls() == [200, 401, 200]
    assert world.a.token_requests() == [200, 200]


async def test_concurrent_calls_refused_with_one_token_share_one_renewal(world: World) -> None:
    async with world.a.tokens() as tokens, ae_client(world, tokens) as ae:
        await ae.list_users()
        world.a.state.revoke_tokens()

        await asyncio.gather(*(ae.list_users() for _ in range(5)))

    assert tokens.fetches == 2
    assert sorted(world.ae.calls()) == [200] * 6 + [401] * 5


async def test_a_tenants_sf_and_ae_clients_share_one_token(world: World) -> None:
    async with (
        world.a.tokens() as tokens,
        ae_client(world, tokens) as ae,
        SfClient(tokens) as sf,
    ):
        await asyncio.gather(ae.list_users(), sf.get_user(world.alice), ae.list_users())

    assert world.a.token_requests() == [200]


async def test_a_revoked_client_secret_leaves_ae_unreachable_with_invalid_client(
    world: World,
) -> None:
    async with world.a.tokens() as tokens, ae_client(world, tokens) as ae:
        await ae.list_users()
        async with httpx.AsyncClient(base_url=world.a.url) as sim:
            await sim.post(
                "/_sim/oauth", json={"revoke_client_secret": True, "revoke_tokens": True}
            )
        with pytest.raises(SfCredentialsRefused) as refused:
            await ae.list_users()

    assert refused.value.error_code == "invalid_client"
    assert world.ae.calls() == [200, 401]
    assert world.a.token_requests() == [200, 400]
    assert ae.outcomes["no_token"] == 1


async def test_a_rotated_client_secret_is_refused_in_its_old_form(world: World) -> None:
    async with httpx.AsyncClient(base_url=world.a.url) as sim:
        rotated = (await sim.post("/_sim/oauth", json={"rotate_client_secret": True})).json()

    async with SfTokenSource(world.a.url, "app-a", "a-secret") as stale:
        with pytest.raises(SfCredentialsRefused):
            await stale.token()
    async with SfTokenSource(world.a.url, "app-a", rotated["client_secret"]) as fresh:
        token = await fresh.token()

    assert rotated["client_secret"] != "a-secret"
    assert token.scopes == {"api", "pardot_api"}


async def test_a_tenants_clients_built_from_the_simulators_reach_both_systems(
    world: World,
) -> None:
    unit = "0Uv5e000000UnitCAA"
    simulated = simulated_connections(
        "acme",
        EmbeddedSf(world.a.state, world.a.url, "acme"),
        EmbeddedAe(world.ae, world.ae_url),
        unit,
    )

    async with TenantClients.open(simulated) as clients:
        user = await clients.sf.get_user(world.alice)
        first = await clients.ae.first_user()

    assert user["Email"] == "alice@example.com"
    assert first is not None and first.email == "rep@example.com"
    assert world.ae.business_units[unit] == world.a.state.org_id
    assert world.a.token_requests() == [200]
