"""A tenant's SF and AE clients, built from its connections and sharing one OAuth token."""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from services.common.ae_client import AeClient
from services.common.connections import TenantConnections
from services.common.sf_auth import SfTokenSource
from services.common.sf_client import SfClient


@dataclass
class TenantClients:
    tenant_id: str
    tokens: SfTokenSource
    sf: SfClient
    ae: AeClient

    @classmethod
    def open(
        cls,
        connections: TenantConnections,
        *,
        timeout: float = 10.0,
        sf_options: dict[str, Any] | None = None,
        ae_options: dict[str, Any] | None = None,
    ) -> TenantClients:
        """The clients of `connections`; close them with `aclose` (or `async with`).

        `sf_options` and `ae_options` go to SfClient and AeClient (retries, AE's concurrency
        and daily quota)."""
        tokens = SfTokenSource.for_connection(connections.salesforce, timeout=timeout)
        engagement = connections.engagement
        return cls(
            tenant_id=connections.tenant_id,
            tokens=tokens,
            sf=SfClient(tokens, timeout=timeout, **(sf_options or {})),
            ae=AeClient(
                engagement.base_url,
                tokens,
                engagement.business_unit_id,
                timeout=timeout,
                **(ae_options or {}),
            ),
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.sf.aclose()
        await self.ae.aclose()
        await self.tokens.aclose()
