"""RabbitMQ through aio-pika: declared topology, confirmed mandatory publishes, batched consumers.

Topology (declared by every process at start-up, idempotently):
  exchange `<exchange>` (topic, durable)
    -> `<prefix>.syncer`   bound to `sf.#`  (quorum, x-delivery-limit, DLX)
    -> `<prefix>.assigner` bound to `ae.#`  (quorum, x-delivery-limit, DLX)
  exchange `<prefix>.dlx` (fanout, durable) -> `<prefix>.dead-letters` (quorum)
  exchange `<prefix>.retry` (fanout, durable) -> `<prefix>.retry` (quorum; each message expires
    after the retry delay and dead-letters, at least once, to `<exchange>` under its own routing
    key: back to its work queue. The delay is per message, not an argument of the queue, so
    that changing it never makes the queue's re-declaration fail)

Settling never raises on a channel the broker closed: an unsettled message comes back to the
queue anyway (and the inbox dedupes it), so the consumer carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustConnection,
)

from services.common import tracing
from services.common.broker.base import (
    BINDINGS,
    DEAD_LETTERS,
    REASON_HEADER,
    RETRIES_HEADER,
    RETRY,
    AnyEvent,
    BrokerUnavailable,
    Delivery,
    Outcome,
    QueueRole,
    fill_batch,
    fresh_headers,
    group_by_type,
)
from services.common.failures import is_infrastructure
from services.common.messages import dump_events, split_message
from services.common.metrics import EVENTS_DEAD_LETTERED

log = logging.getLogger(__name__)


class RabbitBroker:
    def __init__(
        self,
        url: str,
        *,
        exchange: str = "ownersync.events",
        queue_prefix: str = "ownersync",
        delivery_limit: int = 5,
        prefetch: int = 300,
        connect_timeout: float = 3.0,
        publish_timeout: float = 10.0,
        retry_delay: float = 2.0,
        retry_limit: int = 5,
    ) -> None:
        self.url = url
        self.exchange_name = exchange
        self.prefix = queue_prefix
        self.delivery_limit = delivery_limit
        self.prefetch = prefetch
        self.connect_timeout = connect_timeout
        self.publish_timeout = publish_timeout
        self.retry_delay = retry_delay
        self.retry_limit = retry_limit
        self._connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._dlx: AbstractExchange | None = None
        self._lock = asyncio.Lock()

    def queue_name(self, role: QueueRole | str) -> str:
        return f"{self.prefix}.{role}"

    @property
    def dlx_name(self) -> str:
        return f"{self.prefix}.dlx"

    @property
    def retry_exchange_name(self) -> str:
        return f"{self.prefix}.{RETRY}"

    def retry_queue_arguments(self) -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": self.exchange_name,
            # At least once: a message leaves the retry queue only once its work queue has it.
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }

    async def connect(self) -> None:
        """Connect and declare the topology; raises BrokerUnavailable when RabbitMQ is down."""
        async with self._lock:
            if self._connection is not None and not self._connection.is_closed:
                return
            try:
                async with asyncio.timeout(self.connect_timeout):
                    connection = await aio_pika.connect_robust(
                        self.url, timeout=self.connect_timeout
                    )
            except Exception as exc:
                raise BrokerUnavailable(f"RabbitMQ unreachable: {exc}") from exc
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            self._exchange, self._dlx = await self._declare(channel)
            self._connection, self._publish_channel = connection, channel

    async def _declare(self, channel: AbstractChannel) -> tuple[AbstractExchange, AbstractExchange]:
        exchange = await channel.declare_exchange(
            self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
        )
        dlx = await channel.declare_exchange(
            self.dlx_name, aio_pika.ExchangeType.FANOUT, durable=True
        )
        dead = await channel.declare_queue(
            self.queue_name(DEAD_LETTERS), durable=True, arguments={"x-queue-type": "quorum"}
        )
        await dead.bind(dlx, routing_key="")
        retry = await channel.declare_exchange(
            self.retry_exchange_name, aio_pika.ExchangeType.FANOUT, durable=True
        )
        delayed = await channel.declare_queue(
            self.queue_name(RETRY), durable=True, arguments=self.retry_queue_arguments()
        )
        await delayed.bind(retry, routing_key="")
        for role, pattern in BINDINGS.items():
            queue = await channel.declare_queue(
                self.queue_name(role), durable=True, arguments=self._work_queue_arguments()
            )
            await queue.bind(exchange, routing_key=pattern)
        return exchange, dlx

    def _work_queue_arguments(self) -> dict[str, Any]:
        # RabbitMQ 3.10 quorum queues have no default delivery limit: without one a poison
        # message is redelivered forever.
        return {
            "x-queue-type": "quorum",
            "x-delivery-limit": self.delivery_limit,
            "x-dead-letter-exchange": self.dlx_name,
        }

    async def publish(self, events: Sequence[AnyEvent]) -> None:
        """Publish persistent, mandatory messages; returns only when RabbitMQ confirmed all."""
        await self.connect()
        assert self._exchange is not None
        exchange = self._exchange
        with tracing.publishing(self.exchange_name, len(events)) as trace:
            messages = [(_message(same, trace), rk) for rk, same in group_by_type(events).items()]
            try:
                async with asyncio.timeout(self.publish_timeout):
                    await asyncio.gather(
                        *(exchange.publish(m, routing_key=rk, mandatory=True) for m, rk in messages)
                    )
            except Exception as exc:
                raise BrokerUnavailable(f"RabbitMQ did not confirm the publish: {exc!r}") from exc

    def window(self, role: QueueRole, batch_size: int) -> int:
        """Unacked messages a consumer of `role` holds (its prefetch, in messages).

        The syncer's messages are SF outbound messages of up to 100 notifications (~47 kB
        each): `prefetch` of them (100: up to 10,000 events, 20 batches of 500) keep a batch
        and the next decoded with plenty to spare. Raised to the batch size (in events), as
        before, they were 500 messages, 50,000 events, ~24 MB of bodies waiting in the syncer
        under a backlog. The assigner's messages are one webhook each: a full batch needs as
        many messages as events."""
        if role is QueueRole.SYNCER:
            return self.prefetch
        return max(self.prefetch, batch_size)

    async def consume(
        self, role: QueueRole, *, batch_size: int, batch_wait: float
    ) -> AsyncGenerator[list[Delivery], None]:
        """Batches of deliveries; raises (for the worker to start over) when a settle found the
        channel closed and the channel did not come back."""
        await self.connect()
        assert self._connection is not None
        channel = await self._connection.channel(publisher_confirms=True)
        consumer = _Consumer(self, role, channel)
        try:
            await channel.set_qos(prefetch_count=self.window(role, batch_size))
            queue = await channel.declare_queue(
                self.queue_name(role), durable=True, arguments=self._work_queue_arguments()
            )
            consumer.dlx = await channel.get_exchange(self.dlx_name)
            consumer.retry = await channel.get_exchange(self.retry_exchange_name)
        except BaseException:
            with contextlib.suppress(Exception):
                await channel.close()
            raise
        ahead = _DecodeAhead(consumer, limit=batch_size)
        try:
            tag = await queue.consume(ahead.arrived, no_ack=False)
        except BaseException:
            ahead.decoding.cancel()
            with contextlib.suppress(Exception):
                await channel.close()
            raise
        try:
            while True:
                consumer.check()
                yield await fill_batch(
                    ahead.get, ahead.has_ready, batch_size=batch_size, batch_wait=batch_wait
                )
        finally:
            ahead.decoding.cancel()
            with contextlib.suppress(Exception):
                await queue.cancel(tag)
            # Unsettled prefetched messages go back to the queue when the channel closes.
            with contextlib.suppress(Exception):
                await channel.close()

    async def _park(
        self,
        dlx: AbstractExchange,
        role: QueueRole,
        message: AbstractIncomingMessage,
        reason: str,
    ) -> None:
        # Publish to the DLX ourselves (confirmed) so the reason travels with the message, one
        # event per message so that each can be listed, replayed or discarded on its own; then
        # ack. If the publish fails, the requeue leaves the message where it was. The parked
        # copy is a new message: it starts with no delivery count and no retries.
        headers = fresh_headers(message.headers, RETRIES_HEADER)
        headers.update({REASON_HEADER: reason[:1000], "x-ownersync-queue": role.value})
        parts = split_message(message.body)
        try:
            await asyncio.gather(
                *(
                    dlx.publish(
                        copy_of(message, headers, body=body, message_id=event_id),
                        routing_key=message.routing_key or "",
                    )
                    for event_id, body in parts
                )
            )
        except Exception:
            log.exception("could not dead-letter message %s; requeueing", message.message_id)
            await message.nack(requeue=True)
            return
        await message.ack()
        EVENTS_DEAD_LETTERED.labels(role.value).inc(len(parts))
        log.warning("dead-lettered %s from %s: %s", message.message_id, role.value, reason)

    async def _retry_later(
        self,
        retry: AbstractExchange,
        message: AbstractIncomingMessage,
        retries: int,
        reason: str | None,
    ) -> None:
        # A copy with one more retry waits out the TTL of the retry queue, then RabbitMQ
        # dead-letters it back to its work queue (its routing key is its event type); the
        # original is acked once the copy is confirmed. It starts with no delivery count.
        headers = fresh_headers(message.headers, RETRIES_HEADER, "x-ownersync-")
        headers[RETRIES_HEADER] = retries + 1
        if reason:
            headers["x-ownersync-last-error"] = reason[:1000]
        await retry.publish(
            copy_of(message, headers, expiration=self.retry_delay),
            routing_key=message.routing_key or message.type or "",
        )
        await message.ack()
        log.warning(
            "message %s retried in %.1f s (retry %d of %d): %s",
            message.message_id,
            self.retry_delay,
            retries + 1,
            self.retry_limit,
            reason,
        )

    async def open_channel(self, **options: Any) -> AbstractChannel:
        """A channel of its own on the broker's connection (the caller closes it)."""
        await self.connect()
        assert self._connection is not None
        return await self._connection.channel(**options)

    async def ping(self) -> bool:
        try:
            await self.connect()
        except BrokerUnavailable:
            return False
        return self._connection is not None and not self._connection.is_closed

    async def queue_depths(self) -> dict[str, int]:
        await self.connect()
        assert self._connection is not None
        depths: dict[str, int] = {}
        async with self._connection.channel() as channel:
            for name in [*(r.value for r in QueueRole), DEAD_LETTERS, RETRY]:
                queue = await channel.declare_queue(self.queue_name(name), passive=True)
                depths[name] = int(queue.declaration_result.message_count or 0)
        return depths

    async def delete_topology(self) -> None:
        """Remove every queue and exchange (tests and teardown only)."""
        await self.connect()
        assert self._connection is not None
        async with self._connection.channel() as channel:
            for name in [*(r.value for r in QueueRole), DEAD_LETTERS, RETRY]:
                # if_unused=True (aio-pika's default) is refused by quorum queues.
                await channel.queue_delete(self.queue_name(name), if_unused=False, if_empty=False)
            await channel.exchange_delete(self.exchange_name)
            await channel.exchange_delete(self.dlx_name)
            await channel.exchange_delete(self.retry_exchange_name)

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None


