"""/v1 and the receivers under attack: the key before the body, bounded bodies, cursors and
strings, one error shape with a request id for the unforeseen, no host names in answers, no
forged log lines, per-key rates, and tenants that cannot be enumerated or squatted."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from services.admin.pagination import encode_cursor
from services.bootstrap import Running, create_app
from services.common.logs import TextFormatter
from services.common.runtime import build_runtime
from services.common.settings import Settings
from services.common.web import free_port, serve_app
from services.demo.replay import FIXTURES
from tests.endpoints import sf_path
from tests.integration.api_support import (
    ACME,
    GLOBEX_ORG,
    OPERATOR_KEY,
    Api,
    api_settings,
    error,
    sf_id,
)
from tests.webhooks import engagement_body, post_webhook, signed_headers

pytestmark = pytest.mark.integration

T = f"/v1/tenants/{ACME}"
MIB = 2**20
OPERATOR = {"Authorization": f"Bearer {OPERATOR_KEY}"}


@contextlib.asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app on a runtime of its own built from `settings`, over loopback."""
    runtime = build_runtime(settings)
    try:
        async with (
            serve_app(create_app(runtime)) as url,
            httpx.AsyncClient(base_url=url, timeout=10) as http,
        ):
            yield http
    finally:
        await runtime.close()


async def _raw_request(url: str, head: str, body_part: bytes) -> tuple[int, bytes]:
    """Send a request head and only the start of its body; the status and body of the answer
    that comes back while the rest of the body is still owed."""
    where = urlsplit(url)
    reader, writer = await asyncio.open_connection(where.hostname, where.port)
    try:
        writer.write(head.encode() + b"\r\n" + body_part)
        await writer.drain()
        async with asyncio.timeout(5):
            header_block = await reader.readuntil(b"\r\n\r\n")
            content_length = re.search(rb"(?i)content-length: *(\d+)", header_block)
            assert content_length is not None, header_block
            length = int(content_length[1])
            answer = await reader.readexactly(length)
    finally:
        writer.close()
    return int(header_block.split()[1]), answer


# --- 1. the key before the body, and a bounded body ----------------------------------------


async def test_a_33_mib_body_without_a_key_gets_401_before_the_body_is_read(api: Api) -> None:
    head = (
        "POST /v1/tenants HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {33 * MIB}\r\n"
    )
    started = time.monotonic()
    status, answer = await _raw_request(api.url, head, b"x" * 65_536)
    assert status == 401
    assert json.loads(answer)["error"]["code"] == "unauthorized"
    assert time.monotonic() - started < 2


async def test_malformed_json_without_a_live_key_gets_401_not_422(api: Api) -> None:
    for key in (None, "osk_0000000000000000_wrong"):
        response = await api.post(
            "/v1/tenants",
            key=key,
            content=b'{"id": ',
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 401, response.text
        assert error(response)["code"] == "unauthorized"


async def test_a_body_over_the_limit_gets_413_in_the_error_shape(api: Api) -> None:
    declared = await api.post("/v1/tenants", content=b"x" * (MIB + 1))
    assert declared.status_code == 413
    assert error(declared)["code"] == "body_too_large"

    async def undeclared() -> AsyncIterator[bytes]:  # chunked: no Content-Length to trust
        for _ in range(20):
            yield b"y" * 65_536

    streamed = await api.post(f"{T}/sf-users/bulk", key="write", content=undeclared())
    assert streamed.status_code == 413
    assert error(streamed)["code"] == "body_too_large"


async def test_the_openapi_document_says_which_routes_answer_413_and_429(api: Api) -> None:
    document = (await api.get("/v1/openapi.json", key=None)).json()
    for operations in document["paths"].values():
        for operation in operations.values():
            assert {"413", "429"} <= set(operation["responses"])


# --- 3. cursors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "after"),
    [
        (f"{T}/ae-users", 10**40),
        (f"{T}/ae-users", -1),
        (f"{T}/connected-users", 2**63),
        (f"{T}/dead-letters", 10**30),
        (f"{T}/sf-users", "\x00"),
        (f"{T}/sf-users", "\ud800"),
        (f"{T}/api-keys", "k" * 300),
        ("/v1/tenants", "\x00"),
    ],
)
async def test_a_cursor_out_of_bounds_is_refused_in_the_error_shape_not_a_500(
    api: Api, path: str, after: object
) -> None:
    cursor = encode_cursor(after)
    response = await api.get(path, params={"cursor": cursor})
    assert response.status_code == 422, response.text
    assert error(response)["code"] == "invalid_cursor"


