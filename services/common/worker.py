"""The consuming loop both workers share: one transaction per batch, then acks.

A batch is applied in one database transaction (inbox dedupe, decisions, audit, outbox) and
acknowledged only after the commit. What happens on a failure depends on its kind
(`services.common.failures`):
- the database or the broker is away: the batch is held, unsettled, and applied again after a
  capped backoff until it goes through (or the worker stops): no delivery is spent;
- otherwise the events are retried one by one so that one bad event cannot hold the others
  back; an event that lost a race (unique violation, deadlock) goes through the delayed retry
  queue; any other failure is requeued and, at the delivery limit, dead-lettered with the error
  as reason.

The consume loop beats (`WorkerStats.beat`) while it is alive, idle or holding, for /healthz;
a consumer lost to the broker is started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    wait_exponential,
    wait_random,
)

from services.common import metrics, tracing
from services.common.broker.base import AnyEvent, Broker, Delivery, QueueRole
from services.common.db import store
from services.common.domain import TenantPolicy
from services.common.failures import Failure, classify, is_infrastructure
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
    held: int = 0  # times a batch was held because the database or the broker was away
    restarts: int = 0  # times the consumer was started again
    beat: float = field(default_factory=time.monotonic)  # last sign of life (monotonic)

    def alive(self) -> None:
        self.beat = time.monotonic()

    def silent_for(self) -> float:
        return time.monotonic() - self.beat


@dataclass(frozen=True)
class Backoff:
    """How a worker waits before it applies a held batch again or restarts its consumer."""

    initial: float = 0.2
    maximum: float = 5.0


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
    """Apply and settle the batch. An infrastructure failure is raised with nothing of the
    failing part settled: the caller holds the unsettled deliveries and calls again."""
    good: list[Delivery] = []
    for delivery in deliveries:
        if delivery.settled:
            continue
        if delivery.decode_error is not None:
            await delivery.dead_letter(delivery.decode_error)
        else:
            good.append(delivery)
    if not good:
        return
    try:
        await _apply(engine, [e for d in good for e in d.events], handle)
    except Exception as exc:
        kind = classify(exc)
        if kind is Failure.INFRASTRUCTURE:
            raise
        # A lost race is decided again at once, alone: it usually goes through then.
        if len(good) == 1 and len(good[0].events) == 1 and kind is not Failure.RETRYABLE:
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
        if is_infrastructure(exc):
            raise
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
            if is_infrastructure(exc):
                raise  # the applied ones are in the inbox: the held message dedupes them
            failed.append(event)
            first_failure = exc
    if len(failed) == len(delivery.events):
        await _settle_failure(delivery, first_failure)
        return
    for event in failed:
        await broker.publish([event])  # BrokerUnavailable: held, like any broker outage
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
    kind = classify(exc)
    first = delivery.events[0] if delivery.events else None
    log.error(
        "%d event(s) from %s (%s) failed (%s) on delivery %d, retry %d: %r",
        len(delivery.events),
        first.event_id if first else "?",
        first.type if first else "?",
        kind.value,
        delivery.delivery_count + 1,
        delivery.retries,
        exc,
    )
    reason = f"{type(exc).__name__}: {exc}"
    if kind is Failure.RETRYABLE:
        await delivery.retry_later(reason)
    else:
        await delivery.requeue(reason)


async def _sleep_unless_stopped(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()


def _retrying(
    stop: asyncio.Event, backoff: Backoff, on_wait: Callable[[RetryCallState], None]
) -> AsyncRetrying:
    """Retries while the failure is the database's or the broker's, with capped exponential
    backoff, until it goes through or `stop` is set (then the failure is raised)."""
    return AsyncRetrying(
        retry=retry_if_exception(is_infrastructure),
        wait=wait_exponential(multiplier=backoff.initial, max=backoff.maximum)
        + wait_random(0, backoff.initial),
        stop=lambda _: stop.is_set(),
        sleep=lambda seconds: _sleep_unless_stopped(stop, seconds),
        before_sleep=on_wait,
        reraise=True,
    )


async def _hold_and_apply(
    engine: AsyncEngine,
    batch: Sequence[Delivery],
    handle: BatchHandler,
    broker: Broker,
    *,
    role: QueueRole,
    stop: asyncio.Event,
    backoff: Backoff,
    stats: WorkerStats,
) -> None:
    """Apply the batch; while the database or the broker is away, hold what is unsettled and
    try again. A stop during an outage leaves it unsettled: it goes back to the queue."""

    def waiting(state: RetryCallState) -> None:
        stats.alive()
        stats.held += 1
        failure = state.outcome.exception() if state.outcome else None
        unsettled = sum(1 for d in batch if not d.settled)
        log.warning(
            "%s holds %d messages (attempt %d): %r; trying again in %.1f s",
            role.value,
            unsettled,
            state.attempt_number,
            failure,
            state.upcoming_sleep,
        )

    try:
        async for attempt in _retrying(stop, backoff, waiting):
            with attempt:
                await process_batch(engine, batch, handle, broker)
    except Exception as exc:
        if not is_infrastructure(exc):
            raise
        log.warning("%s stopped while holding a batch (%r): it returns to the queue", role, exc)


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
    backoff: Backoff = Backoff(),
    beat_every: float = 1.0,
) -> None:
    """Consume until `stop` is set; the batch in hand is finished and acked before returning.

    A consumer lost to the broker is started again (with backoff); any other failure of the
    loop ends it with that failure, for the process to exit on."""
    stats = stats if stats is not None else WorkerStats()
    log.info("%s consuming (batch %d, wait %.0f ms)", role.value, batch_size, batch_wait * 1000)

    def restarting(state: RetryCallState) -> None:
        stats.alive()
        stats.restarts += 1
        failure = state.outcome.exception() if state.outcome else None
        log.warning(
            "%s consumer lost (%r); starting it again in %.1f s",
            role.value,
            failure,
            state.upcoming_sleep,
        )

    try:
        async for attempt in _retrying(stop, backoff, restarting):
            with attempt:
                consumer = broker.consume(role, batch_size=batch_size, batch_wait=batch_wait)
                try:
                    await _consume(
                        consumer,
                        engine,
                        handle,
                        broker,
                        role=role,
                        stop=stop,
                        stats=stats,
                        backoff=backoff,
                        beat_every=beat_every,
                    )
                finally:
                    with contextlib.suppress(Exception):
                        await consumer.aclose()
    except Exception as exc:
        if not (stop.is_set() and is_infrastructure(exc)):
            raise
    finally:
        log.info("%s stopped", role.value)


async def _consume(
    consumer: AsyncGenerator[list[Delivery], None],
    engine: AsyncEngine,
    handle: BatchHandler,
    broker: Broker,
    *,
    role: QueueRole,
    stop: asyncio.Event,
    stats: WorkerStats,
    backoff: Backoff,
    beat_every: float,
) -> None:
    stop_wait = asyncio.ensure_future(stop.wait())
    next_batch: asyncio.Future[list[Delivery]] | None = None
    try:
        while not stop.is_set():
            stats.alive()
            if next_batch is None:
                next_batch = asyncio.ensure_future(anext(consumer))
            waited: set[asyncio.Future[Any]] = {next_batch, stop_wait}
            done, _ = await asyncio.wait(waited, timeout=beat_every, return_when="FIRST_COMPLETED")
            if not done:
                continue  # idle: beat and wait on
            if next_batch not in done:
                break
            batch, next_batch = next_batch.result(), None
            # Shielded: a stop during the batch lets it finish, commit and ack.
            with tracing.processing(role.value, batch):
                await asyncio.shield(
                    _hold_and_apply(
                        engine,
                        batch,
                        handle,
                        broker,
                        role=role,
                        stop=stop,
                        backoff=backoff,
                        stats=stats,
                    )
                )
            events = sum(d.size for d in batch)
            metrics.BATCH_SIZE.labels(role.value).observe(events)
            stats.batches += 1
            stats.settled += events
    finally:
        stop_wait.cancel()
        if next_batch is not None and not next_batch.done():
            # Cancelling the pending read closes the consumer inside the generator;
            # prefetched, unsettled messages return to the queue.
            next_batch.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, Exception):
                await next_batch
