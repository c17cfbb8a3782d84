"""Salesforce simulator: the REST subset ownersync calls, one active lead assignment rule, and
outbound messages delivered with Salesforce's habits (batches of up to 100, retries until acked,
duplicates, reordering).

The state lives in memory in `SfSimState`; `create_sf_app` serves it over real HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import re
import secrets
import string
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl

import httpx
from defusedxml import ElementTree as SafeET
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from services.common.sfid import (
    KEY_PREFIX_CONTACT,
    KEY_PREFIX_LEAD,
    KEY_PREFIX_QUEUE,
    KEY_PREFIX_USER,
    InvalidSalesforceId,
    to18,
)

SObjectType = Literal["Lead", "Contact"]
Operator = Literal["equals", "contains", "startsWith", "notEquals"]
OutboundAction = Literal["created", "reassigned"]

SOAP_ENV_NS = "http://schemas.xmlsoap.org/soap/envelope/"
XSD_NS = "http://www.w3.org/2001/XMLSchema"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
OUTBOUND_NS = "http://soap.sforce.com/2005/09/outbound"
SOBJECT_NS = "urn:sobject.enterprise.soap.sforce.com"

MAX_NOTIFICATIONS_PER_MESSAGE = 100
KEY_PREFIX_NOTIFICATION = "04l"
KEY_PREFIX_OUTBOUND_ACTION = "04k"
KEY_PREFIXES: dict[SObjectType, str] = {"Lead": KEY_PREFIX_LEAD, "Contact": KEY_PREFIX_CONTACT}
REQUIRED_FIELDS: dict[SObjectType, tuple[str, ...]] = {
    "Lead": ("LastName", "Company"),
    "Contact": ("LastName",),
}
# Salesforce maintains these itself; a write that names them is refused.
READ_ONLY_FIELDS = frozenset(
    {"Id", "CreatedDate", "SystemModstamp", "LastModifiedDate", "CreatedById", "IsDeleted"}
)
# The sObject fields of an outbound message, in the order Salesforce writes them (see fixtures).
OUTBOUND_FIELDS = ("Id", "Email", "OwnerId", "SystemModstamp", "CreatedDate")
_FIELD_NAME = re.compile(r"^[A-Z][A-Za-z0-9_]*$")
_API_VERSION = re.compile(r"^v\d+\.\d$")
_ID_CHARS = string.ascii_letters + string.digits
_SOBJECTS: dict[str, SObjectType] = {"lead": "Lead", "contact": "Contact"}


def format_sf_datetime(moment: datetime) -> str:
    """Salesforce's dateTime: UTC, millisecond precision, `Z` suffix."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _utcnow() -> datetime:
    return datetime.now(UTC)


class SfSimError(Exception):
    """An answer in Salesforce's error shape: a JSON array of {message, errorCode, fields}."""

    def __init__(
        self, status: int, error_code: str, message: str, fields: Sequence[str] = ()
    ) -> None:
        super().__init__(f"{status} {error_code}: {message}")
        self.status = status
        self.error_code = error_code
        self.message = message
        self.fields = list(fields)

    def body(self) -> list[dict[str, Any]]:
        return [{"message": self.message, "errorCode": self.error_code, "fields": self.fields}]


def _not_found() -> SfSimError:
    return SfSimError(404, "NOT_FOUND", "The requested resource does not exist")


# --------------------------------------------------------------------------- org data


@dataclass
class SimUser:
    name: str
    email: str
    is_active: bool = True


@dataclass
class SimQueue:
    name: str
    member_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RuleCriterion:
    field: str
    operator: Operator
    value: str

    def matches(self, record: dict[str, Any]) -> bool:
        actual = _criterion_text(record.get(self.field))
        # Like Salesforce rule criteria: case-insensitive, a comma-separated value means "any of".
        wanted = [part.strip().casefold() for part in self.value.split(",")]
        if self.operator == "equals":
            return actual in wanted
        if self.operator == "notEquals":
            return actual not in wanted
        if self.operator == "contains":
            return any(part in actual for part in wanted)
        return any(actual.startswith(part) for part in wanted)


def _criterion_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).casefold()


@dataclass(frozen=True)
class RuleEntry:
    criteria: tuple[RuleCriterion, ...]
    owner_id: str

    def matches(self, record: dict[str, Any]) -> bool:
        return all(criterion.matches(record) for criterion in self.criteria)


