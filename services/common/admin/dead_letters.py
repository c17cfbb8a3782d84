"""Dead letters: list them with their reason, replay one or all, discard.

The broker side sits behind `DeadLetterStore`, with a RabbitMQ and an in-memory implementation.
Reading never loses a message: RabbitMQ messages are fetched unacknowledged (basic.get) and
handed back (nack, requeue) at the end of the scan. Replay republishes the body to the events
exchange under its original routing key (the event type) with publisher confirms, then removes
it from the dead letters. A dead letter's id is its message id: the event id.
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

from services.common.admin.errors import NotFound, Unavailable
from services.common.admin.pagination import Page, decode_cursor, encode_cursor
from services.common.admin.schemas import DeadLetterDiscarded, DeadLettersReplayed, DeadLetterView
from services.common.broker.base import DEAD_LETTERS, REASON_HEADER, Broker, BrokerUnavailable
from services.common.broker.memory import MemoryBroker
from services.common.broker.rabbit import RabbitBroker
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

    def view(self) -> DeadLetterView:
        try:
            body: Any = json.loads(self.body)
        except ValueError:
            body = self.body.decode("utf-8", "replace")
        return DeadLetterView(
            id=self.id,
            queue=self.queue,
            reason=self.reason,
            event_type=self.event_type,
            tenant=self.tenant,
            source_id=self.source_id,
            body=body,
        )


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
        try:
            await self.broker.connect()
        except BrokerUnavailable as exc:
            raise Unavailable(str(exc), code="broker_unavailable") from exc
        connection = self.broker._connection
        assert connection is not None
        found: list[tuple[Parked, bool]] = []
        async with self._lock:
            # on_return_raises: a replay nothing is bound to must fail, not vanish.
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
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
            headers = {
                k: v
                for k, v in (message.headers or {}).items()
                if not k.startswith(("x-ownersync-", "x-death", "x-first-death", "x-last-death"))
            }
            await exchange.publish(
                aio_pika.Message(
                    message.body,
                    headers=headers,
                    content_type=message.content_type,
                    message_id=message.message_id,
                    type=message.type,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key=parked.event_type,
                mandatory=True,
            )
            return True

        try:
            found = await self._scan(select, limit, republish)
        except (aio_pika.exceptions.AMQPError, TimeoutError) as exc:
            raise Unavailable(f"replay failed: {exc!r}", code="broker_unavailable") from exc
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


def _of(tenant_id: str | None) -> Select:
    return lambda p: tenant_id is None or p.tenant == tenant_id


async def list_dead_letters(
    store: DeadLetterStore, tenant_id: str | None, *, limit: int, cursor: str | None = None
) -> Page[DeadLetterView]:
    """`tenant_id` None: every dead letter (operators only), undecodable ones included."""
    offset = decode_cursor(cursor, int) or 0
    mine = [p for p in await store.peek(SCAN_LIMIT) if _of(tenant_id)(p)]
    page = mine[offset : offset + limit]
    more = len(mine) > offset + limit
    return Page[DeadLetterView](
        items=[p.view() for p in page], next_cursor=encode_cursor(offset + limit) if more else None
    )


async def replay_dead_letters(
    store: DeadLetterStore, tenant_id: str | None, letter_id: str | None = None
) -> DeadLettersReplayed:
    """Replay one (by id) or all of the tenant's dead letters."""
    select = _of(tenant_id)
    if letter_id is not None:
        replayed, kept = await store.replay(lambda p: select(p) and p.id == letter_id, 1)
        if not replayed and not kept:
            raise NotFound(f"dead letter {letter_id} not found")
    else:
        replayed, kept = await store.replay(select, SCAN_LIMIT)
    return DeadLettersReplayed(replayed=replayed, not_replayable=kept)


async def discard_dead_letter(
    store: DeadLetterStore, tenant_id: str | None, letter_id: str
) -> DeadLetterDiscarded:
    select = _of(tenant_id)
    dropped = await store.discard(lambda p: select(p) and p.id == letter_id, 1)
    if not dropped:
        raise NotFound(f"dead letter {letter_id} not found")
    return DeadLetterDiscarded(discarded=dropped[0])
