"""/v1 tenants, connector settings, webhook secret rotation and API keys."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from services.admin.tenants import valid_webhook_secrets
from services.common.db.tables import api_keys, tenants
from tests.integration.api_support import (
    ACME,
    BOB_SF,
    CONNECTOR_SF,
    GLOBEX,
    GLOBEX_ORG,
    Api,
    error,
    sf_id,
)

pytestmark = pytest.mark.integration

NEW = {
    "id": "initech",
    "salesforceOrgId": sf_id("00D", 9)[:15],
    "connectorUserId": sf_id("005", 9),
}


async def test_operator_creates_a_tenant_whose_secret_is_shown_once(api: Api) -> None:
    response = await api.post("/v1/tenants", json=NEW)
    assert response.status_code == 201
    body = response.json()
    assert body["tenant"]["id"] == "initech"
    assert body["tenant"]["salesforceOrgId"] == sf_id("00D", 9)  # stored as 18 characters
    assert body["tenant"]["syncMode"] == "leads" and body["tenant"]["connectorVerified"] is False
    assert body["webhookSecret"].startswith("whsec_")
    shown = await api.get("/v1/tenants/initech")
    assert "webhookSecret" not in shown.json()
    connector = await api.get(f"/v1/tenants/initech/sf-users/{sf_id('005', 9)}")
    assert connector.status_code == 200 and connector.json()["active"] is True


async def test_creating_a_tenant_twice_or_on_a_taken_org_is_a_conflict(api: Api) -> None:
    assert (await api.post("/v1/tenants", json=NEW)).status_code == 201
    again = await api.post("/v1/tenants", json=NEW)
    assert again.status_code == 409 and error(again)["code"] == "tenant_exists"
    same_org = await api.post(
        "/v1/tenants", json={**NEW, "id": "other", "salesforceOrgId": GLOBEX_ORG}
    )
    assert same_org.status_code == 409 and error(same_org)["code"] == "org_in_use"


async def test_tenant_creation_refuses_bad_ids_and_unknown_fields(api: Api) -> None:
    cases = [
        {**NEW, "id": "Upper Case"},
        {**NEW, "salesforceOrgId": sf_id("005", 1)},  # a user id, not an org id
        {**NEW, "connectorUserId": "not-an-id"},
        {**NEW, "syncMode": "accounts"},
        {**NEW, "webhookSecret": "short"},
        {**NEW, "surprise": 1},
        {**NEW, "salesforce_org_id": NEW["salesforceOrgId"]},  # camelCase only
    ]
    for body in cases:
        response = await api.post("/v1/tenants", json=body)
        assert response.status_code == 422, body
        assert error(response)["code"] == "validation_error"
        assert error(response)["details"], body


async def test_only_the_operator_key_creates_or_lists_tenants(api: Api) -> None:
    for key in ("read", "write", "admin"):
        response = await api.post("/v1/tenants", json=NEW, key=key)
        assert response.status_code == 403 and error(response)["code"] == "forbidden"
        assert (await api.get("/v1/tenants", key=key)).status_code == 403
    listed = await api.get("/v1/tenants", params={"limit": 1})
    assert [t["id"] for t in listed.json()["items"]] == [ACME]
    rest = await api.get("/v1/tenants", params={"limit": 1, "cursor": listed.json()["nextCursor"]})
    assert [t["id"] for t in rest.json()["items"]] == [GLOBEX]
    assert rest.json()["nextCursor"] is None


async def test_requests_without_a_live_key_get_401(api: Api) -> None:
    for key in (None, "garbage", "osk_0123456789abcdef_nope", api.keys["admin"] + "x"):
        response = await api.get(f"/v1/tenants/{ACME}", key=key)
        assert response.status_code == 401, key
        assert error(response)["code"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"


async def test_connector_settings_change_with_an_admin_key(api: Api) -> None:
    response = await api.patch(
        f"/v1/tenants/{ACME}",
        key="admin",
        json={"syncMode": "contacts", "connectorVerified": False, "connectorUserId": BOB_SF},
    )
    assert response.status_code == 200
    body = response.json()
    assert (body["syncMode"], body["connectorVerified"], body["connectorUserId"]) == (
        "contacts",
        False,
        BOB_SF,
    )
    assert body["autoCreateProspects"] is True  # omitted: unchanged
    nulls = await api.patch(f"/v1/tenants/{ACME}", key="admin", json={"syncMode": None})
    assert nulls.json()["syncMode"] == "contacts"


async def test_connector_user_must_be_an_active_sf_user_of_the_tenant(api: Api) -> None:
    unknown = await api.patch(
        f"/v1/tenants/{ACME}", key="admin", json={"connectorUserId": sf_id("005", 424242)}
    )
    assert unknown.status_code == 422 and error(unknown)["code"] == "unknown_user"
    # Only the operator may change the org id (a tenant admin gets 403 before any check).
    taken_org = await api.patch(f"/v1/tenants/{ACME}", json={"salesforceOrgId": GLOBEX_ORG})
    assert taken_org.status_code == 409 and error(taken_org)["code"] == "org_in_use"
    bad = await api.patch(f"/v1/tenants/{ACME}", key="admin", json={"webhookSecret": "x" * 20})
    assert bad.status_code == 422


async def test_rotated_webhook_secret_keeps_the_old_one_valid_for_the_grace_period(
    api: Api,
) -> None:
    async with api.runtime.engine.connect() as conn:
        before = (await conn.execute(select(tenants).where(tenants.c.id == ACME))).one()
    response = await api.post(
        f"/v1/tenants/{ACME}/webhook-secret/rotate", key="admin", json={"graceSeconds": 3600}
    )
    assert response.status_code == 200
    new_secret = response.json()["webhookSecret"]
    expires = datetime.fromisoformat(response.json()["previousSecretExpiresAt"])
    async with api.runtime.engine.connect() as conn:
        row = (await conn.execute(select(tenants).where(tenants.c.id == ACME))).one()
    now = datetime.now(UTC)
    assert valid_webhook_secrets(row, now) == [new_secret, before.webhook_secret]
    assert valid_webhook_secrets(row, expires + timedelta(seconds=1)) == [new_secret]
    shown = (await api.get(f"/v1/tenants/{ACME}", key="read")).json()
    assert shown["previousSecretExpiresAt"] is not None


async def test_rotation_without_grace_drops_the_old_secret_at_once(api: Api) -> None:
    chosen = "whsec_" + "k" * 30
    response = await api.post(
        f"/v1/tenants/{ACME}/webhook-secret/rotate",
        key="admin",
        json={"graceSeconds": 0, "webhookSecret": chosen},
    )
    assert response.json() == {"webhookSecret": chosen, "previousSecretExpiresAt": None}
    again = await api.post(
        f"/v1/tenants/{ACME}/webhook-secret/rotate", key="admin", json={"webhookSecret": chosen}
    )
    assert again.status_code == 409 and error(again)["code"] == "same_secret"
    too_long = await api.post(
        f"/v1/tenants/{ACME}/webhook-secret/rotate", key="admin", json={"graceSeconds": 10**7}
    )
    assert too_long.status_code == 422


async def test_api_keys_are_stored_hashed_listed_without_secret_and_revocable(api: Api) -> None:
    created = await api.post(
        f"/v1/tenants/{ACME}/api-keys", key="admin", json={"name": "crm", "scopes": ["write"]}
    )
    assert created.status_code == 201
    key, key_id = created.json()["key"], created.json()["apiKey"]["id"]
    async with api.runtime.engine.connect() as conn:
        row = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).one()
    assert key not in row.key_hash and len(row.key_hash) == 64
    listed = (await api.get(f"/v1/tenants/{ACME}/api-keys", key="admin")).json()["items"]
    assert key_id in {k["id"] for k in listed} and all("key" not in k for k in listed)
    assert (await api.get(f"/v1/tenants/{ACME}/ae-users", key=key)).status_code == 200

    revoked = await api.delete(f"/v1/tenants/{ACME}/api-keys/{key_id}", key="admin")
    assert revoked.status_code == 200 and revoked.json()["revokedAt"] is not None
    assert (await api.get(f"/v1/tenants/{ACME}/ae-users", key=key)).status_code == 401
    unknown = await api.delete(f"/v1/tenants/{ACME}/api-keys/{'0' * 16}", key="admin")
    assert unknown.status_code == 404


async def test_api_key_creation_refuses_unknown_scopes_and_empty_lists(api: Api) -> None:
    for scopes in ([], ["root"], "admin"):
        response = await api.post(
            f"/v1/tenants/{ACME}/api-keys", key="admin", json={"name": "x", "scopes": scopes}
        )
        assert response.status_code == 422, scopes


async def test_a_key_cannot_revoke_another_tenants_key(api: Api) -> None:
    globex_keys = (await api.get(f"/v1/tenants/{GLOBEX}/api-keys", key="globex")).json()["items"]
    response = await api.delete(f"/v1/tenants/{ACME}/api-keys/{globex_keys[0]['id']}", key="admin")
    assert response.status_code == 404
    assert (await api.get(f"/v1/tenants/{GLOBEX}", key="globex")).status_code == 200


async def test_connector_user_cannot_be_deactivated(api: Api) -> None:
    response = await api.post(f"/v1/tenants/{ACME}/sf-users/{CONNECTOR_SF}/deactivate", key="write")
    assert response.status_code == 409 and error(response)["code"] == "connector_user"


async def test_untouched_statuses_of_follow_up_slas_are_a_tenant_setting(api: Api) -> None:
    shown = (await api.get(f"/v1/tenants/{ACME}", key="read")).json()
    assert shown["untouchedStatuses"] == ["Open - Not Contacted"]
    changed = await api.patch(
        f"/v1/tenants/{ACME}", key="admin", json={"untouchedStatuses": ["New", "Open"]}
    )
    assert changed.status_code == 200 and changed.json()["untouchedStatuses"] == ["New", "Open"]
    empty = await api.patch(f"/v1/tenants/{ACME}", key="admin", json={"untouchedStatuses": []})
    assert empty.status_code == 422
