"""Creates whose answers are lost are not made twice: the embedded default (SQLite, in-process
broker, both simulators over HTTP) with the simulators applying writes and then losing their
answers, as a dropped connection, a 500 or a timeout would."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from services.bootstrap import Running
from services.common.db.tables import records
from services.demo.replay import FIXTURES, demo_tenant, hold_prospect
from services.relay.senders import KEY_FIELD
from services.sim.embedded import wait_until_idle
from services.sim.lost_answers import LostAnswer
from tests.endpoints import sf_path
from tests.webhooks import signed_headers

PROSPECTS = "/api/v5/objects/prospects"
LEADS = "/services/data/v62.0/sobjects/Lead"
SOAP_HEADERS = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'}
LOST = 20
# The SF message with 100 new leads: 100 prospects to create in AE.
BATCH = FIXTURES / "salesforce" / "lead-created-batch-100.xml"


@pytest.fixture
async def embedded(stack: Running) -> Running:
    """The service tier's roles, with a relay that tries again quickly."""
    assert stack.relay is not None
    stack.relay.backoff_base = 0.05
    return stack


async def stored_records(live: Running) -> list[dict[str, Any]]:
    async with live.runtime.engine.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(select(records))]


@pytest.mark.parametrize("lost_answer", ["disconnect", "server_error"])
async def test_lost_answers_after_ae_creates_leave_one_prospect_per_record(
    embedded: Running, lost_answer: LostAnswer
) -> None:
    ae = embedded.ae_sim
    assert ae is not None
    ae.faults.configure(lose_answers_after_apply=LOST, lost_answer=lost_answer)

    async with httpx.AsyncClient(base_url=embedded.receiver_url or "", timeout=30) as http:
        response = await http.post(
            sf_path("record-created"), content=BATCH.read_bytes(), headers=SOAP_HEADERS
        )
    assert response.status_code == 200
    await wait_until_idle(embedded, settled=100)

    assert ae.faults.answers_lost == LOST
    assert len(ae.calls("POST", PROSPECTS)) == 100  # no create was sent twice
    stored = await stored_records(embedded)
    assert len(stored) == len(ae.prospects) == 100
    linked = {r["prospect_id"]: r["sf_record_id"] for r in stored}
    assert linked == {p["id"]: p["salesforceId"] for p in ae.prospects.values()}


async def post_prospects_created(live: Running, count: int) -> None:
    """AE webhooks for `count` new prospects assigned to alice (connected): A1, a lead each."""
    template = json.loads(
        (FIXTURES / "engagement" / "prospect-created-assigned-connected.json").read_bytes()
    )
    async with httpx.AsyncClient(base_url=live.receiver_url or "", timeout=30) as http:
        for n in range(count):
            prospect = {**template["prospect"], "id": 9100 + n, "email": f"p{n}@example.com"}
            hold_prospect(live.ae_sim, prospect)
            body = json.dumps({**template, "prospect": prospect}).encode()
            response = await http.post(
                "/engagement/acme/events", content=body, headers=signed_headers(body)
            )
            assert response.status_code == 202
    await wait_until_idle(live, settled=count)


@pytest.mark.parametrize("key_field", [True, False], ids=["with the key field", "without"])
@pytest.mark.parametrize("lost_answer", ["disconnect", "server_error"])
async def test_lost_answers_after_sf_creates_leave_one_lead_per_record(
    embedded: Running, key_field: bool, lost_answer: LostAnswer
) -> None:
    sf = embedded.sf_sim
    assert sf is not None
    # The leads' own record-created messages are another story (the syncer's): not told here.
    sf.outbound.configure(created_url=None, reassigned_url=None)
    if key_field:
        sf.external_id_fields = {KEY_FIELD}
    sf.faults.lose_answers_after_apply = LOST
    sf.faults.lost_answer = lost_answer

    await post_prospects_created(embedded, LOST)

    assert sf.faults.answers_lost == LOST
    stored = await stored_records(embedded)
    assert len(stored) == len(sf.leads) == LOST
    assert {r["sf_record_id"] for r in stored} == set(sf.leads)
    emails = sorted(lead["Email"] for lead in sf.leads.values())
    assert emails == sorted(f"p{n}@example.com" for n in range(LOST))
    writes = [c for c in sf.calls if c.path.startswith(LEADS) and c.method in {"POST", "PATCH"}]
    if key_field:
        # Every create went out as an upsert through the record's key, sent again when lost.
        assert {lead[KEY_FIELD] for lead in sf.leads.values()} == {
            f"acme:{r['id']}" for r in stored
        }
        assert all(c.method == "PATCH" for c in writes)
        assert len(writes) == 2 * LOST
    else:
        assert [c.method for c in writes] == ["POST"] * LOST  # looked for, never sent twice
    assert {lead["OwnerId"] for lead in sf.leads.values()} == {
        demo_tenant().salesforce_users["alice"]
    }
