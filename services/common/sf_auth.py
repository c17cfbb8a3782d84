"""A tenant's Salesforce OAuth access token, as the SF and AE clients both use it.

AE API v5 takes the access token of the tenant's SF connected app (scope `pardot_api`), so one
token source serves both clients of a tenant: the token is fetched once (client credentials
against `{login_url}/services/oauth2/token`), shared by concurrent calls, and renewed once when
a caller reports it refused (a 401 from either system).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import httpx
from pydantic import SecretStr

from services.common.connections import SalesforceConnection
from services.common.sf_client import (
    TRANSPORT_ERRORS,
    SfApiError,
    SfRequestRejected,
    SfTransientError,
    parse_errors,
)
from services.common.sfid import InvalidSalesforceId, to18

SCOPES = ("api", "pardot_api")


class SfCredentialsRefused(SfRequestRejected):
    """Salesforce's OAuth endpoint refused the connected app (`invalid_client`, …): nothing
    sent with this connection can succeed until its credentials are fixed."""


@dataclass(frozen=True)
class SfToken:
    access_token: str = field(repr=False)
    instance_url: str
    scopes: frozenset[str] = frozenset()
    user_id: str | None = None  # the user the connected app acts as (None: not named)


class SfTokenSource:
    def __init__(
        self,
        login_url: str,
        client_id: str,
        client_secret: SecretStr | str,
        *,
        scopes: tuple[str, ...] = SCOPES,
        timeout: float = 10.0,
    ) -> None:
        self.login_url = login_url.rstrip("/")
        self._client_id = client_id
        self._client_secret = (
            client_secret if isinstance(client_secret, SecretStr) else SecretStr(client_secret)
        )
        self._scopes = scopes
        self._http = httpx.AsyncClient(timeout=timeout, headers={"Accept": "application/json"})
        self._token: SfToken | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0

    @classmethod
    def for_connection(
        cls, connection: SalesforceConnection, *, timeout: float = 10.0
    ) -> SfTokenSource:
        if connection.client_secret is None:
            raise ValueError(
                "this SF connection has no client secret: only the client-credentials flow is "
                "supported"
            )
        return cls(
            connection.login_url,
            connection.client_id,
            connection.client_secret,
            timeout=timeout,
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
        await self._http.aclose()

    async def token(self) -> SfToken:
        token = self._token
        if token is not None:
            return token
        async with self._lock:
            # Whoever held the lock before us may have fetched it already.
            if self._token is None:
                self._token = await self._fetch()
            return self._token

    async def renew(self, refused: SfToken) -> SfToken:
        """A token to use instead of `refused`: callers refused with the same token share one
        renewal, and a caller whose token was already replaced gets the replacement."""
        async with self._lock:
            if self._token is None or self._token is refused:
                self._token = None
                self._token = await self._fetch()
            return self._token

    async def _fetch(self) -> SfToken:
        form = {
            "grant_type": "client_credentials",
            "client_id": self._client_id,
            "client_secret": self._client_secret.get_secret_value(),
            "scope": " ".join(self._scopes),
        }
        self.fetches += 1
        try:
            response = await self._http.post(f"{self.login_url}/services/oauth2/token", data=form)
        except TRANSPORT_ERRORS as exc:
            raise SfTransientError(None, detail=f"{type(exc).__name__}: {exc}") from exc
        if response.is_success:
            return self._token_from(response)
        errors = parse_errors(response)
        if response.status_code >= 500:
            raise SfTransientError(response.status_code, errors)
        raise SfCredentialsRefused(response.status_code, errors)

    def _token_from(self, response: httpx.Response) -> SfToken:
        try:
            payload = response.json()
            access_token = str(payload["access_token"])
        except (ValueError, KeyError, TypeError):
            raise SfApiError(
                response.status_code, detail="the token answer holds no access_token"
            ) from None
        instance_url = str(payload.get("instance_url") or self.login_url).rstrip("/")
        granted = payload.get("scope")
        # Salesforce names the granted scopes when asked for some; none named: as asked.
        scopes = str(granted).split() if granted else self._scopes
        return SfToken(access_token, instance_url, frozenset(scopes), _user_of(payload.get("id")))


def _user_of(identity_url: object) -> str | None:
    """The user id at the end of the token's identity URL (`…/id/<org id>/<user id>`)."""
    if not isinstance(identity_url, str):
        return None
    try:
        return to18(identity_url.rstrip("/").rsplit("/", 1)[-1])
    except InvalidSalesforceId:
        return None
