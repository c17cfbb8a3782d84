"""Test tiers (README, "Tests"):

- tests/unit: pure, no I/O.
- tests/service: the real roles on SQLite, the in-process broker and the simulators over
  loopback HTTP; no Postgres, no RabbitMQ.
- tests/integration: the real Postgres and RabbitMQ; each module says so with the `integration`
  marker (`make test-integration` runs those, `make test-fast` the rest). Connection settings
  can be overridden with OWNERSYNC_TEST_DATABASE_URL and OWNERSYNC_TEST_AMQP_URL.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import certifi
import pytest

from services.demo.replay import FIXTURES

# The /v1 API fixtures (`api`, on the real services) for the integration tier; `spans`.
pytest_plugins = ["tests.integration.api_support", "tests.traces"]

TESTS = Path(__file__).parent


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session", autouse=True)
def one_certificate_ca_bundle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every server the tests reach is on loopback and speaks plain HTTP, yet each httpx client
    loads the whole CA bundle it is pointed at: ~35 ms of CPU, and the roles build several
    clients each time they start (a quarter of the service tier's CPU went there). httpx reads
    SSL_CERT_FILE: one certificate of the same bundle will do."""
    bundle = Path(os.environ.get("SSL_CERT_FILE") or certifi.where()).read_text()
    first = re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", bundle, re.S)
    assert first is not None, "no certificate in the CA bundle"
    small = tmp_path_factory.mktemp("ca") / "one-certificate.pem"
    small.write_text(first.group(0) + "\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SSL_CERT_FILE", str(small))
        yield


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The marker is what `make test-fast` and `make test-integration` select by: a module in
    tests/integration without it, or one elsewhere with it, is in the wrong tier."""
    misplaced = []
    for item in items:
        marked = item.get_closest_marker("integration") is not None
        in_integration = item.path.is_relative_to(TESTS / "integration")
        if marked != in_integration:
            misplaced.append(str(item.path.relative_to(TESTS.parent)))
    if misplaced:
        raise pytest.UsageError(
            "tests in the wrong tier (needs Postgres or RabbitMQ: tests/integration with "
            "`pytestmark = pytest.mark.integration`; needs neither: tests/service or tests/unit): "
            + ", ".join(sorted(set(misplaced)))
        )
