"""Tenants as boundaries on the way out: each tenant's effects go to its own SF org and AE
business unit, and a tenant whose connected app is refused is held without holding anyone else.

Two tenants, each with its own SF simulator (org id, connected app) and AE simulator (business
unit), run through the whole path: SF's outbound message, the syncer's decision, the relay's
call to AE. On the embedded store (SQLite, in-process broker).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from services.admin.connections import rotate_client_secret
from services.admin.schemas import ClientSecretRotation
from services.admin.tenant_file import ConnectionsFile, TenantFile, load_tenant
from services.bootstrap import ROLES, running
from services.common import metrics
from services.common.crypto import new_key_spec
from services.common.db.engine import migrate
from services.common.db.tables import outbox
from services.common.endpoints import sf_outbound_url
from services.common.runtime import build_runtime
from services.common.settings import Settings
from services.common.sfid import to18
from services.common.web import serve_app
from services.demo.replay import demo_tenant
from services.sim.ae import AeSimState, create_ae_app
from services.sim.sf import SfSimState, create_sf_app
from services.sim.sf.tokens import AccessTokens

KEY = new_key_spec("v1")
ACME = demo_tenant()
BOB = ACME.salesforce_users["bob"]  # connected to AE user 102 in both tenants


@dataclass
class Org:
    """One tenant's systems: its SF org and its AE business unit."""

    tenant: TenantFile
    sf: SfSimState
    ae: AeSimState
    unit: str
    sf_url: str = ""
    ae_url: str = ""

    def emails_in_ae(self) -> list[str]:
        return sorted(p["email"] for p in self.ae.prospects.values())

    def create_lead(self, email: str) -> None:
        fields = {"Email": email, "LastName": "Lee", "Company": "Initech", "OwnerId": BOB}
        self.sf.create_record("Lead", fields, auto_assign=False)


def _org(tenant: str, org_id: str, unit: str, secret: str) -> Org:
    org_id, unit = to18(org_id), to18(unit)
    tokens = AccessTokens()
    sf = SfSimState(
        org_id=org_id,
        api_user_id=ACME.connector_user,
        client_id=f"3MVG9-{tenant}",
        client_secret=secret,
        tokens=tokens,
    )
    for name, sf_user in ACME.salesforce_users.items():
        sf.add_user(name, f"{name}@{tenant}.example", user_id=sf_user)
    ae = AeSimState(tokens=tokens)
    ae.add_business_unit(unit, org_id)
    for name, ae_user in ACME.engagement_users.items():
        ae.add_user(f"{name}@{tenant}.example", user_id=ae_user)
    data = ACME.model_copy(
        update={
            "tenant": tenant,
            "salesforce_org_id": org_id,
            "webhook_secret": f"whsec_{tenant}_0123456789abcdef0123456789",
            "salesforce_endpoint_key": f"osek_{tenant}_0123456789abcdef0123456789abcdef",
        }
    )
    return Org(data, sf, ae, unit)


async def _until(check: Callable[[], bool], timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)


@dataclass
class World:
    north: Org
    south: Org
    settings: Settings

    async def outbox_rows(self, tenant: str) -> list[dict[str, Any]]:
        engine = build_runtime(self.settings).engine
        async with engine.connect() as conn:
            rows = await conn.execute(select(outbox).where(outbox.c.tenant_id == tenant))
            found = [dict(r._mapping) for r in rows]
        await engine.dispose()
        return found


@pytest.fixture
def database(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'ownersync.db'}"
    migrate(url)  # runs its own event loop: a sync fixture
    return url


