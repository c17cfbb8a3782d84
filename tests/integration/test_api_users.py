"""/v1 SF users and AE users: create, update, deactivate, list, load in bulk."""

from __future__ import annotations

import pytest

from tests.integration.api_support import ACME, ALICE_SF, BOB_SF, Api, error, sf_id

pytestmark = pytest.mark.integration

SF = f"/v1/tenants/{ACME}/sf-users"
AE = f"/v1/tenants/{ACME}/ae-users"


async def test_sf_user_is_created_read_and_updated(api: Api) -> None:
    new = sf_id("005", 501)
    created = await api.post(
        SF, key="write", json={"id": new[:15], "name": "Zoe", "email": "Zoe@X.io"}
    )
    assert created.status_code == 201
    assert created.json()["id"] == new and created.json()["connectedAeUserId"] is None
    assert (await api.get(f"{SF}/{new}", key="read")).json()["email"] == "Zoe@X.io"
    patched = await api.patch(f"{SF}/{new}", key="write", json={"email": None, "name": "Zoé"})
    assert patched.status_code == 200
    assert (patched.json()["email"], patched.json()["name"]) == (None, "Zoé")


async def test_sf_user_creation_refuses_duplicates_wrong_ids_and_unknown_fields(api: Api) -> None:
    dup = await api.post(SF, key="write", json={"id": ALICE_SF})
    assert dup.status_code == 409 and error(dup)["code"] == "user_exists"
    for body in (
        {"id": "00Q5g0000ZWHszxEQD"},  # a lead id
        {"id": sf_id("005", 1)[:17]},
        {"id": sf_id("005", 2), "email": "no-at-sign"},
        {"id": sf_id("005", 3), "name": "bell\x07"},
        {"id": sf_id("005", 4), "role": "admin"},
    ):
        response = await api.post(SF, key="write", json=body)
        assert response.status_code == 422, body
        assert error(response)["code"] == "validation_error"


async def test_unknown_users_are_404_and_malformed_ids_422(api: Api) -> None:
    missing = await api.get(f"{SF}/{sf_id('005', 999)}", key="read")
    assert missing.status_code == 404 and error(missing)["code"] == "not_found"
    assert (await api.get(f"{SF}/nope", key="read")).status_code == 422
    assert (await api.get(f"{AE}/424242", key="read")).status_code == 404
    assert (await api.get(f"{AE}/0", key="read")).status_code == 422
    assert (await api.get(f"{AE}/{2**63}", key="read")).status_code == 422
    assert (await api.patch(f"{AE}/424242", key="write", json={"name": "x"})).status_code == 404


async def test_deactivating_a_user_removes_its_mapping(api: Api) -> None:
    assert (await api.get(f"{SF}/{ALICE_SF}", key="read")).json()["connectedAeUserId"] == 101
    response = await api.post(f"{SF}/{ALICE_SF}/deactivate", key="write")
    assert response.status_code == 200
    assert response.json()["active"] is False and response.json()["connectedAeUserId"] is None
    ae = await api.patch(f"{AE}/102", key="write", json={"active": False})
    assert ae.json()["connectedSfUserId"] is None
    mappings = (await api.get(f"/v1/tenants/{ACME}/connected-users", key="read")).json()
    assert mappings["items"] == []
    reactivated = await api.patch(f"{AE}/102", key="write", json={"active": True})
    assert reactivated.json()["active"] is True and reactivated.json()["connectedSfUserId"] is None


async def test_ae_user_is_created_with_its_known_sf_user_and_listed_by_filters(api: Api) -> None:
    created = await api.post(
        AE,
        key="write",
        json={"id": 900, "email": "Nina@Example.com", "salesforceUserId": BOB_SF, "name": "Nina"},
    )
    assert created.status_code == 201
    assert created.json()["salesforceUserId"] == BOB_SF
    by_email = await api.get(AE, key="read", params={"email": "nina@example.COM"})
    assert [u["id"] for u in by_email.json()["items"]] == [900]
    inactive = await api.get(AE, key="read", params={"active": "false"})
    assert inactive.json()["items"] == []
    bad_sf = await api.post(
        AE, key="write", json={"id": 901, "salesforceUserId": "00G5g0000QQQdLAEQ1"}
    )
    assert bad_sf.status_code == 422
    cleared = await api.patch(f"{AE}/900", key="write", json={"salesforceUserId": None})
    assert cleared.json()["salesforceUserId"] is None


async def test_users_are_paginated_with_an_opaque_cursor(api: Api) -> None:
    load = await api.post(
        f"{AE}/bulk",
        key="write",
        json={"users": [{"id": 1000 + i, "email": f"u{i}@x.io"} for i in range(25)]},
    )
    assert load.json() == {"created": 25, "updated": 0, "deactivatedMappingsRemoved": 0}
    seen: list[int] = []
    cursor = None
    while True:
        params = {"limit": 7, **({"cursor": cursor} if cursor else {})}
        page = (await api.get(AE, key="read", params=params)).json()
        assert len(page["items"]) <= 7
        seen += [u["id"] for u in page["items"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert seen == sorted(seen) and len(seen) == len(set(seen)) == 28  # 3 from tenant.json
    for bad in ("!!", "eyJ4IjoxfQ", "eyJhZnRlciI6ICJ4In0"):  # not base64, wrong key, wrong type
        response = await api.get(AE, key="read", params={"cursor": bad})
        assert response.status_code == 422, bad
    assert (await api.get(AE, key="read", params={"limit": 0})).status_code == 422
    assert (await api.get(AE, key="read", params={"limit": 501})).status_code == 422


async def test_bulk_load_updates_existing_users_and_refuses_repeated_ids(api: Api) -> None:
    body = {
        "users": [
            {"id": ALICE_SF, "email": "alice@acme.io", "active": False},
            {"id": sf_id("005", 77), "email": "new@acme.io"},
        ]
    }
    loaded = await api.post(f"{SF}/bulk", key="write", json=body)
    assert loaded.json() == {"created": 1, "updated": 1, "deactivatedMappingsRemoved": 1}
    alice = (await api.get(f"{SF}/{ALICE_SF}", key="read")).json()
    assert (alice["email"], alice["active"], alice["name"]) == ("alice@acme.io", False, None)
    twice = await api.post(
        f"{SF}/bulk", key="write", json={"users": [{"id": BOB_SF}, {"id": BOB_SF[:15]}]}
    )
    assert twice.status_code == 422 and error(twice)["code"] == "duplicate_ids"
    assert (await api.post(f"{SF}/bulk", key="write", json={"users": []})).status_code == 422