class _DecodeAhead:
    """Decodes a consumer's messages as they arrive, in their order, while the worker waits on
    the database for the batch before: the next batch is ready when that one is acked.

    At most `limit` events wait decoded (one batch): the prefetched rest waits as bytes, so
    that memory grows with the batch size and not with the prefetch."""

    def __init__(self, consumer: _Consumer, *, limit: int) -> None:
        self.consumer = consumer
        self.limit = limit
        self.raw: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self.ready: asyncio.Queue[Delivery | None] = asyncio.Queue()  # None: decoding failed
        self.failure: Exception | None = None
        self.ahead = 0  # events decoded and not taken yet
        self.room = asyncio.Event()
        self.room.set()
        self.decoding: asyncio.Task[None] = asyncio.create_task(
            self.run(), name=f"decode {consumer.role.value}"
        )

    async def arrived(self, message: AbstractIncomingMessage) -> None:
        self.raw.put_nowait(message)

    async def run(self) -> None:
        try:
            while True:
                message = await self.raw.get()
                while self.ahead >= self.limit:
                    self.room.clear()
                    await self.room.wait()
                delivery = self.consumer.delivery(message)
                self.ahead += delivery.size
                self.ready.put_nowait(delivery)
                await asyncio.sleep(0)  # one message at a time: the loop serves the sockets
        except Exception as exc:  # the consumer starts over (its messages return to the queue)
            self.failure = exc
            self.ready.put_nowait(None)

    async def get(self) -> Delivery:
        delivery = await self.ready.get()
        if delivery is None:
            raise ConsumerLost(f"{self.consumer.role.value} stopped decoding") from self.failure
        self.ahead -= delivery.size
        self.room.set()
        return delivery

    def has_ready(self) -> bool:
        return not self.ready.empty()


