"""Fixtures and helpers of the /v1 API tests (no tests here): the receiver app with the API on
the real Postgres and RabbitMQ, served over loopback, and keys of every scope."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from services.bootstrap import create_app
from services.common.crypto import new_key_spec
from services.common.runtime import Runtime, build_runtime
from services.common.settings import Settings
from services.common.sfid import to18
from services.common.web import serve_app

OPERATOR_KEY = f"operator-{uuid.uuid4().hex}"
SECRETS_KEY = new_key_spec()
ACME = "acme"
GLOBEX = "globex"
ALICE_SF, BOB_SF = "0055g0000Zti3ElAQI", "0055g0000M6fuVCAQY"
CAROL_SF, DAVE_SF = "0055g0000UHNjcrAQD", "0055g00002X7EufAAF"
CONNECTOR_SF = "0055g00000ePONxAAO"
QUEUE = "00G5g0000QQQdLAEQ1"


def sf_id(prefix: str, n: int) -> str:
    """A valid 18-character SF id: `prefix`, then `n` in 12 digits, then the checksum."""
    return to18(f"{prefix}{n:012d}")


GLOBEX_ORG = sf_id("00D", 7)
GLOBEX_CONNECTOR = sf_id("005", 7)


@dataclass
class Api:
    """An HTTP client of the running app; `key=` picks whose API key a call uses."""

    http: httpx.AsyncClient
    runtime: Runtime
    url: str
    keys: dict[str, str] = field(default_factory=dict)

    async def call(
        self, method: str, path: str, *, key: str | None = "operator", **kwargs: Any
    ) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            token = OPERATOR_KEY if key == "operator" else self.keys.get(key, key)
            headers["Authorization"] = f"Bearer {token}"
        return await self.http.request(method, path, headers=headers, **kwargs)

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.call("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.call("POST", path, **kwargs)

    async def patch(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.call("PATCH", path, **kwargs)

    async def put(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.call("PUT", path, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.call("DELETE", path, **kwargs)

    async def new_key(self, tenant: str, *scopes: str) -> str:
        response = await self.post(
            f"/v1/tenants/{tenant}/api-keys", json={"name": "test", "scopes": list(scopes)}
        )
        assert response.status_code == 201, response.text
        return str(response.json()["key"])


def api_settings(base: Settings) -> Settings:
    return base.model_copy(
        update={"operator_key": SecretStr(OPERATOR_KEY), "secrets_key": SecretStr(SECRETS_KEY)}
    )


def error(response: httpx.Response) -> dict[str, Any]:
    """The error body, checked to have the one shape every /v1 error has."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    return dict(body["error"])


async def create_globex(api: Api) -> None:
    response = await api.post(
        "/v1/tenants",
        json={
            "id": GLOBEX,
            "salesforceOrgId": GLOBEX_ORG,
            "connectorUserId": GLOBEX_CONNECTOR,
            "syncMode": "contacts",
        },
    )
    assert response.status_code == 201, response.text


@pytest.fixture
async def api(base_settings: Settings, clean: None) -> AsyncIterator[Api]:
    """acme (from tenant.json) and globex, with keys `read`, `write`, `admin` of acme and
    `globex` (admin of globex)."""
    runtime = build_runtime(api_settings(base_settings))
    async with serve_app(create_app(runtime)) as url, httpx.AsyncClient(base_url=url) as http:
        client = Api(http, runtime, url)
        await create_globex(client)
        for scope in ("read", "write", "admin"):
            client.keys[scope] = await client.new_key(ACME, scope)
        client.keys["globex"] = await client.new_key(GLOBEX, "admin")
        yield client
    await runtime.close()
