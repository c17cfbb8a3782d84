"""Dead letters on the broker: list them without losing any, replay them, discard them.

A RabbitMQ and an in-memory implementation of `DeadLetterStore`. Reading never loses a message:
RabbitMQ messages are fetched unacknowledged (basic.get) and handed back (nack, requeue) at the
end of the scan. Replay republishes the body to the events exchange under its original routing
key (the event type) with publisher confirms, then removes it from the dead letters. A dead
letter's id is its message id: the event id. Broker failures raise `BrokerUnavailable`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from services.common.broker.base import (
    DEAD_LETTERS,
    REASON_HEADER,
    Broker,
    BrokerUnavailable,
    fresh_headers,
)
from services.common.broker.memory import MemoryBroker
from services.common.broker.rabbit import RabbitBroker, copy_of
from services.common.messages import load_event

SCAN_LIMIT = 10_000  # the most dead letters one call looks at


@dataclass(frozen=True)
class Parked:
    id: str
    queue: str
    reason: str
    event_type: str | None
    tenant: str | None
    source_id: str | None
    body: bytes


Select = Callable[[Parked], bool]


class DeadLetterStore(Protocol):
    async def peek(self, limit: int) -> list[Parked]:
        """Up to `limit` dead letters, oldest first; nothing is removed."""
        ...

    async def replay(self, select: Select, limit: int) -> tuple[list[str], list[str]]:
        """Republish the selected ones and remove them: (replayed ids, kept: not replayable)."""
        ...

    async def discard(self, select: Select, limit: int) -> list[str]:
        """Remove the selected ones for good."""
        ...


def _body_fields(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _stable_id(message_id: str | None, body: bytes, fields: dict[str, Any]) -> str:
    return str(
        message_id or fields.get("event_id") or "sha-" + hashlib.sha256(body).hexdigest()[:24]
    )


class RabbitDeadLetters:
    def __init__(self, broker: RabbitBroker) -> None:
        self.broker = broker
        self._lock = asyncio.Lock()  # one scan at a time: a scan holds what it reads

    def _parse(self, message: AbstractIncomingMessage) -> Parked:
        headers = dict(message.headers or {})
        fields = _body_fields(message.body)
        event_type = message.type or fields.get("type") or message.routing_key or None
        return Parked(
            id=_stable_id(message.message_id, message.body, fields),
            queue=str(headers.get("x-ownersync-queue") or "?"),
            reason=str(headers.get(REASON_HEADER) or "dead-lettered by RabbitMQ"),
            event_type=str(event_type) if event_type else None,
            tenant=str(headers.get("tenant") or fields.get("tenant") or "") or None,
            source_id=fields.get("source_id"),
            body=message.body,
        )

    async def _scan(
        self,
        select: Select,
        limit: int,
        act: Callable[[Parked, AbstractIncomingMessage, Any], Any] | None,
    ) -> list[tuple[Parked, bool]]:
        found: list[tuple[Parked, bool]] = []
        async with self._lock:
            # on_return_raises: a replay nothing is bound to must fail, not vanish.
            channel = await self.broker.open_channel(publisher_confirms=True, on_return_raises=True)
            held: list[AbstractIncomingMessage] = []
            seen: set[str] = set()
            try:
                queue = await channel.declare_queue(
                    self.broker.queue_name(DEAD_LETTERS), passive=True
                )
                exchange = await channel.get_exchange(self.broker.exchange_name) if act else None
                for _ in range(SCAN_LIMIT):
                    message = await queue.get(no_ack=False, fail=False)
                    if message is None:
                        break
                    parked = self._parse(message)
                    if parked.id in seen:  # replayed, failed again and parked again: stop here
                        held.append(message)
                        break
                    seen.add(parked.id)
                    if select(parked):
                        done = bool(await act(parked, message, exchange)) if act else False
                        found.append((parked, done))
                        if done:
                            await message.ack()
                        else:
                            held.append(message)
                        if len(found) >= limit:
                            break
                    else:
                        held.append(message)
            finally:
                if held:
                    # Hand back everything still held, in one go and in the original order.
                    await held[-1].nack(multiple=True, requeue=True)
                await channel.close()
        return found

    async def peek(self, limit: int) -> list[Parked]:
        return [p for p, _ in await self._scan(lambda _: True, limit, None)]

    async def replay(self, select: Select, limit: int) -> tuple[list[str], list[str]]:
        async def republish(
            parked: Parked, message: AbstractIncomingMessage, exchange: Any
        ) -> bool:
            if not parked.event_type:
                return False
            # A replayed message is a new one: full fresh deliveries, no retries spent.
            headers = fresh_headers(message.headers, "x-ownersync-")
            await exchange.publish(
                copy_of(message, headers),
                routing_key=parked.event_type,
                mandatory=True,
            )
            return True

        try:
            found = await self._scan(select, limit, republish)
        except (aio_pika.exceptions.AMQPError, TimeoutError) as exc:
            raise BrokerUnavailable(f"replay failed: {exc!r}") from exc
        return [p.id for p, done in found if done], [p.id for p, done in found if not done]

    async def discard(self, select: Select, limit: int) -> list[str]:
        async def drop(parked: Parked, message: AbstractIncomingMessage, exchange: Any) -> bool:
            return True

        return [p.id for p, done in await self._scan(select, limit, drop) if done]


class MemoryDeadLetters:
    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker

    def _parsed(self) -> list[tuple[Any, Parked]]:
        out = []
        for letter in self.broker.dead_letters:
            fields = _body_fields(letter.body)
            out.append(
                (
                    letter,
                    Parked(
                        id=_stable_id(None, letter.body, fields)
                        if fields.get("event_id")
                        else f"memory-{letter.id}",
                        queue=letter.queue,
                        reason=letter.reason,
                        event_type=fields.get("type"),
                        tenant=fields.get("tenant"),
                        source_id=fields.get("source_id"),
                        body=letter.body,
                    ),
                )
            )
        return out

    async def peek(self, limit: int) -> list[Parked]:
        return [p for _, p in self._parsed()[:limit]]

    async def replay(self, select: Select, limit: int) -> tuple[list[str], list[str]]:
        replayed: list[str] = []
        kept: list[str] = []
        for letter, parked in self._parsed():
            if len(replayed) + len(kept) >= limit or not select(parked):
                continue
            try:
                event = load_event(parked.body)
            except Exception:
                kept.append(parked.id)
                continue
            await self.broker.publish([event])
            self.broker.dead_letters.remove(letter)
            replayed.append(parked.id)
        return replayed, kept

    async def discard(self, select: Select, limit: int) -> list[str]:
        dropped: list[str] = []
        for letter, parked in self._parsed():
            if len(dropped) < limit and select(parked):
                self.broker.dead_letters.remove(letter)
                dropped.append(parked.id)
        return dropped


_STORES: weakref.WeakKeyDictionary[Any, DeadLetterStore] = weakref.WeakKeyDictionary()


def dead_letter_store(broker: Broker) -> DeadLetterStore:
    """The store of `broker`'s dead letters (one per broker: it serialises the scans)."""
    store = _STORES.get(broker)
    if store is None:
        if isinstance(broker, RabbitBroker):
            store = RabbitDeadLetters(broker)
        elif isinstance(broker, MemoryBroker):
            store = MemoryDeadLetters(broker)
        else:
            raise TypeError(f"no dead-letter store for {type(broker).__name__}")
        _STORES[broker] = store
    return store
