"""RabbitMQ through aio-pika: declared topology, confirmed mandatory publishes, batched consumers.

Topology (declared by every process at start-up, idempotently):
  exchange `<exchange>` (topic, durable)
    -> `<prefix>.syncer`   bound to `sf.#`  (quorum, x-delivery-limit, DLX)
    -> `<prefix>.assigner` bound to `ae.#`  (quorum, x-delivery-limit, DLX)
  exchange `<prefix>.dlx` (fanout, durable) -> `<prefix>.dead-letters` (quorum)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustConnection,
)

from services.common.broker.base import (
    BINDINGS,
    DEAD_LETTERS,
    REASON_HEADER,
    AnyEvent,
    BrokerUnavailable,
    Delivery,
    Outcome,
    QueueRole,
    group_by_type,
)
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
    ) -> None:
        self.url = url
        self.exchange_name = exchange
        self.prefix = queue_prefix
        self.delivery_limit = delivery_limit
        self.prefetch = prefetch
        self.connect_timeout = connect_timeout
        self.publish_timeout = publish_timeout
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
        messages = [(_message(same), rk) for rk, same in group_by_type(events).items()]
        try:
            async with asyncio.timeout(self.publish_timeout):
                await asyncio.gather(
                    *(exchange.publish(m, routing_key=rk, mandatory=True) for m, rk in messages)
                )
        except Exception as exc:
            raise BrokerUnavailable(f"RabbitMQ did not confirm the publish: {exc!r}") from exc

    async def consume(
        self, role: QueueRole, *, batch_size: int, batch_wait: float
    ) -> AsyncGenerator[list[Delivery], None]:
        await self.connect()
        assert self._connection is not None
        channel = await self._connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=max(self.prefetch, batch_size))
        queue = await channel.declare_queue(
            self.queue_name(role), durable=True, arguments=self._work_queue_arguments()
        )
        dlx = await channel.get_exchange(self.dlx_name)
        inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        tag = await queue.consume(inbox.put, no_ack=False)
        try:
            while True:
                batch = [self._delivery(role, await inbox.get(), dlx)]
                size = batch[0].size
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(batch_wait):
                        while size < batch_size:
                            batch.append(self._delivery(role, await inbox.get(), dlx))
                            size += batch[-1].size
                while size < batch_size and not inbox.empty():
                    batch.append(self._delivery(role, inbox.get_nowait(), dlx))
                    size += batch[-1].size
                yield batch
        finally:
            with contextlib.suppress(Exception):
                await queue.cancel(tag)
            # Unsettled prefetched messages go back to the queue when the channel closes.
            with contextlib.suppress(Exception):
                await channel.close()

    def _delivery(
        self, role: QueueRole, message: AbstractIncomingMessage, dlx: AbstractExchange
    ) -> Delivery:
        # A quorum queue counts earlier deliveries in this header (absent on the first).
        delivered_before = (message.headers or {}).get("x-delivery-count")
        count = delivered_before if isinstance(delivered_before, int) else 0

        async def settle(outcome: Outcome, reason: str | None) -> None:
            if outcome is Outcome.ACK:
                await message.ack()
            elif outcome is Outcome.REQUEUE and count + 1 < self.delivery_limit:
                await message.nack(requeue=True)
            else:
                if outcome is Outcome.REQUEUE:
                    limit = f"delivery limit {self.delivery_limit} reached"
                    reason = f"{limit}: {reason}" if reason else limit
                await self._park(dlx, role, message, reason or "dead-lettered")

        delivery = Delivery.decode(message.body, count, settle)
        # Safe because a consumer settles each batch before it takes the next one.
        delivery.ack_through = lambda: message.ack(multiple=True)
        delivery.tag = int(message.delivery_tag or 0)
        return delivery

    async def _park(
        self,
        dlx: AbstractExchange,
        role: QueueRole,
        message: AbstractIncomingMessage,
        reason: str,
    ) -> None:
        # Publish to the DLX ourselves (confirmed) so the reason travels with the message, one
        # event per message so that each can be listed, replayed or discarded on its own; then
        # ack. If the publish fails, the requeue leaves the message where it was.
        headers = dict(message.headers or {})
        headers.update({REASON_HEADER: reason[:1000], "x-ownersync-queue": role.value})
        parts = split_message(message.body)
        try:
            await asyncio.gather(
                *(
                    dlx.publish(
                        aio_pika.Message(
                            body,
                            headers=headers,
                            content_type=message.content_type,
                            message_id=event_id or message.message_id,
                            type=message.type,
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        ),
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
            for name in [*(r.value for r in QueueRole), DEAD_LETTERS]:
                queue = await channel.declare_queue(self.queue_name(name), passive=True)
                depths[name] = int(queue.declaration_result.message_count or 0)
        return depths

    async def delete_topology(self) -> None:
        """Remove every queue and exchange (tests and teardown only)."""
        await self.connect()
        assert self._connection is not None
        async with self._connection.channel() as channel:
            for name in [*(r.value for r in QueueRole), DEAD_LETTERS]:
                # if_unused=True (aio-pika's default) is refused by quorum queues.
                await channel.queue_delete(self.queue_name(name), if_unused=False, if_empty=False)
            await channel.exchange_delete(self.exchange_name)
            await channel.exchange_delete(self.dlx_name)

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None


def _message(events: list[AnyEvent]) -> aio_pika.Message:
    first = events[0]
    return aio_pika.Message(
        dump_events(events),
        content_type="application/json",
        # A single event keeps its own id; a message of several is named after its events.
        message_id=str(first.event_id if len(events) == 1 else _message_id(events)),
        type=first.type,
        headers={"tenant": first.tenant, "version": first.version, "events": len(events)},
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


def _message_id(events: list[AnyEvent]) -> uuid.UUID:
    return uuid.uuid5(events[0].event_id, ",".join(str(e.event_id) for e in events[1:]))


async def purge_queues(broker: RabbitBroker) -> None:
    """Empty every ownersync queue (tests and operators starting over)."""
    await broker.connect()
    assert broker._connection is not None
    async with broker._connection.channel() as channel:
        for name in [*(r.value for r in QueueRole), DEAD_LETTERS]:
            queue = await channel.declare_queue(broker.queue_name(name), passive=True)
            await queue.purge()
