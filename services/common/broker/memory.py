"""The in-process broker of the embedded default: same interface and delivery rules as RabbitMQ."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncGenerator, Mapping, Sequence

from services.common import tracing
from services.common.broker.base import (
    BINDINGS,
    AnyEvent,
    DeadLetter,
    Delivery,
    Outcome,
    QueueRole,
    fill_batch,
    group_by_type,
    topic_matches,
)
from services.common.messages import dump_events, split_message
from services.common.metrics import EVENTS_DEAD_LETTERED

_Queued = tuple[bytes, int, int, Mapping[str, str]]


class MemoryBroker:
    def __init__(
        self, delivery_limit: int = 5, *, retry_limit: int = 5, retry_delay: float = 0.5
    ) -> None:
        self.delivery_limit = delivery_limit
        self.retry_limit = retry_limit
        self.retry_delay = retry_delay
        # (body, earlier deliveries, earlier delayed retries, trace context headers)
        self._queues: dict[QueueRole, asyncio.Queue[_Queued]] = {}
        self.dead_letters: list[DeadLetter] = []
        self._ids = itertools.count(1)

    async def connect(self) -> None:
        for role in QueueRole:
            self._queues.setdefault(role, asyncio.Queue())

    async def publish(self, events: Sequence[AnyEvent]) -> None:
        await self.connect()
        with tracing.publishing("memory", len(events)) as trace:
            for routing_key, same_type in group_by_type(events).items():
                body = dump_events(same_type)
                for role, pattern in BINDINGS.items():
                    if topic_matches(pattern, routing_key):
                        self._queues[role].put_nowait((body, 0, 0, trace))

    async def consume(
        self, role: QueueRole, *, batch_size: int, batch_wait: float
    ) -> AsyncGenerator[list[Delivery], None]:
        await self.connect()
        queue = self._queues[role]

        async def take() -> Delivery:
            return self._delivery(role, *await queue.get())

        def waiting() -> bool:
            return not queue.empty()

        while True:
            yield await fill_batch(take, waiting, batch_size=batch_size, batch_wait=batch_wait)

    def _delivery(
        self, role: QueueRole, body: bytes, count: int, retries: int, trace: Mapping[str, str]
    ) -> Delivery:
        async def settle(outcome: Outcome, reason: str | None) -> None:
            queue = self._queues[role]
            if outcome is Outcome.REQUEUE:
                if count + 1 >= self.delivery_limit:
                    limit = f"delivery limit {self.delivery_limit} reached"
                    self._park(role, body, f"{limit}: {reason}" if reason else limit)
                else:
                    queue.put_nowait((body, count + 1, retries, trace))
            elif outcome is Outcome.RETRY:
                if retries >= self.retry_limit:
                    limit = f"retry limit {self.retry_limit} reached"
                    self._park(role, body, f"{limit}: {reason}" if reason else limit)
                else:
                    # A fresh delivery count, like a copy coming back from the retry queue.
                    loop = asyncio.get_running_loop()
                    again = (body, 0, retries + 1, trace)
                    loop.call_later(self.retry_delay, queue.put_nowait, again)
            elif outcome is Outcome.DEAD_LETTER:
                self._park(role, body, reason or "dead-lettered")

        delivery = Delivery.decode(body, count, settle)
        delivery.retries = retries
        delivery.trace = trace
        return delivery

    def _park(self, role: QueueRole, body: bytes, reason: str) -> None:
        for _, part in split_message(body):
            EVENTS_DEAD_LETTERED.labels(role.value).inc()
            self.dead_letters.append(DeadLetter(str(next(self._ids)), role.value, reason, part))

    async def ping(self) -> bool:
        return True

    async def queue_depths(self) -> dict[str, int]:
        depths = {role.value: q.qsize() for role, q in self._queues.items()}
        depths["dead-letters"] = len(self.dead_letters)
        return depths

    async def close(self) -> None:
        return None
