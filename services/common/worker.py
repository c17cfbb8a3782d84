"""The consuming loop both workers share: one transaction per batch, then acks.

A batch is applied in one database transaction (inbox dedupe, decisions, audit, outbox) and
acknowledged only after the commit. When a batch fails, its events are retried one by one so
that one poison event cannot hold the others back; an event that still fails is requeued and,
at the delivery limit, dead-lettered with the error as reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.common import metrics
from services.common.broker.base import AnyEvent, Broker, Delivery, QueueRole
from services.common.db import store
from services.common.domain import TenantPolicy
from services.common.messages import AeProspectEvent, SfRecordEvent

log = logging.getLogger(__name__)

# A handler applies the events and returns what it decided: (event type, rule, refused).
Decided = tuple[str, str, bool]
BatchHandler = Callable[
    [AsyncConnection, Sequence[AnyEvent], datetime], Awaitable[Sequence[Decided]]
]


@dataclass
class WorkerStats:
    batches: int = 0
    settled: int = 0


class PermanentError(Exception):
    """An event that can never be applied (unknown tenant, …): dead-letter it at once."""


E = TypeVar("E", SfRecordEvent, AeProspectEvent)


async def by_tenant(
    conn: AsyncConnection, events: Sequence[AnyEvent], kind: type[E], worker: str
) -> tuple[list[tuple[TenantPolicy, list[E]]], set[str]]:
    """The batch grouped by tenant with each tenant's policy, and the event ids already applied."""
    grouped: dict[str, list[E]] = defaultdict(list)
    for event in events:
        if not isinstance(event, kind):
            raise PermanentError(f"the {worker} does not handle {event.type}")
        grouped[event.tenant].append(event)
    policies = await store.load_policies(conn, grouped)
    if unknown := set(grouped) - set(policies):
        raise PermanentError(f"unknown tenant {sorted(unknown)[0]!r}")
    processed = await store.processed_event_ids(conn, (str(e.event_id) for e in events))
    return [(policies[t], tenant_events) for t, tenant_events in grouped.items()], processed


async def process_batch(
    engine: AsyncEngine, deliveries: Sequence[Delivery], handle: BatchHandler
) -> None:
    events: list[Delivery] = []
    for delivery in deliveries:
        if delivery.event is None:
            await delivery.dead_letter(delivery.decode_error or "undecodable")
        else:
            events.append(delivery)
    if not events:
        return
    try:
        await _apply(engine, events, handle)
    except Exception as exc:
        if len(events) == 1:
            await _settle_failure(events[0], exc)
            return
        log.warning("batch of %d failed (%r); applying its events one by one", len(events), exc)
        for delivery in events:
            try:
                await _apply(engine, [delivery], handle)
            except Exception as single_exc:
                await _settle_failure(delivery, single_exc)
        return
    await Delivery.ack_all(events)


async def _apply(engine: AsyncEngine, events: Sequence[Delivery], handle: BatchHandler) -> None:
    applied = [d.event for d in events if d.event is not None]
    async with engine.begin() as conn:
        decided = await handle(conn, applied, datetime.now(UTC))
    committed = datetime.now(UTC)
    for event_type, rule, refused in decided:
        metrics.record_decision(event_type, rule, refused)
    for event in applied:
        latency = (committed - event.received_at).total_seconds()
        metrics.RECEIPT_TO_DECISION.labels(event.type).observe(max(latency, 0.0))


async def _settle_failure(delivery: Delivery, exc: Exception) -> None:
    if isinstance(exc, PermanentError):
        await delivery.dead_letter(str(exc))
        return
    event = delivery.event
    log.error(
        "event %s (%s) failed on delivery %d: %r",
        event.event_id if event else "?",
        event.type if event else "?",
        delivery.delivery_count + 1,
        exc,
    )
    await delivery.requeue(f"{type(exc).__name__}: {exc}")


async def run_worker(
    broker: Broker,
    role: QueueRole,
    engine: AsyncEngine,
    handle: BatchHandler,
    *,
    batch_size: int,
    batch_wait: float,
    stop: asyncio.Event,
    stats: WorkerStats | None = None,
) -> None:
    """Consume until `stop` is set; the batch in hand is finished and acked before returning."""
    log.info("%s consuming (batch %d, wait %.0f ms)", role.value, batch_size, batch_wait * 1000)
    consumer = broker.consume(role, batch_size=batch_size, batch_wait=batch_wait)
    stop_wait = asyncio.ensure_future(stop.wait())
    try:
        while not stop.is_set():
            next_batch = asyncio.ensure_future(anext(consumer))
            done, _ = await asyncio.wait({next_batch, stop_wait}, return_when="FIRST_COMPLETED")
            if next_batch not in done:
                # Cancelling the pending read closes the consumer inside the generator;
                # prefetched, unsettled messages return to the queue.
                next_batch.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await next_batch
                break
            # Shielded: a stop during the batch lets it finish, commit and ack.
            batch = next_batch.result()
            await asyncio.shield(process_batch(engine, batch, handle))
            metrics.BATCH_SIZE.labels(role.value).observe(len(batch))
            if stats is not None:
                stats.batches += 1
                stats.settled += len(batch)
    finally:
        stop_wait.cancel()
        await consumer.aclose()
        log.info("%s stopped", role.value)