@dataclass
class SimFaults:
    latency_ms: int = 0
    request_limit_exceeded: int = 0  # the next N API calls answer 403 REQUEST_LIMIT_EXCEEDED
    server_errors: int = 0  # the next N API calls answer server_error_status
    server_error_status: int = 503
    invalid_session: int = 0  # the next N API calls answer 401 even with a valid token

    def take_session_fault(self) -> SfSimError | None:
        if self.invalid_session <= 0:
            return None
        self.invalid_session -= 1
        return _invalid_session()

    def take_api_fault(self) -> SfSimError | None:
        if self.request_limit_exceeded > 0:
            self.request_limit_exceeded -= 1
            return SfSimError(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
        if self.server_errors > 0:
            self.server_errors -= 1
            if self.server_error_status == 503:
                return SfSimError(503, "SERVER_UNAVAILABLE", "Server unavailable")
            return SfSimError(
                self.server_error_status, "UNKNOWN_EXCEPTION", "An unexpected error occurred."
            )
        return None


def _invalid_session() -> SfSimError:
    return SfSimError(401, "INVALID_SESSION_ID", "Session expired or invalid")


@dataclass(frozen=True)
class CallRecord:
    method: str
    path: str
    status: int
    auto_assign: str | None  # the Sforce-Auto-Assign header as sent, None when absent


@dataclass
class SfSimState:
    org_id: str = "00D5g0000T7kun6EQA"
    api_user_id: str = "0055g00000ePONxAAO"
    client_id: str = "ownersync-sim"
    client_secret: str = "ownersync-sim-secret"
    instance_url: str | None = None  # None: the URL the simulator is served at
    users: dict[str, SimUser] = field(default_factory=dict)
    queues: dict[str, SimQueue] = field(default_factory=dict)
    leads: dict[str, dict[str, Any]] = field(default_factory=dict)
    contacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    rule_entries: list[RuleEntry] = field(default_factory=list)
    default_owner_id: str | None = None  # when no rule entry matches; None: the API user
    faults: SimFaults = field(default_factory=SimFaults)
    calls: list[CallRecord] = field(default_factory=list)
    clock: Callable[[], datetime] = _utcnow
    rng: random.Random = field(default_factory=random.Random)
    outbound: OutboundMessenger = field(init=False, repr=False)
    _tokens: set[str] = field(default_factory=set, init=False, repr=False)
    _last_modstamp: datetime | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.org_id = to18(self.org_id)
        self.api_user_id = to18(self.api_user_id)
        self._add_api_user()
        self.outbound = OutboundMessenger(self)

    def _add_api_user(self) -> None:
        self.users.setdefault(
            self.api_user_id, SimUser("Integration User", "integration@ownersync.invalid")
        )

    # ---- setup helpers

    def new_id(self, key_prefix: str) -> str:
        taken = self.leads.keys() | self.contacts.keys() | self.users.keys() | self.queues.keys()
        while True:
            body = "".join(self.rng.choice(_ID_CHARS) for _ in range(15 - len(key_prefix)))
            candidate = to18(key_prefix + body)
            if candidate not in taken:
                return candidate

    def add_user(
        self,
        name: str,
        email: str | None = None,
        *,
        active: bool = True,
        user_id: str | None = None,
    ) -> str:
        user_id = to18(user_id) if user_id else self.new_id(KEY_PREFIX_USER)
        address = email or f"{name.split()[0].lower()}@example.com"
        self.users[user_id] = SimUser(name, address, active)
        return user_id

    def add_queue(
        self, name: str, member_ids: Iterable[str] = (), *, queue_id: str | None = None
    ) -> str:
        queue_id = to18(queue_id) if queue_id else self.new_id(KEY_PREFIX_QUEUE)
        self.queues[queue_id] = SimQueue(name, [to18(member) for member in member_ids])
        return queue_id

    def add_rule_entry(
        self, owner_id: str, criteria: Iterable[tuple[str, Operator, str]] = ()
    ) -> None:
        """Append an entry to the active lead assignment rule (entries are tried in order)."""
        owner_id = self._checked_owner("Lead", owner_id)
        self.rule_entries.append(
            RuleEntry(tuple(RuleCriterion(f, op, value) for f, op, value in criteria), owner_id)
        )

    def expire_tokens(self) -> None:
        self._tokens.clear()

    def reset(self) -> None:
        """Back to an empty org: same org id, API user, credentials and outbound endpoints."""
        for table in (self.users, self.queues, self.leads, self.contacts):
            table.clear()
        self._add_api_user()
        self.rule_entries.clear()
        self.default_owner_id = None
        self.faults = SimFaults()
        self.calls.clear()
        self.outbound.reset()

    def dump(self) -> dict[str, Any]:
        return {
            "org_id": self.org_id,
            "api_user_id": self.api_user_id,
            "users": {user_id: asdict(user) for user_id, user in self.users.items()},
            "queues": {queue_id: asdict(queue) for queue_id, queue in self.queues.items()},
            "assignment_rule": {
                "entries": [asdict(entry) for entry in self.rule_entries],
                "default_owner_id": self.default_owner_id or self.api_user_id,
            },
            "leads": self.leads,
            "contacts": self.contacts,
            "outbound_pending": self.outbound.pending_count(),
        }

    # ---- OAuth

    def issue_token(self, client_id: str, client_secret: str) -> str:
        id_ok = secrets.compare_digest(client_id.encode(), self.client_id.encode())
        secret_ok = secrets.compare_digest(client_secret.encode(), self.client_secret.encode())
        if not (id_ok and secret_ok):
            raise ValueError("invalid client credentials")
        token = f"{self.org_id[:15]}!{secrets.token_urlsafe(48)}"
        self._tokens.add(token)
        return token

    def authorize(self, authorization: str | None) -> None:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or token not in self._tokens:
            raise _invalid_session()

    # ---- records

    def table(self, sobject: SObjectType) -> dict[str, dict[str, Any]]:
        return self.leads if sobject == "Lead" else self.contacts

    def get_record(self, sobject: SObjectType, record_id: str) -> dict[str, Any]:
        try:
            record_id = to18(record_id)
        except InvalidSalesforceId:
            raise SfSimError(
                400, "MALFORMED_ID", f"{sobject} ID: id value of incorrect type: {record_id}"
            ) from None
        record = self.table(sobject).get(record_id)
        if record is None:
            raise _not_found()
        return record

    def create_record(
        self, sobject: SObjectType, fields: dict[str, Any], *, auto_assign: bool = True
    ) -> dict[str, Any]:
        _check_writable(sobject, fields)
        record: dict[str, Any] = {"Email": None, **fields}
        _check_required(sobject, record)
        record["OwnerId"] = self._owner_for(sobject, record, auto_assign, self.api_user_id)
        now = self._next_modstamp()
        record.update(Id=self.new_id(KEY_PREFIXES[sobject]), CreatedDate=now, SystemModstamp=now)
        self.table(sobject)[record["Id"]] = record
        self.outbound.record_created(sobject, record)
        return record

    def update_record(
        self,
        sobject: SObjectType,
        record_id: str,
        fields: dict[str, Any],
        *,
        auto_assign: bool = True,
    ) -> dict[str, Any]:
        before = self.get_record(sobject, record_id)
        _check_writable(sobject, fields)
        after = {**before, **fields}
        _check_required(sobject, after)
        after["OwnerId"] = self._owner_for(sobject, after, auto_assign, before["OwnerId"])
        after["SystemModstamp"] = self._next_modstamp()
        self.table(sobject)[after["Id"]] = after
        if after["OwnerId"] != before["OwnerId"]:
            self.outbound.record_reassigned(sobject, after)
        return after

    def _owner_for(
        self, sobject: SObjectType, record: dict[str, Any], auto_assign: bool, fallback: str
    ) -> str:
        # Contacts have no assignment rule; for leads the rule overrides any OwnerId sent.
        if sobject == "Lead" and auto_assign:
            return self.assign_by_rule(record)
        return self._checked_owner(sobject, record.get("OwnerId") or fallback)

    def assign_by_rule(self, record: dict[str, Any]) -> str:
        for entry in self.rule_entries:
            if entry.matches(record):
                return entry.owner_id
        return self.default_owner_id or self.api_user_id

    def _checked_owner(self, sobject: SObjectType, candidate: Any) -> str:
        try:
            owner_id = to18(candidate)
        except InvalidSalesforceId:
            raise SfSimError(
                400,
                "MALFORMED_ID",
                f"Owner ID: id value of incorrect type: {candidate}",
                ["OwnerId"],
            ) from None
        user = self.users.get(owner_id)
        # Queues hold leads only; a contact owned by a queue is refused like an unknown id.
        owned_by_queue = sobject == "Lead" and owner_id in self.queues
        if not owned_by_queue and (user is None or not user.is_active):
            raise SfSimError(
                400, "INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", ["OwnerId"]
            )
        return owner_id

    def _next_modstamp(self) -> str:
        now = self.clock().astimezone(UTC)
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        # SystemModstamp must strictly increase even when two writes share a millisecond.
        if self._last_modstamp is not None and now <= self._last_modstamp:
            now = self._last_modstamp + timedelta(milliseconds=1)
        self._last_modstamp = now
        return format_sf_datetime(now)


def _check_writable(sobject: SObjectType, fields: dict[str, Any]) -> None:
    for name, value in fields.items():
        if not _FIELD_NAME.match(name):
            raise SfSimError(
                400,
                "INVALID_FIELD",
                f"No such column '{name}' on sobject of type {sobject}",
                [name],
            )
        if isinstance(value, dict | list):
            raise SfSimError(
                400, "JSON_PARSER_ERROR", f"Cannot deserialize a structured value into {name}"
            )
    read_only = sorted(READ_ONLY_FIELDS & fields.keys())
    if read_only:
        raise SfSimError(
            400,
            "INVALID_FIELD_FOR_INSERT_UPDATE",
            f"Unable to create/update fields: {', '.join(read_only)}. Please check the security "
            "settings of this field and verify that it is read/write for your profile.",
            read_only,
        )


def _check_required(sobject: SObjectType, record: dict[str, Any]) -> None:
    missing = [name for name in REQUIRED_FIELDS[sobject] if record.get(name) in (None, "")]
    if missing:
        raise SfSimError(
            400,
            "REQUIRED_FIELD_MISSING",
            f"Required fields are missing: [{', '.join(missing)}]",
            missing,
        )


# --------------------------------------------------------------------------- outbound messages


@dataclass(frozen=True)
class OutboundNotification:
    notification_id: str
    sobject: SObjectType
    fields: tuple[tuple[str, str | None], ...]  # a snapshot taken when the record was written
    sequence: int


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


def build_outbound_message(
    *,
    organization_id: str,
    action_id: str,
    enterprise_url: str,
    partner_url: str,
    notifications: Sequence[OutboundNotification],
) -> bytes:
    """The SOAP 1.1 envelope Salesforce posts, with the fixtures' prefixes and declarations."""
    # Tags carry literal prefixes (not Clark names) so the namespace declarations sit exactly
    # where Salesforce puts them; ElementTree still does the escaping.
    envelope = ET.Element(
        "soapenv:Envelope", {"xmlns:soapenv": SOAP_ENV_NS, "xmlns:xsd": XSD_NS, "xmlns:xsi": XSI_NS}
    )
    root = ET.SubElement(ET.SubElement(envelope, "soapenv:Body"), "notifications")
    root.set("xmlns", OUTBOUND_NS)
    _text_element(root, "OrganizationId", organization_id)
    _text_element(root, "ActionId", action_id)
    _text_element(root, "SessionId", None)
    _text_element(root, "EnterpriseUrl", enterprise_url)
    _text_element(root, "PartnerUrl", partner_url)
    for notification in notifications:
        element = ET.SubElement(root, "Notification")
        _text_element(element, "Id", notification.notification_id)
        sobject = ET.SubElement(
            element, "sObject", {"xsi:type": f"sf:{notification.sobject}", "xmlns:sf": SOBJECT_NS}
        )
        for name, value in notification.fields:
            _text_element(sobject, f"sf:{name}", value)
    ET.indent(envelope, space=" ")
    declaration = b'<?xml version="1.0" encoding="UTF-8"?>\n'
    document: bytes = ET.tostring(envelope, encoding="utf-8", xml_declaration=False)
    return declaration + document


def _text_element(parent: ET.Element, tag: str, value: str | None) -> None:
    if value is None:
        ET.SubElement(parent, tag, {"xsi:nil": "true"})
    else:
        ET.SubElement(parent, tag).text = value


def is_ack(body: bytes) -> bool:
    try:
        root = SafeET.fromstring(body)
    except Exception:  # any unparsable answer is simply not an ack
        return False
    return any(
        element.tag.rpartition("}")[2] == "Ack" and (element.text or "").strip() == "true"
        for element in root.iter()
    )


class OutboundMessenger:
    """Two outbound-message actions (record created, owner changed) and their delivery queue.

    Like Salesforce: notifications are batched per action (at most 100 per message), a message
    counts as delivered only on HTTP 200 with <Ack>true</Ack>, and is retried with growing
    intervals otherwise. When healthy, messages leave in the order the records were written;
    `reorder` and `duplicate` switch on Salesforce's other habits.
    """

    def __init__(self, state: SfSimState) -> None:
        self._state = state
        self.created_url: str | None = None
        self.reassigned_url: str | None = None
        self.created_action_id = state.new_id(KEY_PREFIX_OUTBOUND_ACTION)
        self.reassigned_action_id = state.new_id(KEY_PREFIX_OUTBOUND_ACTION)
        self.batch_window_ms = 50
        self.initial_retry_interval = 1.0
        self.max_retry_interval = 120.0
        self.retry_window = 24 * 3600.0  # Salesforce gives up on a message after 24 hours
        self.request_timeout = 10.0
        self.duplicate = False
        self.reorder = False
        self.deliveries: list[DeliveryAttempt] = []
        self.dropped_notification_ids: list[str] = []
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
        self.dropped_notification_ids.clear()
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
        notification_id = self._state.new_id(KEY_PREFIX_NOTIFICATION)
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
                self._state.rng.shuffle(notifications)
            for start in range(0, len(notifications), MAX_NOTIFICATIONS_PER_MESSAGE):
                chunk = notifications[start : start + MAX_NOTIFICATIONS_PER_MESSAGE]
                messages.append(self._new_message(action, url, chunk))
        if self.reorder:
            self._state.rng.shuffle(messages)
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
        state = self._state
        instance = (state.instance_url or "https://ownersync-sim.my.salesforce.com").rstrip("/")
        org15 = state.org_id[:15]
        body = build_outbound_message(
            organization_id=state.org_id,
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
        self.dropped_notification_ids.extend(message.notification_ids)
        self._done(message)

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


# --------------------------------------------------------------------------- HTTP app


def _sim(request: Request) -> SfSimState:
    state: SfSimState = request.app.state.sim
    return state


def _api_session(request: Request) -> SfSimState:
    """Every data API call: a valid session first, then the injected faults."""
    state = _sim(request)
    fault = state.faults.take_session_fault()
    if fault is None:
        state.authorize(request.headers.get("Authorization"))
        fault = state.faults.take_api_fault()
    if fault is not None:
        raise fault
    return state


Sim = Annotated[SfSimState, Depends(_sim)]
ApiSim = Annotated[SfSimState, Depends(_api_session)]


def _sobject(name: str, version: str) -> SObjectType:
    sobject = _SOBJECTS.get(name.lower())
    if sobject is None or not _API_VERSION.match(version):
        raise _not_found()
    return sobject


def _auto_assign(request: Request) -> bool:
    # Missing means TRUE, as in Salesforce: only an explicit FALSE turns the rule off.
    return (request.headers.get("Sforce-Auto-Assign") or "TRUE").strip().upper() != "FALSE"


async def _json_fields(request: Request) -> dict[str, Any]:
    try:
        payload = json.loads(await request.body())
    except ValueError:
        raise SfSimError(400, "JSON_PARSER_ERROR", "The request body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise SfSimError(400, "JSON_PARSER_ERROR", "Expected a JSON object of field values")
    return payload


def _oauth_router() -> APIRouter:
    router = APIRouter()

    @router.post("/services/oauth2/token")
    async def token(request: Request, sim: Sim) -> JSONResponse:
        # Parsed by hand: form parsing in Starlette needs python-multipart, even for urlencoded.
        form = dict(parse_qsl((await request.body()).decode("utf-8", "replace")))
        if form.get("grant_type") != "client_credentials":
            return _oauth_error("unsupported_grant_type", "grant type not supported")
        try:
            access_token = sim.issue_token(form.get("client_id", ""), form.get("client_secret", ""))
        except ValueError:
            return _oauth_error("invalid_client", "invalid client credentials")
        instance_url = sim.instance_url or str(request.base_url).rstrip("/")
        return JSONResponse(
            {
                "access_token": access_token,
                "instance_url": instance_url,
                "id": f"{instance_url}/id/{sim.org_id}/{sim.api_user_id}",
                "token_type": "Bearer",
                "issued_at": str(int(time.time() * 1000)),
            }
        )

    return router


def _oauth_error(error: str, description: str) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status_code=400)


def _rest_router() -> APIRouter:
    router = APIRouter(prefix="/services/data/{version}/sobjects")

    @router.post("/{name}", status_code=201)
    async def create(version: str, name: str, request: Request, sim: ApiSim) -> JSONResponse:
        sobject = _sobject(name, version)
        fields = await _json_fields(request)
        record = sim.create_record(sobject, fields, auto_assign=_auto_assign(request))
        return JSONResponse({"id": record["Id"], "success": True, "errors": []}, status_code=201)

    @router.patch("/{name}/{record_id}", status_code=204)
    async def update(
        version: str, name: str, record_id: str, request: Request, sim: ApiSim
    ) -> Response:
        sobject = _sobject(name, version)
        fields = await _json_fields(request)
        sim.update_record(sobject, record_id, fields, auto_assign=_auto_assign(request))
        return Response(status_code=204)

    @router.get("/{name}/{record_id}")
    async def read(version: str, name: str, record_id: str, sim: ApiSim) -> JSONResponse:
        sobject = _sobject(name, version)
        record = sim.get_record(sobject, record_id)
        url = f"/services/data/{version}/sobjects/{sobject}/{record['Id']}"
        return JSONResponse({"attributes": {"type": sobject, "url": url}, **record})

    return router


class FaultSettings(BaseModel):
    """Fault switches of the simulator; fields left out keep their current value."""

    latency_ms: int | None = Field(None, ge=0, description="Delay before every API answer.")
    request_limit_exceeded: int | None = Field(
        None, ge=0, description="The next N API calls answer 403 REQUEST_LIMIT_EXCEEDED."
    )
    server_errors: int | None = Field(
        None, ge=0, description="The next N API calls answer `server_error_status`."
    )
    server_error_status: Literal[500, 503] | None = None
    invalid_session: int | None = Field(
        None, ge=0, description="The next N API calls answer 401 INVALID_SESSION_ID."
    )
    outbound_duplicate: bool | None = Field(None, description="Deliver every message twice.")
    outbound_reorder: bool | None = Field(None, description="Deliver out of write order.")
    outbound_batch_window_ms: int | None = Field(None, ge=0)


def _apply_faults(state: SfSimState, settings: FaultSettings) -> dict[str, Any]:
    for name in ("latency_ms", "request_limit_exceeded", "server_errors", "invalid_session"):
        value = getattr(settings, name)
        if value is not None:
            setattr(state.faults, name, value)
    if settings.server_error_status is not None:
        state.faults.server_error_status = settings.server_error_status
    outbound = state.outbound
    if settings.outbound_duplicate is not None:
        outbound.duplicate = settings.outbound_duplicate
    if settings.outbound_reorder is not None:
        outbound.reorder = settings.outbound_reorder
    if settings.outbound_batch_window_ms is not None:
        outbound.batch_window_ms = settings.outbound_batch_window_ms
    return {
        **asdict(state.faults),
        "outbound_duplicate": outbound.duplicate,
        "outbound_reorder": outbound.reorder,
        "outbound_batch_window_ms": outbound.batch_window_ms,
    }


def _control_router() -> APIRouter:
    router = APIRouter(prefix="/_sim", tags=["simulator control"])

    @router.post("/faults")
    async def faults(settings: FaultSettings, sim: Sim) -> dict[str, Any]:
        return _apply_faults(sim, settings)

    @router.get("/state")
    async def state(sim: Sim) -> dict[str, Any]:
        return sim.dump()

    @router.get("/calls")
    async def calls(sim: Sim) -> list[dict[str, Any]]:
        return [asdict(call) for call in sim.calls]

    @router.get("/outbound")
    async def outbound(sim: Sim) -> list[dict[str, Any]]:
        return [asdict(delivery) for delivery in sim.outbound.deliveries]

    @router.post("/reset", status_code=204)
    async def reset(sim: Sim) -> Response:
        sim.reset()
        return Response(status_code=204)

    return router


async def _latency_and_call_log(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    if not request.url.path.startswith("/services/"):
        return await call_next(request)
    state = _sim(request)
    if state.faults.latency_ms:
        await asyncio.sleep(state.faults.latency_ms / 1000)
    response = await call_next(request)
    state.calls.append(
        CallRecord(
            request.method,
            request.url.path,
            response.status_code,
            request.headers.get("Sforce-Auto-Assign"),
        )
    )
    return response


async def _sf_error_response(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SfSimError)
    return JSONResponse(exc.body(), status_code=exc.status)


def create_sf_app(state: SfSimState | None = None) -> FastAPI:
    sim = state or SfSimState()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sim.outbound.start()
        try:
            yield
        finally:
            await sim.outbound.stop()

    app = FastAPI(title="Salesforce simulator", lifespan=lifespan)
    app.state.sim = sim
    app.add_exception_handler(SfSimError, _sf_error_response)
    app.middleware("http")(_latency_and_call_log)
    app.include_router(_oauth_router())
    app.include_router(_rest_router())
    app.include_router(_control_router())
    return app
