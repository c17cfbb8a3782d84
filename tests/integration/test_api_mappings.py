"""/v1 connected users: one AE user and one SF user in one mapping at most."""

from __future__ import annotations

import pytest

from tests.integration.api_support import (
    ACME,
    ALICE_SF,
    BOB_SF,
    CAROL_SF,
    DAVE_SF,
    Api,
    error,
    sf_id,
)

pytestmark = pytest.mark.integration

MAPPINGS = f"/v1/tenants/{ACME}/connected-users"


async def test_mapping_is_created_listed_and_deleted(api: Api) -> None:
    created = await api.post(MAPPINGS, key="write", json={"aeUserId": 105, "sfUserId": CAROL_SF})
    assert created.status_code == 201
    assert created.json()["aeUserId"] == 105 and created.json()["sfUserId"] == CAROL_SF
    listed = (await api.get(MAPPINGS, key="read")).json()["items"]
    assert [(m["aeUserId"], m["sfUserId"]) for m in listed] == [
        (101, ALICE_SF),
        (102, BOB_SF),
        (105, CAROL_SF),
    ]
    by_sf = (await api.get(MAPPINGS, key="read", params={"sfUserId": BOB_SF[:15]})).json()
    assert [m["aeUserId"] for m in by_sf["items"]] == [102]
    removed = await api.delete(f"{MAPPINGS}/105", key="write")
    assert removed.status_code == 200 and removed.json()["sfUserId"] == CAROL_SF
    again = await api.delete(f"{MAPPINGS}/105", key="write")
    assert again.status_code == 404 and error(again)["code"] == "not_found"


async def test_the_same_mapping_again_answers_200_and_changes_nothing(api: Api) -> None:
    response = await api.post(MAPPINGS, key="write", json={"aeUserId": 101, "sfUserId": ALICE_SF})
    assert response.status_code == 200 and response.json()["aeUserId"] == 101


async def test_mapping_an_already_connected_ae_user_is_refused_naming_the_holder(api: Api) -> None:
    response = await api.post(MAPPINGS, key="write", json={"aeUserId": 101, "sfUserId": CAROL_SF})
    assert response.status_code == 409
    body = error(response)
    assert body["code"] == "mapping_conflict"
    assert body["details"] == {"holding": {"aeUserId": 101, "sfUserId": ALICE_SF}}
    assert "AE user 101" in body["message"] and ALICE_SF in body["message"]


async def test_mapping_an_already_connected_sf_user_is_refused_naming_the_holder(api: Api) -> None:
    response = await api.post(MAPPINGS, key="write", json={"aeUserId": 105, "sfUserId": BOB_SF})
    assert response.status_code == 409
    assert error(response)["details"] == {"holding": {"aeUserId": 102, "sfUserId": BOB_SF}}


async def test_mapping_unknown_or_inactive_users_is_refused(api: Api) -> None:
    unknown_ae = await api.post(MAPPINGS, key="write", json={"aeUserId": 999, "sfUserId": DAVE_SF})
    assert unknown_ae.status_code == 422 and error(unknown_ae)["code"] == "unknown_user"
    assert error(unknown_ae)["details"] == {"aeUserId": 999, "sfUserId": None}
    unknown_sf = await api.post(
        MAPPINGS, key="write", json={"aeUserId": 105, "sfUserId": sf_id("005", 31337)}
    )
    assert unknown_sf.status_code == 422 and error(unknown_sf)["code"] == "unknown_user"
    await api.post(f"/v1/tenants/{ACME}/sf-users/{DAVE_SF}/deactivate", key="write")
    inactive = await api.post(MAPPINGS, key="write", json={"aeUserId": 105, "sfUserId": DAVE_SF})
    assert inactive.status_code == 409 and error(inactive)["code"] == "user_inactive"


async def test_mapping_bodies_are_validated(api: Api) -> None:
    for body in (
        {"aeUserId": 105},
        {"aeUserId": "x", "sfUserId": DAVE_SF},
        {"aeUserId": 105, "sfUserId": "00G5g0000QQQdLAEQ1"},
        {"aeUserId": 105, "sfUserId": DAVE_SF, "force": True},
        {"ae_user_id": 105, "sf_user_id": DAVE_SF},
    ):
        response = await api.post(MAPPINGS, key="write", json=body)
        assert response.status_code == 422, body
    not_json = await api.post(
        MAPPINGS, key="write", content=b"{", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 422 and error(not_json)["code"] == "validation_error"
