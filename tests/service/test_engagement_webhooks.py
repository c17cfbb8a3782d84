"""The AE webhook endpoint: signatures, validation, replays, and publish-before-202."""

from __future__ import annotations

import json
import time

import httpx

from services.bootstrap import Running
from tests.store import table_counts
from tests.webhooks import engagement_body, post_webhook, signed_headers

CREATED = "prospect-created-assigned-unconnected.json"


async def test_a_signed_valid_webhook_is_accepted_with_its_event_id(stack: Running) -> None:
    response = await post_webhook(stack.receiver_url or "", engagement_body(CREATED))
    assert response.status_code == 202
    assert response.json()["status"] == "accepted" and response.json()["eventId"]


async def _post_raw(stack: Running, body: bytes, headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=stack.receiver_url or "") as http:
        return await http.post("/engagement/acme/events", content=body, headers=headers)


async def test_missing_signature_headers_get_401_naming_them(stack: Running) -> None:
    body = engagement_body(CREATED)
    response = await _post_raw(stack, body, {"content-type": "application/json"})
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == "invalid_signature"
    assert "webhook-id" in error["message"] and "webhook-signature" in error["message"]


async def test_a_signature_made_with_another_secret_gets_401(stack: Running) -> None:
    body = engagement_body(CREATED)
    headers = signed_headers(body, secret="whsec_" + "QUJDREVGR0hJSktMTU5PUA==")
    response = await _post_raw(stack, body, headers)
    assert response.status_code == 401
    assert "does not match" in response.json()["error"]["message"]


async def test_a_tampered_body_gets_401(stack: Running) -> None:
    body = engagement_body(CREATED)
    headers = signed_headers(body)
    response = await _post_raw(stack, body.replace(b"105", b"101"), headers)
    assert response.status_code == 401


async def test_a_timestamp_older_than_five_minutes_gets_401(stack: Running) -> None:
    body = engagement_body(CREATED)
    response = await _post_raw(stack, body, signed_headers(body, at=time.time() - 301))
    assert response.status_code == 401
    assert "tolerance" in response.json()["error"]["message"]


async def test_a_body_that_does_not_validate_gets_422_with_field_errors(stack: Running) -> None:
    body = json.loads(engagement_body(CREATED))
    body["type"] = "prospect.deleted"
    del body["prospect"]["id"]
    response = await post_webhook(stack.receiver_url or "", body)
    assert response.status_code == 422
    error = response.json()["error"]
    fields = {d["field"] for d in error["details"]}
    assert "type" in fields and "prospect.id" in fields


async def test_an_unknown_tenant_gets_the_401_of_a_wrong_signature(stack: Running) -> None:
    response = await post_webhook(stack.receiver_url or "", engagement_body(CREATED), tenant="zz")
    assert response.status_code == 401


async def test_refused_webhooks_publish_nothing(stack: Running) -> None:
    before = await stack.runtime.broker.queue_depths()
    body = engagement_body(CREATED)
    await _post_raw(stack, body, {"content-type": "application/json"})
    await _post_raw(stack, body, signed_headers(body, at=time.time() - 3600))
    assert await stack.runtime.broker.queue_depths() == before
    assert (await table_counts(stack))["inbox"] == 0


async def test_the_previous_secret_signs_valid_webhooks_only_during_its_grace_period(
    stack: Running,
) -> None:
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    from services.common.db.tables import tenants
    from tests.webhooks import SECRET

    new_secret = "whsec_" + "bmV3LXNlY3JldC1mb3ItYWNtZS0xMjM0"
    body = engagement_body(CREATED)

    async def rotate(expires: datetime) -> None:
        async with stack.runtime.engine.begin() as conn:
            await conn.execute(
                update(tenants).values(
                    webhook_secret=new_secret,
                    previous_webhook_secret=SECRET,
                    previous_secret_expires_at=expires,
                )
            )

    await rotate(datetime.now(UTC) + timedelta(hours=1))
    assert (await _post_raw(stack, body, signed_headers(body))).status_code == 202
    assert (
        await _post_raw(stack, body, signed_headers(body, secret=new_secret))
    ).status_code == 202
    await rotate(datetime.now(UTC) - timedelta(seconds=1))
    assert (await _post_raw(stack, body, signed_headers(body))).status_code == 401


async def test_ids_beyond_64_bits_are_refused_with_422_not_a_server_error(stack: Running) -> None:
    body = json.loads(engagement_body(CREATED))
    body["prospect"]["id"] = -66536608749209657773070420541440
    body["prospect"]["assignedUserId"] = 2**63
    response = await post_webhook(stack.receiver_url or "", body)
    assert response.status_code == 422
    fields = {d["field"] for d in response.json()["error"]["details"]}
    assert fields == {"prospect.id", "prospect.assignedUserId"}