class ConsumerLost(ConnectionError):
    """The consumer's channel closed under a settle and did not come back: start over."""


class _Consumer:
    """One consumer channel: turns its messages into deliveries whose settling never raises
    on a closed channel (the broker returns those messages to the queue by itself)."""

    def __init__(self, broker: RabbitBroker, role: QueueRole, channel: AbstractChannel) -> None:
        self.broker = broker
        self.role = role
        self.channel = channel
        self.dlx: AbstractExchange | None = None
        self.retry: AbstractExchange | None = None
        self.settle_failed = False

    def check(self) -> None:
        if self.settle_failed and self.channel.is_closed:
            raise ConsumerLost(f"{self.role.value} channel closed under a settle")
        self.settle_failed = False

    async def _guarded(self, what: str, message: AbstractIncomingMessage, act: Any) -> None:
        try:
            await act()
        except Exception as exc:
            if not is_infrastructure(exc):
                raise
            self.settle_failed = True
            log.warning(
                "could not %s message %s (%r): the broker returns it to the queue",
                what,
                message.message_id,
                exc,
            )

    def delivery(self, message: AbstractIncomingMessage) -> Delivery:
        broker, role = self.broker, self.role
        headers = message.headers or {}
        # A quorum queue counts earlier deliveries in this header (absent on the first).
        delivered_before = headers.get("x-delivery-count")
        count = delivered_before if isinstance(delivered_before, int) else 0
        retried = headers.get(RETRIES_HEADER)
        retries = retried if isinstance(retried, int) else 0
        dlx, retry = self.dlx, self.retry
        assert dlx is not None and retry is not None

        async def settle(outcome: Outcome, reason: str | None) -> None:
            if outcome is Outcome.ACK:
                await message.ack()
            elif outcome is Outcome.REQUEUE and count + 1 < broker.delivery_limit:
                await message.nack(requeue=True)
            elif outcome is Outcome.RETRY and retries < broker.retry_limit:
                await broker._retry_later(retry, message, retries, reason)
            else:
                if outcome is Outcome.REQUEUE:
                    limit = f"delivery limit {broker.delivery_limit} reached"
                    reason = f"{limit}: {reason}" if reason else limit
                elif outcome is Outcome.RETRY:
                    limit = f"retry limit {broker.retry_limit} reached"
                    reason = f"{limit}: {reason}" if reason else limit
                await broker._park(dlx, role, message, reason or "dead-lettered")

        async def guarded_settle(outcome: Outcome, reason: str | None) -> None:
            await self._guarded(outcome.value, message, lambda: settle(outcome, reason))

        async def ack_through() -> None:
            await self._guarded("ack", message, lambda: message.ack(multiple=True))

        delivery = Delivery.decode(message.body, count, guarded_settle)
        # Safe because a consumer settles each batch before it takes the next one.
        delivery.ack_through = ack_through
        delivery.tag = int(message.delivery_tag or 0)
        delivery.retries = retries
        delivery.trace = tracing.carried(headers)
        return delivery


