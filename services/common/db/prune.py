"""Pruning: inbox entries and settled outbox rows older than the retention go, in small batches.

The inbox dedupes redeliveries; SF retries an outbound message for 24 hours, so an entry older
than that plus a margin (`OWNERSYNC_INBOX_RETENTION_HOURS`, default 48) can no longer stop a
duplicate and only makes the table, its indexes and every lookup bigger. Settled outbox rows
(done, superseded, discarded) of the same age go too; dead ones wait for an operator and stay,
and so does the audit log: it is the history of why each record is owned as it is.

Each batch is one short transaction that deletes at most `batch_size` rows it could lock
(`FOR UPDATE SKIP LOCKED`): several replicas prune side by side without waiting on each other
or deleting a row twice, and a batch never holds locks for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from prometheus_client import Counter
from sqlalchemy import ColumnElement, Table, delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db.tables import inbox, outbox

log = logging.getLogger("ownersync.prune")

PRUNED = Counter(
    "ownersync_pruned_rows_total",
    "Rows deleted because they outlived the retention (inbox entries, settled outbox rows)",
    ["table"],
)
SETTLED = ("done", "superseded", "discarded")


def _old_rows(cutoff: datetime) -> dict[str, tuple[Table, ColumnElement[bool]]]:
    return {
        "inbox": (inbox, inbox.c.processed_at < cutoff),
        "outbox": (outbox, outbox.c.status.in_(SETTLED) & (outbox.c.done_at < cutoff)),
    }


async def prune_batch(engine: AsyncEngine, table: str, cutoff: datetime, limit: int) -> int:
    """Delete up to `limit` rows of `table` older than `cutoff` in one transaction; how many."""
    target, old = _old_rows(cutoff)[table]
    key = next(iter(target.primary_key.columns))
    doomed = select(key).where(old).limit(limit).with_for_update(skip_locked=True)
    async with engine.begin() as conn:
        result = await conn.execute(delete(target).where(key.in_(doomed.scalar_subquery())))
    deleted = int(result.rowcount or 0)
    if deleted:
        PRUNED.labels(table).inc(deleted)
    return deleted


@dataclass
class Pruner:
    """Prunes every `interval` seconds until stopped; a failed pass is logged and retried."""

    engine: AsyncEngine
    retention: timedelta
    batch_size: int = 5000
    interval: float = 300.0
    pause: float = 0.05  # between batches, so pruning never hogs the database
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    async def prune_once(self) -> dict[str, int]:
        """Every old row of each table, batch after batch: rows deleted per table."""
        cutoff = self.clock() - self.retention
        pruned: dict[str, int] = {}
        for table in ("inbox", "outbox"):
            total = 0
            while True:
                deleted = await prune_batch(self.engine, table, cutoff, self.batch_size)
                total += deleted
                if deleted < self.batch_size:
                    break
                await asyncio.sleep(self.pause)
            pruned[table] = total
        if any(pruned.values()):
            log.info(
                "pruned %d inbox entries and %d settled outbox rows older than %s",
                pruned["inbox"],
                pruned["outbox"],
                cutoff.isoformat(timespec="seconds"),
            )
        return pruned

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.prune_once()
            except Exception:
                log.exception("pruning failed; trying again in %g s", self.interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval)
