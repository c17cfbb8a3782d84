"""/v1 queues, round-robin groups and assignment requests."""

from __future__ import annotations

import uuid

import pytest

from services.common.broker.rabbit import RabbitBroker
from services.common.messages import event_id_for
from tests.integration.api_support import ACME, QUEUE, Api, error, sf_id

pytestmark = pytest.mark.integration

T = f"/v1/tenants/{ACME}"


async def test_queues_are_added_renamed_listed_and_removed(api: Api) -> None:
    new = sf_id("00G", 5)
    created = await api.post(f"{T}/queues", key="write", json={"id": new[:15], "name": "EMEA"})
    assert created.status_code == 201 and created.json() == {"id": new, "name": "EMEA"}
    dup = await api.post(f"{T}/queues", key="write", json={"id": new, "name": "again"})
    assert dup.status_code == 409 and error(dup)["code"] == "queue_exists"
    renamed = await api.patch(f"{T}/queues/{new}", key="write", json={"name": "EMEA inbound"})
    assert renamed.json()["name"] == "EMEA inbound"
    listed = (await api.get(f"{T}/queues", key="read")).json()["items"]
    assert {q["id"] for q in listed} == {QUEUE, new}
    assert (await api.delete(f"{T}/queues/{new}", key="write")).status_code == 200
    assert (await api.delete(f"{T}/queues/{new}", key="write")).status_code == 404
    user_id = await api.post(f"{T}/queues", key="write", json={"id": sf_id("005", 5), "name": "x"})
    assert user_id.status_code == 422


async def test_group_members_get_weights_caps_and_are_paused_and_resumed(api: Api) -> None:
    created = await api.post(
        f"{T}/groups", key="write", json={"id": 9, "name": "sdr", "members": [101]}
    )
    assert created.status_code == 201
    assert [m["aeUserId"] for m in created.json()["members"]] == [101]
    added = await api.put(
        f"{T}/groups/9/members/102", key="write", json={"weight": 3, "dailyCap": 20}
    )
    assert added.status_code == 201
    assert (added.json()["weight"], added.json()["dailyCap"], added.json()["paused"]) == (
        3,
        20,
        False,
    )
    changed = await api.put(f"{T}/groups/9/members/102", key="write", json={"weight": 2})
    assert changed.status_code == 200 and changed.json()["dailyCap"] is None
    paused = await api.post(f"{T}/groups/9/members/102/pause", key="write")
    assert paused.json()["paused"] is True
    resumed = await api.post(f"{T}/groups/9/members/102/resume", key="write")
    assert resumed.json()["paused"] is False
    group = (await api.get(f"{T}/groups/9", key="read")).json()
    assert [(m["aeUserId"], m["weight"]) for m in group["members"]] == [(101, 1), (102, 2)]
    removed = await api.delete(f"{T}/groups/9/members/101", key="write")
    assert removed.status_code == 200
    assert (await api.delete(f"{T}/groups/9/members/101", key="write")).status_code == 404
    renamed = await api.patch(f"{T}/groups/9", key="write", json={"name": "sdr-2"})
    assert renamed.json()["name"] == "sdr-2"
    listed = (await api.get(f"{T}/groups", key="read")).json()["items"]
    assert [g["id"] for g in listed] == [7, 9]
    assert (await api.delete(f"{T}/groups/9", key="write")).status_code == 200
    assert (await api.get(f"{T}/groups/9", key="read")).status_code == 404


async def test_group_changes_are_refused_when_they_name_unknown_things(api: Api) -> None:
    dup = await api.post(f"{T}/groups", key="write", json={"id": 7, "name": "again"})
    assert dup.status_code == 409 and error(dup)["code"] == "group_exists"
    stranger = await api.post(
        f"{T}/groups", key="write", json={"id": 8, "name": "x", "members": [999]}
    )
    assert stranger.status_code == 422 and error(stranger)["details"] == {"aeUserIds": [999]}
    assert (await api.put(f"{T}/groups/7/members/999", key="write", json={})).status_code == 422
    assert (await api.put(f"{T}/groups/404/members/101", key="write", json={})).status_code == 404
    assert (await api.post(f"{T}/groups/7/members/105/pause", key="write")).status_code == 404
    for body in ({"weight": 0}, {"dailyCap": 0}, {"weight": 1001}, {"share": 1}):
        response = await api.put(f"{T}/groups/7/members/101", key="write", json=body)
        assert response.status_code == 422, body


