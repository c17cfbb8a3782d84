"""A property-based run of the API's own OpenAPI document against the running app
(schemathesis, positive and negative examples): no 5xx, and every answer fits its schema
(documented status code, content type and body)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from services.api import openapi_document
from services.bootstrap import create_app
from services.common.settings import Settings
from services.common.web import free_port
from tests.integration.api_support import ACME, OPERATOR_KEY, Api, api_settings

pytestmark = pytest.mark.integration

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def live_url(base_settings: Settings, topology: None) -> Iterator[str]:
    """The app with its own runtime, on loopback, in a thread of its own: the examples are
    sent synchronously and must not block the loop that serves them."""
    port = free_port()
    app = create_app(settings=api_settings(base_settings))
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="api-under-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the app did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=20)


# Built from the same document `/v1/openapi.json` serves (checked below). The operator key
# reaches every route; the examples act on the acme tenant, which exists, so that they get
# past the tenant check and into the routes.
schema = schemathesis.openapi.from_dict(openapi_document())
schema.config.update(parameters={"tenant": ACME})
AUTH = {"Authorization": f"Bearer {OPERATOR_KEY}"}


async def test_the_document_tested_is_the_one_served(api: Api) -> None:
    assert (await api.get("/v1/openapi.json", key=None)).json() == openapi_document()


@schema.parametrize()
@settings(
    max_examples=int(os.environ.get("OWNERSYNC_SCHEMA_EXAMPLES", "30")),
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)
def test_api_answers_within_its_schema_and_never_with_a_5xx(
    case: schemathesis.Case, live_url: str, clean: None
) -> None:
    case.call_and_validate(base_url=live_url, headers=AUTH, checks=CHECKS)
