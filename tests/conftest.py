"""Test tiers (README, "Tests"):

- tests/unit: pure, no I/O.
- tests/service: the real roles on SQLite, the in-process broker and the simulators over
  loopback HTTP; no Postgres, no RabbitMQ.
- tests/integration: the real Postgres and RabbitMQ; each module says so with the `integration`
  marker (`make test-integration` runs those, `make test-fast` the rest). Connection settings
  can be overridden with OWNERSYNC_TEST_DATABASE_URL and OWNERSYNC_TEST_AMQP_URL.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from services.demo.replay import FIXTURES

# The /v1 API fixtures (`api`, on the real services) for the integration tier.
pytest_plugins = ["tests.integration.api_support"]

TESTS = Path(__file__).parent


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


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
