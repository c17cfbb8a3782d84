"""/metrics after a few events have flowed: the series an operator watches, with their labels."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.bootstrap import Running
from services.demo.replay import FIXTURES
from services.sim.embedded import wait_until_idle
from tests.endpoints import sf_path
from tests.webhooks import engagement_body, post_webhook

pytestmark = pytest.mark.integration


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def _value(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    return sum(
        v for lbl, v in samples.get(name, []) if all(lbl.get(k) == x for k, x in labels.items())
    )


async def test_metrics_expose_the_flow_by_type_and_rule(stack: Running) -> None:
    async with httpx.AsyncClient(base_url=stack.receiver_url or "") as http:
        before = _samples((await http.get("/metrics")).text)
        for name in ("lead-created-owner-connected.xml", "lead-created-owner-not-connected.xml"):
            body = (FIXTURES / "salesforce" / name).read_bytes()
            assert (await http.post(sf_path("record-created"), content=body)).status_code == 200
        await wait_until_idle(stack, settled=2)
        body = (FIXTURES / "salesforce" / "lead-created-owner-connected.xml").read_bytes()
        await http.post(sf_path("record-created"), content=body)  # a duplicate: skipped
        assert stack.ae_sim is not None
        stack.ae_sim.add_prospect("ed@example.com", prospect_id=9005)
        assert (
            await post_webhook(stack.receiver_url or "", engagement_body("assign-to-group.json"))
        ).status_code == 202
        await wait_until_idle(stack, settled=4)
        response = await http.get("/metrics")
    assert response.status_code == 200
    after = _samples(response.text)

    def grew(name: str, by: float, **labels: str) -> None:
        assert _value(after, name, **labels) - _value(before, name, **labels) == by, (name, labels)

    # Three posted here, one sent back by the SF simulator for the lead A5 created.
    grew("ownersync_events_received_total", 4, type="sf.record.created")
    grew("ownersync_events_published_total", 4, type="sf.record.created")
    grew("ownersync_events_published_total", 1, type="ae.prospect.assignment_requested")
    grew("ownersync_events_applied_total", 1, type="sf.record.created", rule="S2")
    grew("ownersync_events_applied_total", 1, type="sf.record.created", rule="S1")
    grew("ownersync_events_skipped_total", 1, type="sf.record.created", rule="S8")
    grew("ownersync_events_applied_total", 1, type="ae.prospect.assignment_requested", rule="A5")
    assert (
        _value(after, "ownersync_receipt_to_decision_seconds_count", type="sf.record.created") >= 3
    )
    assert _value(after, "ownersync_consumer_batch_size_count", queue="syncer") >= 2
    assert _value(after, "ownersync_consumer_batch_size_count", queue="assigner") >= 1
    assert _value(after, "ownersync_api_calls_total", system="ae", outcome="ok") >= 2
    assert _value(after, "ownersync_api_calls_total", system="sf", outcome="ok") >= 1
    assert "ownersync_outbox_depth" in after and "ownersync_outbox_oldest_age_seconds" in after
    assert {lbl["target"] for lbl, _ in after["ownersync_outbox_depth"]} == {"ae", "sf"}
