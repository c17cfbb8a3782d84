"""/v1 user sync: AE users matched to SF users by SF user id, else by email."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.api_support import (
    ACME,
    ALICE_SF,
    BOB_SF,
    CAROL_SF,
    DAVE_SF,
    Api,
    sf_id,
)

pytestmark = pytest.mark.integration

T = f"/v1/tenants/{ACME}"
PAT, GONE, TWIN = sf_id("005", 301), sf_id("005", 302), sf_id("005", 303)
SHARED_1, SHARED_2 = sf_id("005", 304), sf_id("005", 305)

EXPECTED = {
    101: ("already_mapped", "already_mapped", ALICE_SF),
    102: ("already_mapped", "already_mapped", BOB_SF),
    105: ("unmatched", "no_email", None),
    201: ("matched", "by_email", PAT),
    202: ("matched", "by_sf_id", CAROL_SF),
    203: ("unmatched", "sf_user_inactive", GONE),
    204: ("conflicting", "sf_user_taken", BOB_SF),
    205: ("conflicting", "several_ae_users", TWIN),
    206: ("conflicting", "several_ae_users", TWIN),
    207: ("matched", "by_sf_id", DAVE_SF),
    208: ("conflicting", "email_reserved", DAVE_SF),
    209: ("conflicting", "email_ambiguous", None),
    210: ("unmatched", "sf_user_unknown", sf_id("005", 404)),
    211: ("unmatched", "ae_user_inactive", None),
    212: ("unmatched", "no_sf_user_with_email", None),
}


async def _load_every_case(api: Api) -> None:
    sf = [
        {"id": PAT, "email": "pat@acme.io"},
        {"id": GONE, "email": "gone@acme.io", "active": False},
        {"id": TWIN, "email": "twin@acme.io"},
        {"id": SHARED_1, "email": "shared@acme.io"},
        {"id": SHARED_2, "email": "SHARED@acme.io"},
        {"id": BOB_SF, "email": "bob@acme.io", "name": "bob"},
        {"id": DAVE_SF, "email": "dave@acme.io", "name": "dave"},
    ]
    ae: list[dict[str, Any]] = [
        {"id": 201, "email": "Pat@Acme.IO"},
        {"id": 202, "salesforceUserId": CAROL_SF[:15]},
        {"id": 203, "email": "gone@acme.io"},
        {"id": 204, "email": "bob@acme.io"},
        {"id": 205, "email": "twin@acme.io"},
        {"id": 206, "email": "Twin@ACME.io"},
        {"id": 207, "salesforceUserId": DAVE_SF},
        {"id": 208, "email": "dave@acme.io"},
        {"id": 209, "email": "shared@acme.io"},
        {"id": 210, "salesforceUserId": sf_id("005", 404), "email": "pat@acme.io"},
        {"id": 211, "email": "pat@acme.io", "active": False},
        {"id": 212, "email": "nobody@acme.io"},
    ]
    assert (
        await api.post(f"{T}/sf-users/bulk", key="write", json={"users": sf})
    ).status_code == 200
    assert (
        await api.post(f"{T}/ae-users/bulk", key="write", json={"users": ae})
    ).status_code == 200


def _outcomes(report: dict[str, Any]) -> dict[int, tuple[str, str, str | None]]:
    return {u["aeUserId"]: (u["outcome"], u["reasonCode"], u["sfUserId"]) for u in report["users"]}


async def test_dry_run_reports_every_outcome_and_changes_nothing(api: Api) -> None:
    await _load_every_case(api)
    response = await api.post(f"{T}/user-sync", key="write", json={"dryRun": True})
    assert response.status_code == 200
    report = response.json()
    assert report["dryRun"] is True
    assert report["counts"] == {"matched": 3, "already_mapped": 2, "unmatched": 5, "conflicting": 5}
    assert _outcomes(report) == EXPECTED
    mapped = (await api.get(f"{T}/connected-users", key="read")).json()["items"]
    assert len(mapped) == 2


async def test_user_sync_connects_the_matched_users_and_a_second_run_finds_them_mapped(
    api: Api,
) -> None:
    await _load_every_case(api)
    first = (await api.post(f"{T}/user-sync", key="write", json={})).json()
    assert first["dryRun"] is False and first["counts"]["matched"] == 3
    mapped = (await api.get(f"{T}/connected-users", key="read")).json()["items"]
    assert {(m["aeUserId"], m["sfUserId"]) for m in mapped} == {
        (101, ALICE_SF),
        (102, BOB_SF),
        (201, PAT),
        (202, CAROL_SF),
        (207, DAVE_SF),
    }
    second = (await api.post(f"{T}/user-sync", key="write", json={"dryRun": False})).json()
    assert second["counts"] == {"matched": 0, "already_mapped": 5, "unmatched": 5, "conflicting": 5}
    # 208 wanted dave by email; now that dave is 207's, the SF user is taken.
    assert _outcomes(second)[208] == ("conflicting", "sf_user_taken", DAVE_SF)


async def test_user_sync_refuses_unknown_fields(api: Api) -> None:
    response = await api.post(f"{T}/user-sync", key="write", json={"dry_run": True})
    assert response.status_code == 422
    response = await api.post(f"{T}/user-sync", key="write", json={"dryRun": "maybe"})
    assert response.status_code == 422
