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
    engine: AsyncEngine,
    deliveries: Sequence[Delivery],
    handle: BatchHandler,
    broker: Broker | None = None,
) -> None:
    good: list[Delivery] = []
    for delivery in deliveries:
        if delivery.decode_error is not None:
            await delivery.dead_letter(delivery.decode_error)
        else:
            good.append(delivery)
    if not good:
        return
    try:
        await _apply(engine, [e for d in good for e in d.events], handle)
    except Exception as exc:
        if len(good) == 1 and len(good[0].events) == 1:
            await _settle_failure(good[0], exc)
            return
        log.warning("batch of %d messages failed (%r); applying them one by one", len(good), exc)
        for delivery in good:
            await _process_alone(engine, delivery, handle, broker)
        return
    await Delivery.ack_all(good)


async def _process_alone(
    engine: AsyncEngine, delivery: Delivery, handle: BatchHandler, broker: Broker | None
) -> None:
    """One message alone; if it carries several events and only some fail, those are sent
    on as messages of their own (with their own delivery count) and the rest is acked."""
    try:
        await _apply(engine, delivery.events, handle)
    except Exception as exc:
        if len(delivery.events) == 1 or broker is None:
            await _settle_failure(delivery, exc)
            return
        first_failure = exc
    else:
        await delivery.ack()
        return
    failed = []
    for event in delivery.events:
        try:
            await _apply(engine, [event], handle)
        except Exception as exc:
            failed.append(event)
            first_failure = exc
    if len(failed) == len(delivery.events):
        await _settle_failure(delivery, first_failure)
        return
    try:
        for event in failed:
            await broker.publish([event])
    except Exception as exc:
        await _settle_failure(delivery, exc)  # applied events are in the inbox: no doubles
        return
    log.warning("%d of %d events failed; sent on alone", len(failed), len(delivery.events))
    await delivery.ack()


async def _apply(engine: AsyncEngine, events: Sequence[AnyEvent], handle: BatchHandler) -> None:
    async with engine.begin() as conn:
        decided = await handle(conn, events, datetime.now(UTC))
    committed = datetime.now(UTC)
    for event_type, rule, refused in decided:
        metrics.record_decision(event_type, rule, refused)
    for event in events:
        latency = (committed - event.received_at).total_seconds()
        metrics.RECEIPT_TO_DECISION.labels(event.type).observe(max(latency, 0.0))


async def _settle_failure(delivery: Delivery, exc: Exception) -> None:
    if isinstance(exc, PermanentError):
        await delivery.dead_letter(str(exc))
        return
    first = delivery.events[0] if delivery.events else None
    log.error(
        "%d event(s) from %s (%s) failed on delivery %d: %r",
        len(delivery.events),
        first.event_id if first else "?",
        first.type if first else "?",
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
            await asyncio.shield(process_batch(engine, batch, handle, broker))
            events = sum(d.size for d in batch)
            metrics.BATCH_SIZE.labels(role.value).observe(events)
            if stats is not None:
                stats.batches += 1
                stats.settled += events
    finally:
        stop_wait.cancel()
        await consumer.aclose()
        log.info("%s stopped", role.value)
