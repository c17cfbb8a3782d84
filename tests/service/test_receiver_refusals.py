"""The SF endpoint refuses what it cannot trust with a SOAP fault and leaves nothing behind:
every hostile message of fixtures/salesforce/bad (not SOAP, truncated, entities, a foreign org,
bad ids, over 100 notifications) and a body over the limit. The endpoint key is refused in
test_sf_endpoint_key.py, AE signatures in test_engagement_webhooks.py, times from the future in
test_clock_ahead.py and test_sf_endpoint_key.py."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from services.bootstrap import Running
from services.demo.replay import FIXTURES
from tests.endpoints import sf_path
from tests.loopback import loopback_client
from tests.outbound import SOAP_HEADERS, Poster
from tests.store import decision_rows, table_counts

BAD = sorted((FIXTURES / "salesforce" / "bad").iterdir())


@pytest.fixture
def poster(stack: Running) -> Poster:
    return Poster(stack)


async def _post_raw(live: Running, body: bytes) -> httpx.Response:
    async with loopback_client(live.receiver_url or "") as http:
        return await http.post(sf_path("record-created"), content=body, headers=SOAP_HEADERS)


@pytest.mark.parametrize("bad", BAD, ids=[p.name for p in BAD])
async def test_bad_message_is_refused_with_a_soap_fault_and_leaves_no_trace(
    poster: Poster, bad: Path
) -> None:
    await poster.post("lead-created-owner-connected.xml")  # something to leave untouched
    live = poster.live
    before = await table_counts(live)
    decisions_before = len(await decision_rows(live))
    assert live.ae_sim is not None
    ae_before = live.ae_sim.snapshot()
    depths_before = await live.runtime.broker.queue_depths()

    response = await _post_raw(live, bad.read_bytes())

    assert 400 <= response.status_code < 500
    assert "<soapenv:Fault>" in response.text and "<Ack>" not in response.text
    assert response.headers["content-type"].startswith("text/xml")
    # Anything published would be settled by now; a sentinel proves the pipe is flowing.
    await poster.post("contact-created.xml")
    assert live.stats["syncer"].settled == 2
    after = await table_counts(live)
    assert after["inbox"] == before["inbox"] + 1
    assert len(await decision_rows(live)) == decisions_before + 1
    assert await live.runtime.broker.queue_depths() == depths_before
    assert len(live.ae_sim.snapshot()["prospects"]) == len(ae_before["prospects"]) + 1


async def test_message_of_another_organization_is_refused_with_403(stack: Running) -> None:
    response = await _post_raw(
        stack, (FIXTURES / "salesforce/bad/wrong-organization.xml").read_bytes()
    )
    assert response.status_code == 403
    assert "OrganizationId" in response.text or "organization" in response.text.lower()
    assert (await table_counts(stack))["inbox"] == 0


async def test_body_over_one_megabyte_is_refused_with_413(stack: Running) -> None:
    response = await _post_raw(stack, b"<" * 1_048_577)
    assert response.status_code == 413
    assert "<soapenv:Fault>" in response.text
    assert (await table_counts(stack))["inbox"] == 0
