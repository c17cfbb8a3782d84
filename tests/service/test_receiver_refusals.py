"""The SF endpoint refuses what it cannot trust with a SOAP fault and leaves nothing behind:
every hostile message of fixtures/salesforce/bad (not SOAP, truncated, entities, a foreign org,
bad ids, over 100 notifications) and a body over the limit. The endpoint key is refused in
test_sf_endpoint_key.py, AE signatures in test_engagement_webhooks.py, times from the future in
test_clock_ahead.py and test_sf_endpoint_key.py."""

from __future__ import annotations

import httpx
import pytest

from services.bootstrap import Running
from services.common.sfid import to18
from services.demo.replay import FIXTURES
from tests.endpoints import sf_path
from tests.outbound import SOAP_HEADERS, Poster
from tests.store import decision_rows, table_counts

BAD = sorted((FIXTURES / "salesforce" / "bad").iterdir())


@pytest.fixture
def poster(stack: Running) -> Poster:
    return Poster(stack)


async def _post_raw(live: Running, body: bytes) -> httpx.Response:
    async with httpx.AsyncClient(base_url=live.receiver_url or "") as http:
        return await http.post(sf_path("record-created"), content=body, headers=SOAP_HEADERS)


async def test_every_bad_message_is_refused_with_a_soap_fault_and_leaves_no_trace(
    poster: Poster,
) -> None:
    """One stack for all of bad/: each refusal is checked against the state just before it,
    with a sentinel message after it to prove the pipe was flowing."""
    live = poster.live
    assert live.ae_sim is not None
    await poster.post("lead-created-owner-connected.xml")  # something to leave untouched
    sentinel = poster.body("contact-created.xml")
    for n, bad in enumerate(BAD):
        before = await table_counts(live)
        decisions_before = len(await decision_rows(live))
        prospects_before = len(live.ae_sim.prospects)
        depths_before = await live.runtime.broker.queue_depths()

        response = await _post_raw(live, bad.read_bytes())

        assert 400 <= response.status_code < 500, bad.name
        assert "<soapenv:Fault>" in response.text and "<Ack>" not in response.text, bad.name
        assert response.headers["content-type"].startswith("text/xml"), bad.name
        # Anything published would be settled once the sentinel is: a new contact each time.
        contact = to18(f"0035g0000Sent{n:02d}")
        notification = to18(f"04l5g0000Sent{n:02d}")
        await poster.post_body(
            sentinel.replace("0035g0000PcZvNKAQ0", contact)
            .replace("04l5g0000qzA2suAAC", notification)
            .encode()
        )
        after = await table_counts(live)
        assert after["inbox"] == before["inbox"] + 1, bad.name
        assert len(await decision_rows(live)) == decisions_before + 1, bad.name
        assert await live.runtime.broker.queue_depths() == depths_before, bad.name
        assert len(live.ae_sim.prospects) == prospects_before + 1, bad.name
    assert live.stats["syncer"].settled == 1 + len(BAD)


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