@pytest.fixture
async def world(database: str) -> AsyncIterator[World]:
    north = _org("north", "00D5g00000North", "0Uv5g00000North", "north-secret-1")
    south = _org("south", "00D5g00000South", "0Uv5g00000South", "south-secret-1")
    settings = Settings(
        database_url=database,
        amqp_url=None,
        use_simulators=True,
        secrets_key=SecretStr(KEY),
        batch_wait_ms=5,
        relay_interval_ms=20,
        relay_coalesce_ms=0,
        port=0,  # any free port: tests run side by side
    )
    async with contextlib.AsyncExitStack() as stack:
        for org in (north, south):
            org.sf_url = await stack.enter_async_context(serve_app(create_sf_app(org.sf)))
            org.ae_url = await stack.enter_async_context(serve_app(create_ae_app(org.ae)))
        runtime = build_runtime(settings)
        stack.push_async_callback(runtime.close)
        async with runtime.engine.begin() as conn:
            for org in (north, south):
                connections = ConnectionsFile.model_validate(
                    {
                        "salesforce": {
                            "login_url": org.sf_url,
                            "client_id": org.sf.client_id,
                            "client_secret": org.sf.client_secret,
                        },
                        "engagement": {"base_url": org.ae_url, "business_unit_id": org.unit},
                    }
                )
                data = org.tenant.model_copy(update={"connections": connections})
                await load_tenant(conn, data, settings.keyring)
        stop = asyncio.Event()
        keys = {org.tenant.tenant: org.tenant.salesforce_endpoint_key for org in (north, south)}
        live = await stack.enter_async_context(
            running(settings, ROLES, stop, runtime=runtime, sf_endpoint_keys=keys)  # type: ignore[arg-type]
        )
        assert live.receiver_url is not None
        for org in (north, south):
            tenant, key = org.tenant.tenant, org.tenant.salesforce_endpoint_key
            org.sf.outbound.configure(
                created_url=sf_outbound_url(live.receiver_url, tenant, "record-created", key),
                reassigned_url=sf_outbound_url(live.receiver_url, tenant, "record-reassigned", key),
            )
            org.sf.outbound.start()
            stack.push_async_callback(org.sf.outbound.stop)
        yield World(north, south, settings)


async def test_each_tenants_effects_land_only_in_its_own_business_unit(world: World) -> None:
    world.north.create_lead("ann@north.example")
    world.south.create_lead("sam@south.example")

    await _until(lambda: bool(world.north.ae.prospects) and bool(world.south.ae.prospects))

    assert world.north.emails_in_ae() == ["ann@north.example"]
    assert world.south.emails_in_ae() == ["sam@south.example"]
    for org in (world.north, world.south):
        (prospect,) = org.ae.prospects.values()
        assert prospect["assignedUserId"] == 102  # bob, through the tenant's own mapping


async def test_a_refused_tenant_is_held_while_the_other_flows_then_its_effects_go_out_once(
    world: World,
) -> None:
    world.south.sf.revoke_client_secret()
    world.south.sf.revoke_tokens()

    world.south.create_lead("held@south.example")
    world.north.create_lead("flows@north.example")
    await _until(lambda: world.north.emails_in_ae() == ["flows@north.example"])
    await _until(lambda: metrics.RELAY_TENANT_HELD.labels("south")._value.get() == 1)

    assert world.south.ae.prospects == {}
    # Held, it waits (pending) between tries; a look may catch the relay trying again.
    async with asyncio.timeout(10):
        while (waiting := (await world.outbox_rows("south"))[0])["status"] != "pending":
            assert waiting["status"] == "sending"
            await asyncio.sleep(0.05)
    assert "refused its connected app" in waiting["last_error"]
    assert "invalid_client" in waiting["last_error"]

    # The admin makes a new consumer secret in SF and gives it to ownersync.
    new_secret = world.south.sf.rotate_client_secret("south-secret-2")
    engine = build_runtime(world.settings).engine
    async with engine.begin() as conn:
        rotation = ClientSecretRotation.model_validate({"clientSecret": new_secret})
        await rotate_client_secret(
            conn, "south", rotation, world.settings.keyring, datetime.now(UTC)
        )
    await engine.dispose()

    await _until(lambda: bool(world.south.ae.prospects), timeout=30)
    await asyncio.sleep(0.5)  # a second send would land by now
    assert world.south.emails_in_ae() == ["held@south.example"]
    assert world.north.emails_in_ae() == ["flows@north.example"]
    assert metrics.RELAY_TENANT_HELD.labels("south")._value.get() == 0
    (sent,) = await world.outbox_rows("south")
    assert sent["status"] == "done"
