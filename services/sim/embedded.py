"""The simulators as the embedded default runs them: seeded from the store, served in-process,
and a wait for everything put in to be applied and sent (the demo and the tests use it)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from pydantic import SecretStr
from sqlalchemy import select

from services.common.connections import (
    EngagementConnection,
    SalesforceConnection,
    TenantConnections,
)
from services.common.db.store import pending_effects
from services.common.db.tables import ae_users, queues, sf_users, tenants
from services.common.endpoints import sf_outbound_url
from services.common.runtime import Runtime
from services.common.web import serve_app
from services.sim.ae import AeSimState, create_ae_app
from services.sim.sf.app import create_sf_app
from services.sim.sf.org import SfSimState


@dataclass
class EmbeddedAe:
    state: AeSimState
    url: str


@dataclass
class EmbeddedSf:
    state: SfSimState
    url: str
    tenant: str  # the tenant whose org the embedded SF plays


async def start_ae(
    runtime: Runtime,
    stack: contextlib.AsyncExitStack,
    *,
    trusted: EmbeddedSf | None,
    business_unit_id: str,
) -> EmbeddedAe:
    """The embedded AE, whose business unit belongs to the `trusted` SF simulator's org: it
    admits that org's tokens (linked to no SF simulator, it admits any bearer token)."""
    state = AeSimState()
    if trusted is not None:
        state.tokens = trusted.state.tokens
        state.add_business_unit(business_unit_id, trusted.state.org_id)
    await seed_ae_sim(runtime, state)
    url = await stack.enter_async_context(serve_app(create_ae_app(state)))
    return EmbeddedAe(state, url)


async def start_sf(runtime: Runtime, stack: contextlib.AsyncExitStack) -> EmbeddedSf | None:
    seeded = await seed_sf_sim(runtime)
    if seeded is None:
        return None
    tenant, state = seeded
    url = await stack.enter_async_context(serve_app(create_sf_app(state)))
    return EmbeddedSf(state, url, tenant)


async def seed_sf_sim(runtime: Runtime) -> tuple[str, SfSimState] | None:
    """The embedded SF is the org of the first tenant: its users, queues and connector user."""
    async with runtime.engine.connect() as conn:
        tenant = (await conn.execute(select(tenants).order_by(tenants.c.created_at))).first()
        if tenant is None:
            return None
        state = SfSimState(org_id=tenant.salesforce_org_id, api_user_id=tenant.connector_user_id)
        users = await conn.execute(select(sf_users).where(sf_users.c.tenant_id == tenant.id))
        for user in users:
            state.add_user(user.name or user.id, user.email, active=user.active, user_id=user.id)
        found = await conn.execute(select(queues).where(queues.c.tenant_id == tenant.id))
        for queue in found:
            state.add_queue(queue.name, queue_id=queue.id)
    return tenant.id, state


async def seed_ae_sim(runtime: Runtime, state: AeSimState) -> None:
    """The embedded AE knows the users of every tenant in the store, as the real one would."""
    async with runtime.engine.connect() as conn:
        for row in await conn.execute(select(ae_users)):
            if row.id not in state.users:
                state.add_user(
                    row.email or f"user{row.id}@example.com",
                    user_id=row.id,
                    first_name=row.name or "",
                    is_active=row.active,
                )


def simulated_connections(
    tenant_id: str, sf: EmbeddedSf, ae: EmbeddedAe, business_unit_id: str
) -> TenantConnections:
    """A tenant's connections when the simulators are its systems (nothing stored): the SF
    simulator's connected app, and `business_unit_id`, which the AE simulator is told belongs
    to the SF simulator's org."""
    secret = sf.state.client_secret
    ae.state.add_business_unit(business_unit_id, sf.state.org_id)
    return TenantConnections(
        tenant_id=tenant_id,
        salesforce=SalesforceConnection(
            login_url=sf.url,
            client_id=sf.state.client_id,
            client_secret=SecretStr(secret) if secret is not None else None,
        ),
        engagement=EngagementConnection(base_url=ae.url, business_unit_id=business_unit_id),
        updated_at=datetime.now(UTC),
    )


def point_outbound_messages(sf: EmbeddedSf, receiver_url: str, endpoint_key: str | None) -> None:
    """SF's outbound-message actions, as an admin would set them up: the receiver's URLs with
    the tenant's endpoint key (without one, the receiver refuses them with 401)."""
    sf.state.outbound.configure(
        created_url=sf_outbound_url(receiver_url, sf.tenant, "record-created", endpoint_key),
        reassigned_url=sf_outbound_url(receiver_url, sf.tenant, "record-reassigned", endpoint_key),
    )


class _Settled(Protocol):
    settled: int


class Running(Protocol):
    """What `wait_until_idle` reads of a started set of roles (`services.bootstrap.Running`)."""

    @property
    def runtime(self) -> Runtime: ...

    @property
    def stats(self) -> Mapping[str, _Settled]: ...

    @property
    def sf_sim(self) -> SfSimState | None: ...


async def wait_until_idle(
    live: Running, *, settled: int | None = None, within: float = 30.0
) -> None:
    """Wait until everything put in has been applied and sent, three checks in a row.

    `settled` is the number of events the caller put in (SF notifications it posted plus AE
    webhooks); the notifications the embedded SF simulator sent back are added as they are
    acked. Without `settled`, the queues must be empty (good enough for a person watching).
    """
    quiet = 0
    async with asyncio.timeout(within):
        while quiet < 3:
            done = sum(s.settled for s in live.stats.values())
            if settled is not None:
                busy = done < settled + _sf_sim_acked(live.sf_sim)
            else:
                depths = await live.runtime.broker.queue_depths()
                busy = any(v for k, v in depths.items() if k != "dead-letters")
            busy = busy or (live.sf_sim is not None and live.sf_sim.outbound.pending_count() > 0)
            busy = busy or await pending_effects(live.runtime.engine) > 0
            quiet = 0 if busy else quiet + 1
            await asyncio.sleep(0.02)


def _sf_sim_acked(sf_sim: SfSimState | None) -> int:
    if sf_sim is None:
        return 0
    return sum(len(d.notification_ids) for d in sf_sim.outbound.deliveries if d.acked)
