"""Times from the future are refused at the receivers, so that they cannot pin a record's
newest state: an AE occurredAt more than 5 minutes ahead (the SF side is in
test_sf_endpoint_key.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from prometheus_client import REGISTRY

from services.bootstrap import Running
from tests.store import table_counts
from tests.webhooks import engagement_body, post_webhook

CREATED = "prospect-created-assigned-unconnected.json"


def _refused() -> float:
    labels = {"source": "engagement", "reason": "from_the_future"}
    return REGISTRY.get_sample_value("ownersync_events_refused_total", labels) or 0.0


def _occurred(ahead: timedelta) -> dict[str, object]:
    body = json.loads(engagement_body(CREATED))
    body["occurredAt"] = (datetime.now(UTC) + ahead).isoformat()
    return body


async def test_ae_occurred_at_from_the_future_is_refused_and_counted(stack: Running) -> None:
    counted = _refused()
    response = await post_webhook(stack.receiver_url or "", _occurred(timedelta(days=365)))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "from_the_future"
    assert "ahead of this receiver's clock" in response.json()["error"]["message"]
    assert _refused() == counted + 1
    assert (await table_counts(stack))["inbox"] == 0


async def test_ae_occurred_at_a_little_ahead_is_clock_skew_and_accepted(stack: Running) -> None:
    response = await post_webhook(stack.receiver_url or "", _occurred(timedelta(minutes=2)))
    assert response.status_code == 202, response.text
