"""The events that travel on the broker: typed, immutable, versioned JSON.

Every event has a `type` (past tense, also the routing key), a `version`, the tenant, a
deterministic `event_id` (the same source notification always gives the same id, which is
what makes redelivery and replays idempotent), the source notification id, and the
occurred/received times. Old versions are upcast on load (see `UPCASTERS`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import date, datetime
from typing import Annotated, Any, Final, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError

from services.common.sfid import SfId, serial

EVENT_NAMESPACE = uuid.UUID("5f0b6a2e-4c1e-4d59-9a4b-7c0f3f0e2a11")

SfRecordEventType = Literal["sf.record.created", "sf.record.reassigned", "sf.record.updated"]
AeProspectEventType = Literal[
    "ae.prospect.created", "ae.prospect.assignment_requested", "ae.prospect.reassigned"
]
AeWebhookType = Literal["prospect.created", "prospect.assignment_requested", "prospect.reassigned"]

SF_RECORD_CREATED: Final = "sf.record.created"
SF_RECORD_REASSIGNED: Final = "sf.record.reassigned"
# Any update SF reports (Status, LastActivityDate): ends follow-up SLAs; an owner change in it is
# handled as a reassignment.
SF_RECORD_UPDATED: Final = "sf.record.updated"
AE_PROSPECT_CREATED: Final = "ae.prospect.created"
AE_ASSIGNMENT_REQUESTED: Final = "ae.prospect.assignment_requested"
AE_PROSPECT_REASSIGNED: Final = "ae.prospect.reassigned"

# An AE webhook travels on as the event of the same name in the `ae.` namespace.
AE_EVENT_TYPE_OF_WEBHOOK: dict[AeWebhookType, AeProspectEventType] = {
    "prospect.created": AE_PROSPECT_CREATED,
    "prospect.assignment_requested": AE_ASSIGNMENT_REQUESTED,
    "prospect.reassigned": AE_PROSPECT_REASSIGNED,
}


# AE ids are positive 64-bit integers (they are stored as BIGINT).
# The largest id Postgres' BIGINT holds: AE ids and our own keys are checked against it.
MAX_ID: Final = 2**63 - 1
AeId = Annotated[int, Field(ge=1, le=MAX_ID)]
# Every string has a bound: a message is a row and a log line, and an unbounded field lets one
# caller make them as large as it likes.
TenantId = Annotated[str, StringConstraints(min_length=1, max_length=64)]
# SF notification ids are 18 characters; AE webhook ids and API request ids are capped at 200.
SourceId = Annotated[str, StringConstraints(min_length=1, max_length=200)]
# RFC 5321: a path (and so an address) is at most 256 octets including the angle brackets.
Email = Annotated[str, StringConstraints(max_length=254)]


# The bits of a uuid5 that a time-ordered event id keeps: all but those the serial, the
# version and the variant take.
_HASH_BITS: Final = (0x3F << 64) | ((1 << 62) - 1)


def event_id_for(tenant: str, source: str, source_id: str) -> uuid.UUID:
    """The event id of a source notification: the same notification always gives the same id.

    A SF notification's id is a UUIDv8 (RFC 9562) that starts with the notification id's
    serial (54 bits, in custom_a and the top of custom_b) and ends with 68 bits of the uuid5
    of the name. SF serials grow with time, so new events sort after old ones, like UUIDv7s:
    the inbox's primary key takes them at its right edge and a duplicate check reads the few
    index pages that are hot, where a uuid5 is a random page of an index that, at 10 million
    entries, is several times larger than Postgres' buffers. Other sources (AE webhook ids, API
    request ids) carry no order that we know of: theirs is the uuid5.

    SF event ids were uuid5s before: SF retrying, after an upgrade, a notification applied
    before it gives a new id, and the syncer refuses it as stale (S7: its SystemModstamp is not
    newer than the one applied): audited, nothing changed, nothing sent."""
    name = uuid.uuid5(EVENT_NAMESPACE, f"{tenant}/{source}/{source_id}")
    number = serial(source_id) if source == "sf" else None
    return name if number is None else with_serial(number, name)


def with_serial(number: int, name: uuid.UUID) -> uuid.UUID:
    """The UUIDv8 of `event_id_for`: the serial `number`, then 68 bits of `name`."""
    return uuid.UUID(
        int=(number >> 6) << 80  # custom_a: the serial's top 48 bits
        | 0x8 << 76  # version 8
        | (number & 0x3F) << 70  # custom_b: the serial's last 6 bits, then 6 bits of hash
        | 0b10 << 62  # the RFC 9562 variant
        | (name.int & _HASH_BITS)
    )


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SfRecord(_Frozen):
    """The sObject of one SF outbound-message notification."""

    object: Literal["Lead", "Contact"]
    record_id: SfId
    owner_id: SfId
    email: Email | None = None
    system_modstamp: datetime
    created_date: datetime | None = None
    action_id: SfId | None = None
    status: Annotated[str, StringConstraints(max_length=255)] | None = None
    last_activity_date: date | None = None


class SfRecordEvent(_Frozen):
    type: SfRecordEventType
    version: Literal[1] = 1
    tenant: TenantId
    event_id: uuid.UUID
    source_id: SourceId = Field(description="the SF notification id")
    occurred_at: datetime
    received_at: datetime
    payload: SfRecord


class AeProspect(_Frozen):
    id: AeId
    email: Email | None = None
    assigned_user_id: AeId | None = Field(None, alias="assignedUserId")
    assigned_queue_id: SfId | None = Field(None, alias="assignedQueueId")
    salesforce_id: SfId | None = Field(None, alias="salesforceId")

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class AssignToUser(_Frozen):
    kind: Literal["assign_to_user"]
    user_id: AeId = Field(alias="userId")
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class AssignToGroup(_Frozen):
    kind: Literal["assign_to_group"]
    group_id: AeId = Field(alias="groupId")
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class AssignToQueue(_Frozen):
    kind: Literal["assign_to_queue"]
    queue_id: SfId = Field(alias="queueId")
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class AssignViaActiveRule(_Frozen):
    kind: Literal["assign_via_active_rule"]


AssignmentAction = Annotated[
    AssignToUser | AssignToGroup | AssignToQueue | AssignViaActiveRule,
    Field(discriminator="kind"),
]


class AeWebhook(_Frozen):
    """The body of `POST /engagement/{tenant}/events`."""

    type: AeWebhookType
    occurred_at: datetime = Field(alias="occurredAt")
    prospect: AeProspect
    action: AssignmentAction | None = None
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class AeProspectEvent(_Frozen):
    type: AeProspectEventType
    version: Literal[1] = 1
    tenant: TenantId
    event_id: uuid.UUID
    source_id: SourceId = Field(description="the webhook-id")
    occurred_at: datetime
    received_at: datetime
    payload: AeWebhook


Event = Annotated[SfRecordEvent | AeProspectEvent, Field(discriminator="type")]
_EVENT = TypeAdapter(Event)
_EVENTS = TypeAdapter(list[Event])

# (type, version) -> function turning that version's dict into the next version's dict.
UPCASTERS: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {}
CURRENT_VERSION = 1


def upcast(data: dict[str, Any]) -> dict[str, Any]:
    version = int(data.get("version", 1))
    while version < CURRENT_VERSION:
        data = UPCASTERS[(data["type"], version)](data)
        version = int(data["version"])
    return data


def dump_event(event: SfRecordEvent | AeProspectEvent) -> bytes:
    return event.model_dump_json(by_alias=True).encode()


def load_event(body: bytes) -> SfRecordEvent | AeProspectEvent:
    return _EVENT.validate_python(upcast(orjson.loads(body)))


# One broker message carries the events of one inbound call (the up to 100 notifications of
# an SF outbound message): a JSON array, or a single event object when there is one.
def dump_events(events: Sequence[SfRecordEvent | AeProspectEvent]) -> bytes:
    if len(events) == 1:
        return dump_event(events[0])
    return b"[" + b",".join(dump_event(e) for e in events) + b"]"


def load_events(body: bytes) -> list[SfRecordEvent | AeProspectEvent]:
    # Events of the current version (all of them, unless a version was just added) are
    # validated straight from the bytes, with no Python objects in between; anything else
    # (an older version to upcast, or a body that is not valid) takes the general path,
    # which also gives the errors.
    try:
        if body.lstrip()[:1] == b"[":
            events = _EVENTS.validate_json(body)
            if events:
                return events
        else:
            return [_EVENT.validate_json(body)]
    except ValidationError:
        pass
    data = orjson.loads(body)
    items = data if isinstance(data, list) else [data]
    if not items:
        raise ValueError("a message with no events")
    if not all(isinstance(item, dict) for item in items):
        raise ValueError("an event that is not a JSON object")
    return [_EVENT.validate_python(upcast(item)) for item in items]


def split_message(body: bytes) -> list[tuple[str | None, bytes]]:
    """The single-event bodies of a message (with their event ids), for dead-lettering one
    event at a time; an undecodable body stays whole."""
    try:
        data = orjson.loads(body)
    except ValueError:
        return [(None, body)]
    if not isinstance(data, list):
        return [(data.get("event_id") if isinstance(data, dict) else None, body)]
    return [
        (item.get("event_id") if isinstance(item, dict) else None, orjson.dumps(item))
        for item in data
    ]
