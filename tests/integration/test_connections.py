"""A tenant's connections through the /v1 API: set (secrets sealed), shown masked, the client
secret rotated, checked against the SF and AE simulators (each failure named), resealed under a
new key, and no secret in any answer, row or log line.

On the embedded store (SQLite, in-process broker): nothing here needs Postgres or RabbitMQ.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import select
from typer.testing import CliRunner, Result

from services.admin.connections import reseal_secrets
from services.admin.tenant_file import ConnectionsFile, load_tenant
from services.bootstrap import create_app
from services.cli import app as cli_app
from services.common.connections import load_connections
from services.common.crypto import KeyRing, new_key_spec
from services.common.db.engine import migrate
from services.common.db.tables import tenant_connections
from services.common.runtime import Runtime, build_runtime
from services.common.settings import Settings
from services.common.sfid import to18
from services.common.web import free_port, serve_app
from services.demo.replay import demo_tenant
from services.sim.ae import AeSimState, create_ae_app
from services.sim.sf import SfSimState, create_sf_app
from services.sim.sf.tokens import AccessTokens

pytestmark = pytest.mark.integration

OPERATOR_KEY = "operator-key-for-the-connection-tests-0123456789"
KEY_V1 = new_key_spec("v1")
CLIENT_ID = "3MVG9-acme-connected-app"
CLIENT_SECRET = "acme-consumer-secret-5f1c0a77d2e94b3c"
NEW_SECRET = "acme-consumer-secret-rotated-93ab61e0c4"
UNIT = to18("0Uv5g000000Acme")
OTHER_UNIT = to18("0Uv5g00000Other")
OTHER_ORG = to18("00D5g00000Other")
ACME = demo_tenant()
PATH = f"/v1/tenants/{ACME.tenant}/connections"


@dataclass
class World:
    api: httpx.AsyncClient
    runtime: Runtime
    org: SfSimState
    ae: AeSimState
    sf_url: str
    ae_url: str

    def body(self, **salesforce: Any) -> dict[str, Any]:
        sf = {"loginUrl": self.sf_url, "clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET}
        return {
            "salesforce": {**sf, **salesforce},
            "engagement": {"baseUrl": self.ae_url, "businessUnitId": UNIT},
        }

    async def put(self, body: dict[str, Any] | None = None) -> httpx.Response:
        return await self.api.put(PATH, json=body if body is not None else self.body())

    async def check(self) -> dict[str, Any]:
        response = await self.api.post(f"{PATH}/check")
        assert response.status_code == 200, response.text
        return dict(response.json())


@pytest.fixture
def database(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'ownersync.db'}"
    migrate(url)
    yield url


@pytest.fixture
async def world(database: str) -> AsyncIterator[World]:
    settings = Settings(
        database_url=database,
        amqp_url=None,
        operator_key=SecretStr(OPERATOR_KEY),
        secrets_key=SecretStr(KEY_V1),
    )
    runtime = build_runtime(settings)
    async with runtime.engine.begin() as conn:
        await load_tenant(conn, ACME)
    # The tenant's org and business unit, and another org's, as one process serves them.
    tokens = AccessTokens()
    org = SfSimState(
        org_id=ACME.salesforce_org_id,
        api_user_id=ACME.connector_user,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        tokens=tokens,
    )
    ae = AeSimState(tokens=tokens)
    ae.add_business_unit(UNIT, org.org_id)
    ae.add_business_unit(OTHER_UNIT, OTHER_ORG)
    ae.add_user("alice@example.com", user_id=101)
    async with (
        serve_app(create_app(runtime)) as api_url,
        serve_app(create_sf_app(org)) as sf_url,
        serve_app(create_ae_app(ae)) as ae_url,
        httpx.AsyncClient(
            base_url=api_url,
            headers={"Authorization": f"Bearer {OPERATOR_KEY}"},
            timeout=30,  # a check calls out to both simulators: slow on a loaded machine
        ) as api,
    ):
        yield World(api, runtime, org, ae, sf_url, ae_url)
    await runtime.close()


async def stored_row(world: World) -> dict[str, Any]:
    async with world.runtime.engine.connect() as conn:
        row = (await conn.execute(select(tenant_connections))).mappings().one()
    return dict(row)


# --- set and show -----------------------------------------------------------------------


async def test_connections_set_are_shown_masked_and_stored_sealed(world: World) -> None:
    before = (await world.api.get(PATH)).json()
    put = await world.put()
    shown = await world.api.get(PATH)

    assert before == {"salesforce": None, "engagement": None, "updatedAt": None}
    assert put.status_code == 200, put.text
    assert shown.json() == put.json()
    assert shown.json()["salesforce"] == {
        "loginUrl": world.sf_url,
        "clientId": CLIENT_ID,
        "clientSecretSet": True,
        "clientSecretKeyId": "v1",
    }
    assert shown.json()["engagement"] == {"baseUrl": world.ae_url, "businessUnitId": UNIT}
    assert CLIENT_SECRET not in put.text + shown.text
    row = await stored_row(world)
    assert row["sf_client_secret_key_id"] == "v1"
    assert CLIENT_SECRET not in str(row)


async def test_a_first_setting_needs_a_secret_and_a_later_one_keeps_the_stored_one(
    world: World,
) -> None:
    no_secret = world.body()
    del no_secret["salesforce"]["clientSecret"]

    refused = await world.put(no_secret)
    await world.put()
    ciphertext = (await stored_row(world))["sf_client_secret_ciphertext"]
    renamed = await world.put(world.body(clientSecret=None, clientId="3MVG9-renamed-app"))

    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "client_secret_required"
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["salesforce"]["clientId"] == "3MVG9-renamed-app"
    assert (await stored_row(world))["sf_client_secret_ciphertext"] == ciphertext


async def test_plain_http_to_a_remote_host_is_refused(world: World) -> None:
    response = await world.put(world.body(loginUrl="http://login.salesforce.com"))

    assert response.status_code == 422
    assert "https" in response.text


async def test_another_tenants_business_unit_is_refused(world: World) -> None:
    await world.put()
    created = await world.api.post(
        "/v1/tenants",
        json={
            "id": "globex",
            "salesforceOrgId": OTHER_ORG,
            "connectorUserId": to18("0055g00000Other"),
        },
    )
    assert created.status_code == 201, created.text

    squat = await world.api.put("/v1/tenants/globex/connections", json=world.body())

    assert squat.status_code == 409
    assert squat.json()["error"]["code"] == "business_unit_in_use"


async def test_without_a_secrets_key_no_secret_is_stored_and_the_answer_says_why(
    world: World,
) -> None:
    world.runtime.settings = world.runtime.settings.model_copy(update={"secrets_key": None})

    response = await world.put()

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "secrets_key_missing"
    assert "set OWNERSYNC_SECRETS_KEY" in response.json()["error"]["message"]
    assert (await world.api.get(PATH)).json()["salesforce"] is None


# --- check ----------------------------------------------------------------------------------


async def test_check_against_the_simulators_is_ok_for_both_systems(world: World) -> None:
    await world.put()

    checked = await world.check()

    assert checked["salesforce"] == {
        "status": "ok",
        "code": None,
        "message": None,
        "user": ACME.connector_user,
    }
    assert checked["engagement"]["status"] == "ok" and checked["engagement"]["user"] == "101"
    assert world.ae.calls() == [200]


async def test_check_without_connections_says_not_set(world: World) -> None:
    checked = await world.check()

    assert checked["salesforce"]["status"] == checked["engagement"]["status"] == "not_set"


async def test_check_after_sf_revokes_the_client_secret_fails_with_invalid_client(
    world: World,
) -> None:
    await world.put()
    world.org.revoke_client_secret()

    checked = await world.check()

    assert checked["salesforce"]["status"] == "failed"
    assert checked["salesforce"]["code"] == "invalid_client"
    assert checked["engagement"]["code"] == "no_token"
    assert "invalid_client" in checked["engagement"]["message"]
    assert world.ae.calls() == []


async def test_check_names_a_token_without_the_pardot_api_scope(world: World) -> None:
    await world.put()
    world.org.oauth_scopes = frozenset({"api"})

    checked = await world.check()

    assert checked["salesforce"]["status"] == "ok"
    assert checked["engagement"]["status"] == "failed"
    assert checked["engagement"]["code"] == "missing_scope"
    assert world.ae.calls() == [401, 401]


async def test_check_of_a_business_unit_of_another_org_is_unauthorized(world: World) -> None:
    body = world.body()
    body["engagement"]["businessUnitId"] = OTHER_UNIT
    await world.put(body)

    checked = await world.check()

    assert checked["engagement"]["code"] == "unauthorized"
    assert OTHER_UNIT in checked["engagement"]["message"]


async def test_check_of_an_unreachable_host_says_so(world: World) -> None:
    await world.put(world.body(loginUrl=f"http://127.0.0.1:{free_port()}"))

    checked = await world.check()

    assert checked["salesforce"]["code"] == "unreachable"
    assert checked["engagement"]["code"] == "no_token"


# --- rotation -------------------------------------------------------------------------------


async def test_a_rotated_client_secret_is_used_from_then_on(world: World) -> None:
    await world.put()
    world.org.rotate_client_secret(NEW_SECRET)
    stale = await world.check()

    same = await world.api.post(
        f"{PATH}/client-secret/rotate", json={"clientSecret": CLIENT_SECRET}
    )
    rotated = await world.api.post(
        f"{PATH}/client-secret/rotate", json={"clientSecret": NEW_SECRET}
    )
    fresh = await world.check()

    assert stale["salesforce"]["code"] == "invalid_client"
    assert same.status_code == 409 and same.json()["error"]["code"] == "same_secret"
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["salesforce"]["clientSecretSet"] is True
    assert NEW_SECRET not in rotated.text
    assert fresh["salesforce"]["status"] == fresh["engagement"]["status"] == "ok"


async def test_resealing_moves_every_secret_to_the_new_key(world: World) -> None:
    await world.put()
    key_v2 = new_key_spec("v2")

    async with world.runtime.engine.begin() as conn:
        first = await reseal_secrets(conn, KeyRing.parse(f"{key_v2},{KEY_V1}"))
    async with world.runtime.engine.begin() as conn:
        again = await reseal_secrets(conn, KeyRing.parse(f"{key_v2},{KEY_V1}"))
    async with world.runtime.engine.connect() as conn:
        opened = await load_connections(conn, ACME.tenant, KeyRing.parse(key_v2))

    assert (first.resealed, first.key_id, again.resealed) == (1, "v2", 0)
    assert (await stored_row(world))["sf_client_secret_key_id"] == "v2"
    assert opened is not None and opened.salesforce.client_secret is not None
    assert opened.salesforce.client_secret.get_secret_value() == CLIENT_SECRET
    assert CLIENT_SECRET not in repr(opened)


# --- secrets never logged -------------------------------------------------------------------


async def test_no_secret_reaches_a_log_line_while_setting_rotating_and_checking(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    answers = [await world.put(), await world.api.get(PATH)]
    await world.check()
    world.org.rotate_client_secret(NEW_SECRET)
    await world.check()  # fails: invalid_client, with the old secret sent
    answers.append(
        await world.api.post(f"{PATH}/client-secret/rotate", json={"clientSecret": NEW_SECRET})
    )
    await world.check()
    answers.append(await world.put(world.body(clientSecret="short")))  # refused: too short

    logged = caplog.text + "".join(str(r.args) + str(r.__dict__) for r in caplog.records)
    assert caplog.records, "the calls above log something: the capture works"
    for secret in (CLIENT_SECRET, NEW_SECRET, KEY_V1.split(":")[1]):
        assert secret not in logged
        assert all(secret not in answer.text for answer in answers)


# --- the tenant file and the CLI ------------------------------------------------------------


async def test_tenant_file_connections_block_is_stored_sealed(world: World) -> None:
    data = ACME.model_copy(
        update={
            "connections": ConnectionsFile.model_validate(
                {
                    "salesforce": {
                        "login_url": world.sf_url,
                        "client_id": CLIENT_ID,
                        "client_secret": CLIENT_SECRET,
                    },
                    "engagement": {"base_url": world.ae_url, "business_unit_id": UNIT},
                }
            )
        }
    )
    ring = KeyRing.parse(KEY_V1)
    async with world.runtime.engine.begin() as conn:
        loaded = await load_tenant(conn, data, ring)
    assert loaded["connections"] == 1
    row = await stored_row(world)
    assert CLIENT_SECRET not in repr(row)
    async with world.runtime.engine.connect() as conn:
        opened = await load_connections(conn, ACME.tenant, ring)
    assert opened is not None and opened.salesforce.client_secret is not None
    assert opened.salesforce.client_secret.get_secret_value() == CLIENT_SECRET
    assert (await world.check())["salesforce"]["status"] == "ok"


def _cli(database: str, key: str, *args: str) -> Result:
    env = {"OWNERSYNC_DATABASE_URL": database, "OWNERSYNC_SECRETS_KEY": key}
    return CliRunner().invoke(cli_app, list(args), env=env)


async def test_cli_sets_checks_and_reseals_connections_without_showing_the_secret(
    world: World, database: str
) -> None:
    async def cli(*args: str, key: str = KEY_V1) -> Result:
        # In a thread: the CLI runs its own event loop while this one serves the simulators.
        return await asyncio.to_thread(_cli, database, key, *args)

    set_ = await cli(
        "tenant", "connections", "set", ACME.tenant,
        "--sf-login-url", world.sf_url, "--sf-client-id", CLIENT_ID,
        "--sf-client-secret", CLIENT_SECRET,
        "--ae-base-url", world.ae_url, "--ae-business-unit", UNIT,
    )  # fmt: skip
    assert set_.exit_code == 0, set_.output
    shown = await cli("tenant", "connections", "show", ACME.tenant)
    checked = await cli("tenant", "check", ACME.tenant)
    assert checked.exit_code == 0, checked.output
    assert checked.output.count(" ok ") == 2, checked.output

    world.org.revoke_client_secret()
    refused = await cli("tenant", "check", ACME.tenant)
    assert refused.exit_code == 1
    assert "invalid_client" in refused.output

    new_ring = f"{new_key_spec('v2')},{KEY_V1}"
    resealed = await cli("secrets", "rotate", key=new_ring)
    assert resealed.exit_code == 0, resealed.output
    assert "1 secret(s) sealed under key v2" in resealed.output
    assert (await stored_row(world))["sf_client_secret_key_id"] == "v2"
    for result in (set_, shown, checked, refused, resealed):
        assert CLIENT_SECRET not in result.output