def copy_of(
    message: AbstractIncomingMessage,
    headers: dict[str, Any],
    *,
    body: bytes | None = None,
    message_id: str | None = None,
    expiration: float | None = None,
) -> aio_pika.Message:
    """A persistent new message made from `message` (parked, retried or replayed), with
    `headers` in place of its own."""
    return aio_pika.Message(
        message.body if body is None else body,
        headers=headers,
        content_type=message.content_type,
        message_id=message_id or message.message_id,
        type=message.type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        expiration=expiration,
    )


def _message(events: list[AnyEvent], trace: Mapping[str, str]) -> aio_pika.Message:
    first = events[0]
    return aio_pika.Message(
        dump_events(events),
        content_type="application/json",
        # A single event keeps its own id; a message of several is named after its events.
        message_id=str(first.event_id if len(events) == 1 else _message_id(events)),
        type=first.type,
        headers={
            "tenant": first.tenant,
            "version": first.version,
            "events": len(events),
            **trace,
        },
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


def _message_id(events: list[AnyEvent]) -> uuid.UUID:
    return uuid.uuid5(events[0].event_id, ",".join(str(e.event_id) for e in events[1:]))


async def purge_queues(broker: RabbitBroker) -> None:
    """Empty every ownersync queue (tests and operators starting over)."""
    await broker.connect()
    assert broker._connection is not None
    async with broker._connection.channel() as channel:
        for name in [*(r.value for r in QueueRole), DEAD_LETTERS, RETRY]:
            queue = await channel.declare_queue(broker.queue_name(name), passive=True)
            await queue.purge()
