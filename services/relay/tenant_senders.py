"""Each effect leaves through its own tenant's systems: the tenant's SF org and AE business unit.

A tenant with stored connections (`tenant_connections`) is sent to with clients built from them,
one set per tenant, sharing one OAuth token between SF and AE. A tenant without is sent to with
the default clients (the OWNERSYNC_SF_* and OWNERSYNC_AE_* settings, or the simulators), when
there are some. Clients are kept while the tenant's connections are unchanged: every
`refresh` seconds the row's `updated_at` is looked at again, so a fixed secret is picked up.

A tenant whose connection cannot be used (none set, its secret unreadable, or its connected app
refused with `invalid_client`) is *held*: its effects wait and are tried again with backoff, the
reason is their `last_error` and `ownersync_relay_tenant_held{tenant}` is 1, while every other
tenant's effects keep flowing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common import metrics
from services.common.ae_client import AeCallLimits, AeClient
from services.common.connections import connections_from_row
from services.common.crypto import KeyRing, SecretsKeyMissing, SecretUnreadable
from services.common.db.tables import tenant_connections
from services.common.domain import (
    AeProspectUpsert,
    Effect,
    Learned,
    RecordState,
    SfOwnerReassign,
    SfRecordUpsert,
    Target,
)
from services.common.sf_auth import SfCredentialsRefused
from services.common.tenant_clients import TenantClients
from services.relay.relay import Attempt, Held, Senders
from services.relay.senders import ae_prospect_sender, sf_record_sender

log = logging.getLogger("ownersync.relay")


class TenantHeld(Held):
    """The tenant's connection cannot be used now: its effects wait, no one else's do."""


@dataclass
class _Entry:
    senders: Senders | None  # None: held, see `reason`
    clients: TenantClients | None
    updated_at: datetime | None
    looked_at: float
    reason: str = ""


class TenantSenders:
    """`Senders` by tenant, with the interface of `Senders` (`send`, `kinds`, `targets`)."""

    def __init__(
        self,
        engine: AsyncEngine,
        ring: KeyRing | None,
        default: Senders | None = None,
        *,
        refresh: float = 30.0,
        timeout: float = 10.0,
        ae_max_concurrency: int = 5,
        ae_daily_quota: int | None = None,
        ae_quota_timezone: str = "UTC",
        ae_limits: Callable[[str], AeCallLimits] | None = None,
        default_ae: AeClient | None = None,
    ) -> None:
        """`ae_limits` gives the limits of a business unit shared with the other relay
        replicas (None: counted in this process only)."""
        self.engine = engine
        self.ring = ring
        self.default = default
        self.refresh = refresh
        self.timeout = timeout
        self.ae_options: dict[str, Any] = {
            "max_concurrency": ae_max_concurrency,
            "daily_quota": ae_daily_quota,
            "quota_timezone": ae_quota_timezone,
        }
        self.ae_limits = ae_limits
        self.default_ae = default_ae  # the AE client of `default`, for bulk mode
        self._entries: dict[str, _Entry] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._held: set[str] = set()

    @property
    def kinds(self) -> list[str]:
        # Every tenant's connections write to both systems.
        return [AeProspectUpsert.kind, SfRecordUpsert.kind, SfOwnerReassign.kind]

    @property
    def targets(self) -> list[Target]:
        return [AeProspectUpsert.target, SfRecordUpsert.target]

    async def send(self, record: RecordState, effect: Effect, attempt: Attempt) -> Learned:
        tenant = attempt.tenant_id
        entry = await self._entry(tenant)
        if entry.senders is None:
            raise TenantHeld(entry.reason)
        try:
            learned = await entry.senders.send(record, effect, attempt)
        except SfCredentialsRefused as exc:
            reason = f"tenant {tenant}: Salesforce refused its connected app ({exc})"
            self._hold(tenant, entry, reason)
            raise TenantHeld(reason) from exc
        entry.reason = ""
        if tenant in self._held:
            self._held.discard(tenant)
            log.info("effects of %s flow again", tenant)
            metrics.RELAY_TENANT_HELD.labels(tenant).set(0)
        return learned

    async def ae_client(self, tenant: str) -> AeClient | None:
        """The tenant's AE client (bulk mode's imports use it): None while it is held."""
        entry = await self._entry(tenant)
        if entry.senders is None:
            return None
        return entry.clients.ae if entry.clients is not None else self.default_ae

    async def aclose(self) -> None:
        for entry in self._entries.values():
            if entry.clients is not None:
                await entry.clients.aclose()
        self._entries.clear()

    def _hold(self, tenant: str, entry: _Entry, reason: str) -> None:
        if tenant not in self._held or entry.reason != reason:
            log.warning("effects of %s held: %s", tenant, reason)
        self._held.add(tenant)
        entry.reason = reason
        metrics.RELAY_TENANT_HELD.labels(tenant).set(1)

    async def _entry(self, tenant: str) -> _Entry:
        # A held tenant's row is looked at on each try (its effects back off meanwhile), so
        # fixed connections are used at once; a flowing tenant's every `refresh` seconds.
        now = asyncio.get_running_loop().time()
        if (entry := self._usable(tenant, now)) is not None:
            return entry
        async with self._locks.setdefault(tenant, asyncio.Lock()):
            if (entry := self._usable(tenant, now)) is not None:
                return entry  # another send of this tenant looked while we waited
            entry = self._entries.get(tenant)
            async with self.engine.connect() as conn:
                query = select(tenant_connections).where(tenant_connections.c.tenant_id == tenant)
                row = (await conn.execute(query)).mappings().first()
            updated_at = row["updated_at"] if row is not None else None
            if entry is not None and entry.updated_at == updated_at and entry.senders is not None:
                entry.looked_at = now  # unchanged and usable: keep the clients and their token
                return entry
            if entry is not None and entry.clients is not None:
                await entry.clients.aclose()
            fresh = self._open(tenant, row, updated_at, now)
            self._entries[tenant] = fresh
            if fresh.senders is None:
                self._hold(tenant, fresh, fresh.reason)
            return fresh

    def _usable(self, tenant: str, now: float) -> _Entry | None:
        """The tenant's entry while it flows and was looked at less than `refresh` ago."""
        entry = self._entries.get(tenant)
        if entry is not None and not entry.reason and now - entry.looked_at < self.refresh:
            return entry
        return None

    def _open(
        self, tenant: str, row: Mapping[Any, Any] | None, updated_at: datetime | None, now: float
    ) -> _Entry:
        if row is None:
            if self.default is not None:
                return _Entry(self.default, None, None, now)
            return _Entry(
                None,
                None,
                None,
                now,
                f"tenant {tenant} has no connections: set them with "
                f"`ownersync tenant connections set {tenant}`",
            )
        try:
            connections = connections_from_row(row, self.ring)
            ae_options = dict(self.ae_options)
            if self.ae_limits is not None:
                unit = connections.engagement.business_unit_id
                ae_options["shared_limits"] = self.ae_limits(unit)
            clients = TenantClients.open(connections, timeout=self.timeout, ae_options=ae_options)
        except (SecretsKeyMissing, SecretUnreadable, ValueError) as exc:
            return _Entry(None, None, updated_at, now, f"tenant {tenant}: {exc}")
        metrics.API_CALLS.track("ae", clients.ae, tenant)
        metrics.API_CALLS.track("sf", clients.sf, tenant)
        senders = Senders(ae=ae_prospect_sender(clients.ae), sf=sf_record_sender(clients.sf))
        log.info("effects of %s go to its own SF org and AE business unit", tenant)
        return _Entry(senders, clients, updated_at, now)
