"""The authorization matrix: every /v1 operation against every kind of key.

The operations and the scope each needs come from the API's own OpenAPI document, so a new
route is in the matrix the day it is added. For each operation: no key and a revoked key get
401; keys with a smaller scope get 403; keys with the scope (and the operator key) get past
authorization; a key of another tenant gets exactly the 404 a tenant that does not exist gets.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi import FastAPI

from services.api import v1_router
from tests.integration.test_api_support import ACME, ALICE_SF, GLOBEX, QUEUE, Api, error

pytest_plugins = ["tests.integration.test_api_support"]

_doc = FastAPI()
_doc.include_router(v1_router())
SPEC: dict[str, Any] = _doc.openapi()
OPERATIONS = [
    (method.upper(), path, op["security"][0]["ApiKey"][0])
    for path, ops in SPEC["paths"].items()
    for method, op in ops.items()
]
SAMPLES = {
    "sf_user_id": ALICE_SF,
    "ae_user_id": "101",
    "group_id": "7",
    "queue_id": QUEUE,
    "prospect_id": "1",
    "sf_record_id": "00Q5g0000ZWHszxEQD",
    "key_id": "0" * 16,
    "letter_id": "no-such-letter",
    "effect_id": "1",
}
RANK = {"read": 1, "write": 2, "admin": 3}
NOT_FOUND = {"error": {"code": "not_found", "message": "not found", "details": None}}


def url(path: str, tenant: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: tenant if m[1] == "tenant" else SAMPLES[m[1]], path)


async def call(api: Api, method: str, path: str, key: str | None, tenant: str = ACME) -> Any:
    body: dict[str, Any] | None = {} if method in ("POST", "PATCH", "PUT") else None
    return await api.call(method, url(path, tenant), key=key, json=body)


def test_every_operation_declares_the_scope_it_needs() -> None:
    assert len(OPERATIONS) >= 45
    for method, path, scope in OPERATIONS:
        tenant_scoped = path.startswith("/v1/tenants/{tenant}")
        assert scope in (("read", "write", "admin") if tenant_scoped else ("operator",)), path
        if method == "GET" and tenant_scoped and "api-keys" not in path:
            assert scope == "read", path


@pytest.mark.parametrize(
    ("method", "path", "scope"), OPERATIONS, ids=[f"{m} {p}" for m, p, _ in OPERATIONS]
)
async def test_authorization_matrix(api: Api, method: str, path: str, scope: str) -> None:
    revoked_key = await api.new_key(ACME, "admin")
    keys = (await api.get(f"/v1/tenants/{ACME}/api-keys", key="admin")).json()["items"]
    revoked_id = next(k["id"] for k in keys if revoked_key.split("_")[1] == k["id"])
    await api.delete(f"/v1/tenants/{ACME}/api-keys/{revoked_id}", key="admin")
    api.keys["globex_read"] = await api.new_key(GLOBEX, "read")

    for key in (None, "garbage", revoked_key):
        response = await call(api, method, path, key)
        assert response.status_code == 401, (key, response.text)
        assert error(response)["code"] == "unauthorized"

    if scope == "operator":
        for key in ("read", "write", "admin", "globex"):
            response = await call(api, method, path, key)
            assert response.status_code == 403 and error(response)["code"] == "forbidden"
        response = await call(api, method, path, "operator")
        assert response.status_code not in (401, 403), response.text
        return

    # Another tenant's key, whatever its scope: the 404 of a tenant that does not exist.
    for key in ("globex", "globex_read"):
        theirs = await call(api, method, path, key, tenant=ACME)
        nobody = await call(api, method, path, key, tenant="no-such-tenant")
        assert theirs.status_code == nobody.status_code == 404, theirs.text
        assert theirs.json() == nobody.json() == NOT_FOUND
    nobody = await call(api, method, path, "operator", tenant="no-such-tenant")
    assert nobody.status_code == 404 and nobody.json() == NOT_FOUND

    # Smaller scopes first: the allowed calls may change what later calls find.
    for key in ("read", "write", "admin", "operator"):
        response = await call(api, method, path, key)
        if key != "operator" and RANK[key] < RANK[scope]:
            assert response.status_code == 403, (key, response.text)
            assert error(response)["details"] == {"required": scope}
        else:
            assert response.status_code not in (401, 403), (key, response.text)
            assert response.json() != NOT_FOUND, (key, "the key's own tenant must be found")