async def test_assignment_request_is_published_with_a_decision_preview(api: Api) -> None:
    request_id = f"crm-{uuid.uuid4().hex}"
    body = {
        "requestId": request_id,
        "prospect": {"id": 555, "email": "new@lead.io"},
        "action": {"kind": "assign_to_user", "userId": 101},
    }
    broker = api.runtime.broker
    assert isinstance(broker, RabbitBroker)
    before = (await broker.queue_depths())["assigner"]
    response = await api.post(f"{T}/assignment-requests", key="write", json=body)
    assert response.status_code == 202
    answer = response.json()
    assert answer["eventId"] == str(event_id_for(ACME, "api", request_id))
    assert answer["status"] == "accepted"
    assert answer["preview"]["rule"] in ("A1", "A4") and answer["preview"]["refused"] is False
    assert answer["preview"]["after"]["ae_assigned_user_id"] == 101
    assert (await broker.queue_depths())["assigner"] == before + 1
    same = await api.post(f"{T}/assignment-requests", key="write", json=body)
    assert same.json()["eventId"] == answer["eventId"]


async def test_assignment_request_previews_a_refusal_with_its_reason(api: Api) -> None:
    await api.patch(T, key="admin", json={"syncMode": "contacts"})
    response = await api.post(
        f"{T}/assignment-requests",
        key="write",
        json={
            "requestId": "q-1",
            "prospect": {"id": 556},
            "action": {"kind": "assign_to_queue", "queueId": QUEUE},
        },
    )
    assert response.status_code == 202
    preview = response.json()["preview"]
    assert preview["rule"] == "A6" and preview["refused"] is True and "refused" in preview["reason"]


async def test_assignment_requests_are_validated(api: Api) -> None:
    good = {
        "requestId": "r",
        "prospect": {"id": 1},
        "action": {"kind": "assign_to_user", "userId": 1},
    }
    for body in (
        {**good, "action": {"kind": "assign_to_team", "teamId": 1}},
        {**good, "action": {"kind": "assign_to_user"}},
        {**good, "requestId": ""},
        {**good, "prospect": {"id": 1, "owner": 2}},
        {k: v for k, v in good.items() if k != "action"},
    ):
        response = await api.post(f"{T}/assignment-requests", key="write", json=body)
        assert response.status_code == 422, body


async def test_group_follow_up_sla_is_set_shown_and_switched_off(api: Api) -> None:
    body = {"slaSeconds": 7200, "slaBusinessHours": True, "fallbackOwnerId": QUEUE[:15]}
    put = await api.put(f"{T}/groups/7/sla", key="write", json=body)
    assert put.status_code == 200
    assert put.json()["sla"] == {
        "slaSeconds": 7200,
        "slaBusinessHours": True,
        "assignWhenClosed": False,
        "maxEscalations": 2,
        "fallbackOwnerId": QUEUE,
    }
    shown = (await api.get(f"{T}/groups/7", key="read")).json()
    assert shown["sla"]["slaSeconds"] == 7200
    off = await api.put(f"{T}/groups/7/sla", key="write", json={"slaSeconds": None})
    assert off.json()["sla"]["slaSeconds"] is None


@pytest.mark.parametrize(
    "body",
    [
        {"slaSeconds": 0},
        {"slaSeconds": 7200, "fallbackOwnerId": "00Q5g0000ZWHszx"},  # a lead is no owner
        {"slaSeconds": 7200, "maxEscalations": -1},
        {"slaSeconds": "two hours"},
    ],
)
async def test_unreadable_group_sla_is_a_422(api: Api, body: dict[str, object]) -> None:
    response = await api.put(f"{T}/groups/7/sla", key="write", json=body)
    assert response.status_code == 422


async def test_member_working_hours_are_stored_in_their_canonical_form(api: Api) -> None:
    hours = {
        "timeZone": "America/New_York",
        "weeklyHours": {"Monday": "13:00-17:00,09:00-12:00", "fri": "09:00-17:00"},
        "awayDates": ["2026-12-24"],
    }
    put = await api.put(f"{T}/groups/7/members/101", key="write", json=hours)
    assert put.status_code == 200
    member = put.json()
    assert member["weeklyHours"] == {"mon": "09:00-12:00,13:00-17:00", "fri": "09:00-17:00"}
    assert (member["timeZone"], member["awayDates"]) == ("America/New_York", ["2026-12-24"])


@pytest.mark.parametrize(
    ("hours", "why"),
    [
        ({"timeZone": "Mars/Olympus"}, "unknown time zone"),
        ({"weeklyHours": {"mon": "17:00-09:00"}}, "ends before it starts"),
        ({"weeklyHours": {"someday": "09:00-17:00"}}, "is not a weekday"),
        ({"awayDates": ["24/12/2026"]}, "awayDates"),  # pydantic names the field
    ],
)
async def test_unreadable_working_hours_are_a_422_that_says_why(
    api: Api, hours: dict[str, object], why: str
) -> None:
    response = await api.put(f"{T}/groups/7/members/101", key="write", json=hours)
    assert response.status_code == 422 and why in response.text, response.text
