"""Test tiers: tests/unit (pure, no I/O) and tests/integration (real Postgres and RabbitMQ,
simulators over loopback HTTP). Connection settings can be overridden with
OWNERSYNC_TEST_DATABASE_URL and OWNERSYNC_TEST_AMQP_URL."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.demo.replay import FIXTURES

collect_ignore: list[str] = []


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
