"""Bulk mode at two relay replicas on the real Postgres, the AE simulator over HTTP: each
record goes in one import only (the claims skip each other's locked rows and leases), and
every owner ends right."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

import pytest

from services.common.ae_client import AeClient
from services.relay.ae_limits import SharedAeLimits
from services.relay.bulk import BulkMode
from tests.integration.test_relay_replicas import (
    UNIT,
    Remote,
    new_records,
    outbox_rows,
    relay_of,
    remote,
    write_owners,
)

pytestmark = pytest.mark.integration

__all__ = ["remote"]  # the fixture, used here


async def test_two_relays_never_import_the_same_record_twice(
    remote: Remote, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Statements in pieces of 40 records: the pieces a 10,000-record import needs (asyncpg
    # binds at most 32,767 parameters per statement) are exercised by 300.
    monkeypatch.setattr("services.relay.bulk.CHUNK", 40)
    monkeypatch.setattr("services.relay.bulk.SETTLE_CHUNK", 40)
    count = 300
    made = await new_records(remote, count, prospects=True)
    await write_owners(remote, {r["id"]: 102 for r in made})
    remote.ae.import_seconds = 0.3
    async with contextlib.AsyncExitStack() as stack:
        bulks = []
        for owner in ("relay-a", "relay-b"):
            relay = await stack.enter_async_context(relay_of(remote, owner))
            limits = SharedAeLimits(remote.engine, UNIT, owner=f"{owner}-bulk", daily_quota=None)
            stack.push_async_callback(limits.aclose)
            client = await stack.enter_async_context(
                AeClient(remote.ae_url, remote.tokens, UNIT, max_attempts=1, shared_limits=limits)
            )

            async def client_of(_: str, client: AeClient = client) -> AeClient:
                return client

            bulks.append(BulkMode(relay, client_of, threshold=10, size=200, poll=0.05))
        # Both see the same backlog at once: they split it, neither takes a record twice.
        results = await asyncio.gather(*(b.run_once("acme") for b in bulks))

    imported = Counter(
        int(row["matchId"]) for imp in remote.ae.imports.values() for row in imp["rows"]
    )
    assert sum(r.imported for r in results) == count
    assert len(imported) == count and set(imported.values()) == {1}
    assert len(remote.ae.imports) == 2  # each relay took its share in one import
    assert {p["assignedUserId"] for p in remote.ae.prospects.values()} == {102}
    assert {r["status"] for r in await outbox_rows(remote)} == {"done"}
