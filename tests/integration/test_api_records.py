"""/v1 records, their audit timeline and reconcile, on the running stack: SF messages go
through the receiver, the syncer and the relay; the API answers why each prospect is owned
by whom, and reconcile fixes what a new mapping now allows."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from services.bootstrap import Running
from services.common.db.tables import audit_log, outbox
from services.common.endpoints import SfAction
from services.receiver.soap import parse_outbound_message
from services.sim.embedded import wait_until_idle
from tests.endpoints import sf_path
from tests.integration.api_support import ACME, DAVE_SF, Api, error, sf_id

pytestmark = pytest.mark.integration

T = f"/v1/tenants/{ACME}"
KIM = "00Q5g0000ZWHszxEQD"


class Story:
    def __init__(self, live: Running, fixtures: Path) -> None:
        self.live, self.fixtures, self.posted = live, fixtures / "salesforce", 0

    async def post(self, name: str, action: SfAction) -> None:
        body = (self.fixtures / name).read_bytes()
        async with httpx.AsyncClient(base_url=self.live.receiver_url or "") as http:
            response = await http.post(
                sf_path(action, ACME),
                content=body,
                headers={"Content-Type": "text/xml; charset=utf-8"},
            )
        assert response.status_code == 200, response.text
        self.posted += len(parse_outbound_message(body).notifications)
        await wait_until_idle(self.live, settled=self.posted)


@pytest.fixture
async def story(stack: Running, fixtures_dir: Path) -> Story:
    told = Story(stack, fixtures_dir)
    await told.post("lead-created-owner-connected.xml", "record-created")
    await told.post("lead-reassigned-not-connected.xml", "record-reassigned")
    return told


async def test_audit_timeline_says_why_the_prospect_is_owned_by_whom(
    api: Api, story: Story
) -> None:
    await story.post("lead-reassigned-connected.xml", "record-reassigned")
    record = (await api.get(f"{T}/records/sf/{KIM}", key="read")).json()
    assert record["aeAssignedUserId"] == 102 and record["ownersAgree"] is True
    by_prospect = await api.get(f"{T}/records/prospect/{record['prospectId']}", key="read")
    assert by_prospect.json() == record
    audit = (await api.get(f"{T}/records/sf/{KIM[:15]}/audit", key="read")).json()
    # The prospect id AE gave the relay for S2's new prospect is on the timeline too.
    assert [a["rule"] for a in audit["items"]] == ["S2", "RELAY", "S4", "S5"]
    learned = audit["items"][1]
    assert learned["reason"] == f"the relay learned: AE created prospect {record['prospectId']}"
    assert learned["eventType"] == "ownersync.relay"
    assert learned["after"]["prospect_id"] == record["prospectId"]
    s4 = audit["items"][2]
    assert "not a connected user" in s4["reason"]
    assert s4["eventType"] == "sf.record.reassigned" and s4["sourceId"]
    assert s4["before"]["ae_assigned_user_id"] == 101 and s4["after"]["sf_owner_id"] == DAVE_SF
    first = (
        await api.get(
            f"{T}/records/prospect/{record['prospectId']}/audit", key="read", params={"limit": 3}
        )
    ).json()
    assert [a["rule"] for a in first["items"]] == ["S2", "RELAY", "S4"]
    rest = await api.get(
        f"{T}/records/prospect/{record['prospectId']}/audit",
        key="read",
        params={"limit": 3, "cursor": first["nextCursor"]},
    )
    assert [a["rule"] for a in rest.json()["items"]] == ["S5"] and rest.json()["nextCursor"] is None


async def test_unknown_records_are_404_and_malformed_ids_422(api: Api, story: Story) -> None:
    missing = await api.get(f"{T}/records/sf/{sf_id('00Q', 5)}", key="read")
    assert missing.status_code == 404
    missing = await api.get(f"{T}/records/prospect/987654321", key="read")
    assert missing.status_code == 404 and error(missing)["code"] == "not_found"
    assert (await api.get(f"{T}/records/prospect/987654321/audit", key="read")).status_code == 404
    assert (await api.get(f"{T}/records/sf/short", key="read")).status_code == 422
    assert (await api.get(f"{T}/records/prospect/-4", key="read")).status_code == 422


async def test_reconcile_fixes_what_a_new_mapping_allows_and_the_relay_tells_ae(
    api: Api, story: Story
) -> None:
    kim = (await api.get(f"{T}/records/sf/{KIM}", key="read")).json()
    assert (kim["aeAssignedUserId"], kim["sfOwnerId"], kim["ownersAgree"]) == (101, DAVE_SF, None)
    before = (await api.post(f"{T}/reconcile", key="write", json={"dryRun": True})).json()
    assert before["outcomes"] == {
        "agree": 0,
        "would_fix": 0,
        "sf_owner_not_connected": 1,
        "not_in_salesforce": 0,
    }
    connect = await api.post(
        f"{T}/connected-users", key="write", json={"aeUserId": 105, "sfUserId": DAVE_SF}
    )
    assert connect.status_code == 201

    dry = (await api.post(f"{T}/reconcile", key="write", json={"dryRun": True})).json()
    assert dry["dryRun"] is True and dry["outcomes"]["would_fix"] == 1
    assert dry["changes"][0]["after"]["ae_assigned_user_id"] == 105
    assert (await api.get(f"{T}/records/sf/{KIM}", key="read")).json()["aeAssignedUserId"] == 101

    done = (await api.post(f"{T}/reconcile", key="write", json={})).json()
    assert done["outcomes"] == {
        "agree": 0,
        "fixed": 1,
        "sf_owner_not_connected": 0,
        "not_in_salesforce": 0,
    }
    assert done["fixedByRule"] == {"S5": 1} and done["changesTruncated"] is False
    await wait_until_idle(story.live, settled=story.posted)
    kim = (await api.get(f"{T}/records/sf/{KIM}", key="read")).json()
    assert (kim["aeAssignedUserId"], kim["ownersAgree"]) == (105, True)
    assert story.live.ae_sim is not None
    assert story.live.ae_sim.prospects[kim["prospectId"]]["assignedUserId"] == 105
    async with api.runtime.engine.connect() as conn:
        last = (await conn.execute(select(audit_log).order_by(audit_log.c.id.desc()))).first()
        sent = (await conn.execute(select(outbox).where(outbox.c.event_id == done["runId"]))).all()
    assert last is not None and last.rule == "S5" and last.reason.startswith("reconcile: ")
    assert [e.status for e in sent] == ["done"]
    again = (await api.post(f"{T}/reconcile", key="write", json={})).json()
    assert again["outcomes"]["agree"] == 1 and again["outcomes"]["fixed"] == 0
