"""The outbound messenger: Salesforce's two outbound-message actions and their delivery habits
(batches of up to 100, retries until acked, duplicates, reordering)."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import httpx

from services.common.sfid import to18
from services.sim.sf.soap import (
    OUTBOUND_FIELDS,
    OutboundNotification,
    SObjectType,
    build_outbound_message,
    is_ack,
)

OutboundAction = Literal["created", "reassigned"]

MAX_NOTIFICATIONS_PER_MESSAGE = 100
KEY_PREFIX_NOTIFICATION = "04l"
KEY_PREFIX_OUTBOUND_ACTION = "04k"


class SendingOrg(Protocol):
    """What the messenger needs of the org it sends for: its identity, ids and randomness."""

    org_id: str
    instance_url: str | None
    rng: random.Random

    def new_id(self, key_prefix: str) -> str: ...


@dataclass
class OutboundMessage:
    delivery_id: int
    action: OutboundAction
    url: str
    notifications: tuple[OutboundNotification, ...]
    body: bytes
    queued_at: float
    generation: int
    attempts: int = 0

    @property
    def notification_ids(self) -> tuple[str, ...]:
        return tuple(n.notification_id for n in self.notifications)


@dataclass(frozen=True)
class DeliveryAttempt:
    delivery_id: int
    action: OutboundAction
    url: str
    notification_ids: tuple[str, ...]
    attempt: int
    status: int | None  # None: no HTTP answer (connection refused, timeout)
    acked: bool
    error: str | None = None


class OutboundMessenger:
    """Two outbound-message actions (record created, owner changed) and their delivery queue.

    Like Salesforce: notifications are batched per action (at most 100 per message), a message
    counts as delivered only on HTTP 200 with <Ack>true</Ack>, and is retried with growing
    intervals otherwise. When healthy, messages leave in the order the records were written;
    `reorder` and `duplicate` switch on Salesforce's other habits.
    """

    def __init__(self, org: SendingOrg) -> None:
        self._org = org
        self.created_url: str | None = None
        self.reassigned_url: str | None = None
        self.created_action_id = org.new_id(KEY_PREFIX_OUTBOUND_ACTION)
        self.reassigned_action_id = org.new_id(KEY_PREFIX_OUTBOUND_ACTION)
        self.batch_window_ms = 50
        self.initial_retry_interval = 1.0
        self.max_retry_interval = 120.0
        self.retry_window = 24 * 3600.0  # Salesforce gives up on a message after 24 hours
        self.request_timeout = 10.0
        self.duplicate = False
        self.reorder = False
        self.deliveries: list[DeliveryAttempt] = []
        self._pending: dict[OutboundAction, list[OutboundNotification]] = {
            "created": [],
            "reassigned": [],
        }
        self._inflight: dict[int, OutboundMessage] = {}
        self._sequence = itertools.count(1)
        self._delivery_ids = itertools.count(1)
        self._generation = 0
        self._wakeup: asyncio.Event | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._retries: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None
        self._drain_waiters: set[asyncio.Event] = set()

    def configure(
        self,
        *,
        created_url: str | None = None,
        reassigned_url: str | None = None,
        created_action_id: str | None = None,
        reassigned_action_id: str | None = None,
    ) -> None:
        """Point the actions at endpoints; a None URL disables that action."""
        self.created_url = created_url
        self.reassigned_url = reassigned_url
        if created_action_id:
            self.created_action_id = to18(created_action_id)
        if reassigned_action_id:
            self.reassigned_action_id = to18(reassigned_action_id)

    @property
    def running(self) -> bool:
        return self._dispatcher is not None and not self._dispatcher.done()

    def pending_count(self) -> int:
        """Notifications not yet acknowledged (queued or in a message being delivered)."""
        queued = sum(len(notifications) for notifications in self._pending.values())
        return queued + sum(len(m.notifications) for m in self._inflight.values())

    # ---- lifecycle

    def start(self) -> None:
        """Start the sender in the running event loop (the app lifespan does this)."""
        if self.running:
            return
        self._wakeup = asyncio.Event()
        self._client = httpx.AsyncClient(timeout=self.request_timeout)
        self._dispatcher = asyncio.create_task(self._dispatch_forever(), name="sf-sim-outbound")
        if any(self._pending.values()):
            self._wakeup.set()

    async def stop(self) -> None:
        tasks = [task for task in (self._dispatcher, *self._retries) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._dispatcher = None
        self._retries.clear()
        self._requeue_inflight()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def drain(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 (the sim's API)
        """Return once every notification is acknowledged or dropped; TimeoutError otherwise."""
        if not self.pending_count():
            return
        # One event per waiter, made in the caller's loop, so no event outlives its loop.
        idle = asyncio.Event()
        self._drain_waiters.add(idle)
        try:
            async with asyncio.timeout(timeout):
                await idle.wait()
        finally:
            self._drain_waiters.discard(idle)

    def _settle(self) -> None:
        if not self.pending_count():
            for idle in self._drain_waiters:
                idle.set()

    def reset(self) -> None:
        self._generation += 1  # messages already on their way are forgotten, not logged
        for task in self._retries:
            task.cancel()
        self._retries.clear()
        self._inflight.clear()
        for notifications in self._pending.values():
            notifications.clear()
        self.deliveries.clear()
        self._settle()

    # ---- producing notifications

    def record_created(self, sobject: SObjectType, record: dict[str, Any]) -> None:
        if self.created_url:
            self._enqueue("created", sobject, record)

    def record_reassigned(self, sobject: SObjectType, record: dict[str, Any]) -> None:
        if self.reassigned_url:
            self._enqueue("reassigned", sobject, record)

    def _enqueue(
        self, action: OutboundAction, sobject: SObjectType, record: dict[str, Any]
    ) -> None:
        snapshot = tuple(
            (name, None if record.get(name) is None else str(record[name]))
            for name in OUTBOUND_FIELDS
        )
        notification_id = self._org.new_id(KEY_PREFIX_NOTIFICATION)
        notification = OutboundNotification(
            notification_id, sobject, snapshot, next(self._sequence)
        )
        self._pending[action].append(notification)
        if self._wakeup is not None:
            self._wakeup.set()

    # ---- delivering

    async def _dispatch_forever(self) -> None:
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            if self.batch_window_ms > 0:
                # Let a burst of writes gather into one message, as Salesforce does.
                await asyncio.sleep(self.batch_window_ms / 1000)
            self._wakeup.clear()
            messages = self._take_messages()
            self._settle()  # notifications of a disabled action were just dropped
            for message in messages:
                await self._send_first(message)

    def _take_messages(self) -> list[OutboundMessage]:
        messages: list[OutboundMessage] = []
        for action, queued in self._pending.items():
            notifications = list(queued)
            queued.clear()
            url = self.created_url if action == "created" else self.reassigned_url
            if url is None:
                continue  # the action was disabled after these were queued
            if self.reorder:
                self._org.rng.shuffle(notifications)
            for start in range(0, len(notifications), MAX_NOTIFICATIONS_PER_MESSAGE):
                chunk = notifications[start : start + MAX_NOTIFICATIONS_PER_MESSAGE]
                messages.append(self._new_message(action, url, chunk))
        if self.reorder:
            self._org.rng.shuffle(messages)
        else:
            messages.sort(key=lambda m: min(n.sequence for n in m.notifications))
        if self.duplicate:
            messages = [
                copy
                for message in messages
                for copy in (
                    message,
                    self._new_message(message.action, message.url, message.notifications),
                )
            ]
        return messages

    def _new_message(
        self, action: OutboundAction, url: str, notifications: Sequence[OutboundNotification]
    ) -> OutboundMessage:
        instance = (self._org.instance_url or "https://ownersync-sim.my.salesforce.com").rstrip("/")
        org15 = self._org.org_id[:15]
        body = build_outbound_message(
            organization_id=self._org.org_id,
            action_id=self.created_action_id if action == "created" else self.reassigned_action_id,
            enterprise_url=f"{instance}/services/Soap/c/62.0/{org15}",
            partner_url=f"{instance}/services/Soap/u/62.0/{org15}",
            notifications=notifications,
        )
        message = OutboundMessage(
            delivery_id=next(self._delivery_ids),
            action=action,
            url=url,
            notifications=tuple(notifications),
            body=body,
            queued_at=time.monotonic(),
            generation=self._generation,
        )
        self._inflight[message.delivery_id] = message
        return message

    async def _send_first(self, message: OutboundMessage) -> None:
        # First attempts go one at a time so a healthy receiver sees the write order;
        # failed messages are retried on their own, which is how Salesforce reorders.
        if await self._attempt(message):
            self._done(message)
            return
        task = asyncio.create_task(self._retry(message), name=f"sf-sim-retry-{message.delivery_id}")
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    async def _retry(self, message: OutboundMessage) -> None:
        interval = self.initial_retry_interval
        while time.monotonic() - message.queued_at < self.retry_window:
            await asyncio.sleep(interval)
            if await self._attempt(message):
                self._done(message)
                return
            interval = min(interval * 2, self.max_retry_interval)
        self._done(message)  # given up, as Salesforce does: its notifications are lost

    def _done(self, message: OutboundMessage) -> None:
        self._inflight.pop(message.delivery_id, None)
        self._settle()

    async def _attempt(self, message: OutboundMessage) -> bool:
        if message.generation != self._generation:
            return True  # reset since: nobody is waiting for this message any more
        assert self._client is not None
        message.attempts += 1
        status: int | None = None
        acked = False
        error: str | None = None
        try:
            response = await self._client.post(
                message.url,
                content=message.body,
                headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'},
            )
            status = response.status_code
            acked = status == 200 and is_ack(response.content)
        except Exception as exc:  # whatever went wrong, it is not an ack: retry like Salesforce
            error = f"{type(exc).__name__}: {exc}"
        if message.generation == self._generation:
            self.deliveries.append(
                DeliveryAttempt(
                    message.delivery_id,
                    message.action,
                    message.url,
                    message.notification_ids,
                    message.attempts,
                    status,
                    acked,
                    error,
                )
            )
        return acked

    def _requeue_inflight(self) -> None:
        # Stopping must not lose anything: unacknowledged notifications wait for the next start.
        seen: set[str] = set()
        for message in self._inflight.values():
            for notification in message.notifications:
                if notification.notification_id not in seen:
                    seen.add(notification.notification_id)
                    self._pending[message.action].append(notification)
        self._inflight.clear()
        for queued in self._pending.values():
            queued.sort(key=lambda n: n.sequence)
