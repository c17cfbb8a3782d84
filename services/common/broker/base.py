"""What every broker offers: confirmed publishing and batched consuming with named ack outcomes."""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, TypeVar

from services.common.messages import AeProspectEvent, SfRecordEvent, load_events

AnyEvent = SfRecordEvent | AeProspectEvent
V = TypeVar("V")


class BrokerUnavailable(Exception):
    """The broker could not confirm a publish: nothing may be acknowledged upstream."""


class QueueRole(StrEnum):
    SYNCER = "syncer"
    ASSIGNER = "assigner"


BINDINGS: dict[QueueRole, str] = {QueueRole.SYNCER: "sf.#", QueueRole.ASSIGNER: "ae.#"}
DEAD_LETTERS = "dead-letters"
RETRY = "retry"
REASON_HEADER = "x-ownersync-reason"
# How many delayed retries (lost races) a message has had; absent on the first.
RETRIES_HEADER = "x-ownersync-retries"
# Headers that count or describe earlier deliveries: a parked, retried or replayed copy is a new
# message and starts without them (a carried x-delivery-count would spend its deliveries).
DELIVERY_HEADERS = ("x-delivery-count", "x-death", "x-first-death", "x-last-death")


def fresh_headers(headers: Mapping[str, V] | None, *drop: str) -> dict[str, V]:
    """`headers` without the delivery bookkeeping (and without the `drop` prefixes)."""
    prefixes = (*DELIVERY_HEADERS, *drop)
    return {k: v for k, v in (headers or {}).items() if not k.startswith(prefixes)}


def group_by_type(events: Sequence[AnyEvent]) -> dict[str, list[AnyEvent]]:
    """Events per routing key (their type), in order: each group travels as one message."""
    groups: dict[str, list[AnyEvent]] = {}
    for event in events:
        groups.setdefault(event.type, []).append(event)
    return groups


def topic_matches(pattern: str, routing_key: str) -> bool:
    if pattern.endswith(".#"):
        return routing_key == pattern[:-2] or routing_key.startswith(pattern[:-1])
    return fnmatch.fnmatchcase(routing_key, pattern.replace("*", "[!.]*"))


async def fill_batch(
    take: Callable[[], Awaitable[Delivery]],
    waiting: Callable[[], bool],
    *,
    batch_size: int,
    batch_wait: float,
) -> list[Delivery]:
    """The next batch: the first delivery to come, then those already waiting, until the batch
    holds `batch_size` events (the last message may take it past).

    With `batch_wait` 0 (the default setting) no timer runs: a worker that comes back from a
    batch takes what arrived meanwhile, so a backlog drains in full batches and a lone message
    is applied at once. A wait > 0 also takes what comes within it: fewer transactions at a low
    rate, each message later by up to that wait."""
    batch = [await take()]
    size = batch[0].size
    if batch_wait > 0:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(batch_wait):
                while size < batch_size:
                    batch.append(await take())
                    size += batch[-1].size
    while size < batch_size and waiting():
        batch.append(await take())
        size += batch[-1].size
    return batch


class Outcome(StrEnum):
    """What happens to a delivery once a worker is done with it."""

    ACK = "ack"  # applied (or a duplicate): remove it from the queue
    REQUEUE = "requeue"  # could not be applied now: try again, up to the delivery limit
    RETRY = "retry"  # lost a race: try again after a delay, up to the retry limit
    DEAD_LETTER = "dead_letter"  # can never be applied: park it with the reason


@dataclass
class Delivery:
    body: bytes
    delivery_count: int
    settle: Callable[[Outcome, str | None], Awaitable[None]]
    events: list[AnyEvent] = field(default_factory=list)
    decode_error: str | None = None
    settled: bool = field(default=False)
    # RabbitMQ: ack this delivery and every earlier one of its channel in one frame
    # (`basic.ack multiple`), with the delivery tag that orders them.
    ack_through: Callable[[], Awaitable[None]] | None = None
    tag: int = 0
    retries: int = 0  # delayed retries this message already had
    trace: Mapping[str, str] = field(default_factory=dict)  # its W3C trace context headers

    @classmethod
    def decode(
        cls,
        body: bytes,
        delivery_count: int,
        settle: Callable[[Outcome, str | None], Awaitable[None]],
    ) -> Delivery:
        try:
            return cls(body, delivery_count, settle, events=load_events(body))
        except Exception as exc:
            return cls(body, delivery_count, settle, decode_error=f"undecodable event: {exc}")

    @property
    def size(self) -> int:
        """How much of a batch this delivery takes: its events (an undecodable one counts 1)."""
        return max(1, len(self.events))

    async def ack(self) -> None:
        await self._settle(Outcome.ACK, None)

    async def requeue(self, reason: str | None = None) -> None:
        """Try again later; at the delivery limit the message is dead-lettered with `reason`."""
        await self._settle(Outcome.REQUEUE, reason)

    async def retry_later(self, reason: str | None = None) -> None:
        """Try again after the retry delay; past the retry limit it is dead-lettered."""
        await self._settle(Outcome.RETRY, reason)

    async def dead_letter(self, reason: str) -> None:
        await self._settle(Outcome.DEAD_LETTER, reason)

    @staticmethod
    async def ack_all(deliveries: Sequence[Delivery]) -> None:
        """Ack a whole batch, in one frame when the broker allows it."""
        if deliveries and all(d.ack_through is not None for d in deliveries):
            last = max(deliveries, key=lambda d: d.tag)
            assert last.ack_through is not None
            await last.ack_through()
            for delivery in deliveries:
                delivery.settled = True
            return
        for delivery in deliveries:
            await delivery.ack()

    async def _settle(self, outcome: Outcome, reason: str | None) -> None:
        if not self.settled:
            self.settled = True
            await self.settle(outcome, reason)


@dataclass(frozen=True)
class DeadLetter:
    id: str
    queue: str
    reason: str
    body: bytes


class Broker(Protocol):
    delivery_limit: int

    async def connect(self) -> None: ...
    async def publish(self, events: Sequence[AnyEvent]) -> None: ...
    def consume(
        self, role: QueueRole, *, batch_size: int, batch_wait: float
    ) -> AsyncGenerator[list[Delivery], None]: ...
    async def ping(self) -> bool: ...
    async def queue_depths(self) -> dict[str, int]: ...
    async def close(self) -> None: ...