# --- 4. the unforeseen: 500 with a request id ------------------------------------------------


async def test_an_unexpected_error_gets_500_with_a_request_id_and_nothing_else(
    base_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # The operator key needs no database; the route does, and this one is not there.
    port = free_port()
    settings = api_settings(base_settings).model_copy(
        update={"database_url": f"postgresql+asyncpg://postgres@127.0.0.1:{port}/nowhere"}
    )
    with caplog.at_level(logging.ERROR, logger="ownersync.api"):
        async with served(settings) as http:
            response = await http.get("/v1/tenants", headers=OPERATOR)
    assert response.status_code == 500
    body = error(response)
    request_id = response.headers["x-request-id"]
    assert body["code"] == "internal_error"
    assert body["details"] == {"requestId": request_id}
    assert "127.0.0.1" not in response.text and str(port) not in response.text
    assert "Error" not in response.text  # no exception class, no exception text
    (record,) = [r for r in caplog.records if getattr(r, "request_id", None) == request_id]
    assert record.exc_info is not None and "/v1/tenants" in record.getMessage()


async def test_every_v1_answer_carries_a_request_id(api: Api) -> None:
    ids = {(await api.get(T, key=key)).headers.get("x-request-id") for key in ("read", None, "zz")}
    assert None not in ids and len(ids) == 3


# --- 5. no host names in error bodies --------------------------------------------------------


async def test_a_broker_outage_answers_503_without_naming_the_broker(
    base_settings: Settings, clean: None, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    settings = api_settings(base_settings).model_copy(
        update={"amqp_url": f"amqp://guest:guest@127.0.0.1:{port}/"}
    )
    with caplog.at_level(logging.ERROR):
        async with served(settings) as http:
            listed = await http.get(f"{T}/dead-letters", headers=OPERATOR)
            replayed = await http.post(f"{T}/dead-letters/replay", headers=OPERATOR)
            webhook = await post_webhook(
                str(http.base_url), engagement_body("prospect-created-assigned-unconnected.json")
            )
    for response in (listed, replayed, webhook):
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "broker_unavailable"
        assert "127.0.0.1" not in response.text and str(port) not in response.text
    assert any(str(port) in r.getMessage() for r in caplog.records), "the log keeps the detail"


# --- 6. no forged log lines ------------------------------------------------------------------


@contextlib.contextmanager
def text_log() -> Iterator[io.StringIO]:
    """What the root logger writes in the text format, as `OWNERSYNC_LOG_FORMAT=text` does."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    access = logging.getLogger("uvicorn.access")
    levels = root.level, access.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    access.setLevel(logging.INFO)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(levels[0])
        access.setLevel(levels[1])


async def test_a_newline_in_a_path_cannot_forge_a_text_log_line(api: Api) -> None:
    forged = "%0a12:00:00%20INFO%20%20%20%20ownersync%3A%20forged"
    with text_log() as out:
        await api.http.post(f"/salesforce/x{forged}/record-created", content=b"")
        await api.http.post(f"/engagement/x{forged}/events", content=b"{}")
        await api.get(f"/v1/tenants/x{forged}")
    lines = out.getvalue().splitlines()
    assert any("\\n12:00:00 INFO" in line for line in lines), "the paths were logged"
    assert not [line for line in lines if line.startswith("12:00:00 INFO")]


# --- 7. the org id belongs to the operator ---------------------------------------------------


async def test_only_the_operator_changes_a_tenants_salesforce_org_id(api: Api) -> None:
    current = (await api.get(T, key="admin")).json()["salesforceOrgId"]
    squatted = await api.patch(T, key="admin", json={"salesforceOrgId": sf_id("00D", 4242)})
    assert squatted.status_code == 403
    assert error(squatted)["details"] == {"required": "operator", "field": "salesforceOrgId"}
    assert "operator" in error(squatted)["message"]
    unchanged = await api.patch(T, key="admin", json={"salesforceOrgId": current})
    assert unchanged.status_code == 200  # sending back what it read is no change
    moved = await api.patch(T, json={"salesforceOrgId": sf_id("00D", 4242)})
    assert moved.status_code == 200 and moved.json()["salesforceOrgId"] == sf_id("00D", 4242)
    taken = await api.patch(T, key="admin", json={"salesforceOrgId": GLOBEX_ORG})
    assert taken.status_code == 403, "a tenant admin does not learn which org ids are taken"


# --- 8. every string bounded -----------------------------------------------------------------

LONG_EMAIL = "a" * 245 + "@acme.test"  # 255 characters, one over RFC 5321's 254


async def test_an_over_long_email_in_an_ae_webhook_gets_422(stack: Running) -> None:
    body = json.loads(engagement_body("prospect-created-assigned-unconnected.json"))
    body["prospect"]["email"] = LONG_EMAIL
    response = await post_webhook(stack.receiver_url or "", body)
    assert response.status_code == 422
    assert {d["field"] for d in response.json()["error"]["details"]} == {"prospect.email"}


async def test_an_over_long_webhook_id_gets_422_not_a_500(stack: Running) -> None:
    body = engagement_body("prospect-created-assigned-unconnected.json")
    response = await post_webhook(stack.receiver_url or "", body, webhook_id="w" * 201)
    assert response.status_code == 422
    assert "webhook-id" in response.json()["error"]["message"]


async def test_an_over_long_email_in_an_sf_message_gets_a_400_fault(stack: Running) -> None:
    body = (FIXTURES / "salesforce/lead-created-batch-100.xml").read_text()
    first_email = re.search(r"<sf:Email>([^<]*)</sf:Email>", body)
    assert first_email is not None
    body = body.replace(first_email[0], f"<sf:Email>{LONG_EMAIL}</sf:Email>", 1)
    async with httpx.AsyncClient(base_url=stack.receiver_url or "") as http:
        response = await http.post(sf_path("record-created"), content=body.encode())
    assert response.status_code == 400
    assert "<soapenv:Fault>" in response.text and "254" in response.text


async def test_over_long_strings_in_v1_requests_get_422(api: Api) -> None:
    request = {
        "requestId": "r-1",
        "prospect": {"id": 7, "email": LONG_EMAIL},
        "action": {"kind": "assign_to_user", "userId": 101},
    }
    assigned = await api.post(f"{T}/assignment-requests", key="write", json=request)
    assert assigned.status_code == 422, assigned.text
    too_long_request_id = {**request, "requestId": "r" * 201, "prospect": {"id": 7}}
    assert (
        await api.post(f"{T}/assignment-requests", key="write", json=too_long_request_id)
    ).status_code == 422
    named = await api.post(
        f"{T}/queues", key="write", json={"id": sf_id("00G", 9), "name": "q" * 201}
    )
    assert named.status_code == 422
    long_tenant = await api.get(f"/v1/tenants/{'t' * 65}")
    assert long_tenant.status_code == 422 and error(long_tenant)["code"] == "validation_error"


# --- 9. a rate per key -----------------------------------------------------------------------


async def test_a_key_over_its_rate_gets_429_with_retry_after_and_others_go_on(
    base_settings: Settings, clean: None
) -> None:
    settings = api_settings(base_settings).model_copy(
        update={"api_rate_per_second": 0.5, "api_rate_burst": 3}
    )
    async with served(settings) as http:
        created = await http.post(
            f"{T}/api-keys", headers=OPERATOR, json={"name": "t", "scopes": ["read"]}
        )
        reader = {"Authorization": f"Bearer {created.json()['key']}"}
        answers = [await http.get(T, headers=reader) for _ in range(4)]
        other = await http.get(T, headers=OPERATOR)
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    limited = answers[-1]
    assert error(limited)["code"] == "rate_limited"
    assert 1 <= int(limited.headers["retry-after"]) <= 2
    assert other.status_code == 200, "every key has a bucket of its own"


# --- 10. unknown tenants look like wrong credentials -----------------------------------------


async def test_an_unknown_tenant_gets_exactly_the_answer_of_a_wrong_signature(
    stack: Running,
) -> None:
    body = engagement_body("prospect-created-assigned-unconnected.json")
    wrong = signed_headers(body, secret="whsec_" + "QUJDREVGR0hJSktMTU5PUA==", webhook_id="w-1")
    async with httpx.AsyncClient(base_url=stack.receiver_url or "") as http:
        known = await http.post("/engagement/acme/events", content=body, headers=wrong)
        unknown = await http.post("/engagement/no-such-tenant/events", content=body, headers=wrong)
        unsigned = await http.post("/engagement/no-such-tenant/events", content=body)
        unsigned_known = await http.post("/engagement/acme/events", content=body)
    assert known.status_code == unknown.status_code == 401
    assert known.json() == unknown.json()
    assert unsigned.status_code == unsigned_known.status_code == 401
    assert unsigned.json() == unsigned_known.json()
