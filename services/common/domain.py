"""The state the owner decisions read, and the decisions and effects they return.

Shared by the syncer (S-rows) and the assigner (A-rows); pure data, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar, Literal

from pydantic import TypeAdapter, ValidationError

from services.common.hours import WorkingHours

SyncMode = Literal["leads", "contacts"]
Target = Literal["ae", "sf"]


class Rule(StrEnum):
    """The row of the decision table a decision applied, as audit rows, metrics and logs name it."""

    A0 = "A0"  # the prospect is recorded and nothing needs syncing (see assigner/decide.py)
    A1 = "A1"
    A2 = "A2"
    A3 = "A3"
    A4 = "A4"
    A5 = "A5"
    A6 = "A6"
    A7 = "A7"
    A8 = "A8"
    A9 = "A9"  # follow-up SLA expired on a record nobody worked: moved to the next member
    DUP = "DUP"  # a webhook id already processed: no effect, no audit row
    STALE = "STALE"  # an AE event older than the newest one applied to its record: ignored
    S1 = "S1"
    S2 = "S2"
    S3 = "S3"
    S4 = "S4"
    S5 = "S5"
    S6 = "S6"
    S7 = "S7"
    S8 = "S8"
    S9 = "S9"
    # Not a decision: what the answer to a sent effect taught ownersync about the record
    # (the new prospect id, SF record id or SF owner), or an operator's discard of an effect.
    # Audit rows only.
    RELAY = "RELAY"
    # Not a decision either: two records that turned out to be one (an event named ids of
    # both) were merged into the older one. Audit rows only.
    MERGE = "MERGE"
    # Not a decision: a follow-up SLA clock started, met or stopped (its expiry is A9).
    # Audit rows only.
    SLA = "SLA"


@dataclass(frozen=True)
class TenantPolicy:
    tenant_id: str
    connector_user_id: str
    sync_mode: SyncMode = "leads"
    auto_create_prospects: bool = True
    connector_verified: bool = True


@dataclass(frozen=True)
class RecordState:
    """One prospect/record pair as ownersync knows it (`id` is None until stored)."""

    id: int | None = None
    prospect_id: int | None = None
    sf_record_id: str | None = None
    sf_object: str | None = None
    email: str | None = None
    ae_assigned_user_id: int | None = None
    ae_assigned_queue_id: str | None = None
    sf_owner_id: str | None = None
    last_modstamp: datetime | None = None  # SystemModstamp of the newest SF event applied
    ae_modstamp: datetime | None = None  # occurredAt of the newest AE event applied

    @property
    def ae_assigned(self) -> bool:
        return self.ae_assigned_user_id is not None or self.ae_assigned_queue_id is not None

    def owners(self) -> dict[str, Any]:
        """What the audit shows as before/after."""
        return {
            "prospect_id": self.prospect_id,
            "sf_record_id": self.sf_record_id,
            "ae_assigned_user_id": self.ae_assigned_user_id,
            "ae_assigned_queue_id": self.ae_assigned_queue_id,
            "sf_owner_id": self.sf_owner_id,
            "last_modstamp": self.last_modstamp.isoformat() if self.last_modstamp else None,
        }

    def evolve(self, **changes: Any) -> RecordState:
        """A copy with `changes`: the hot path's `dataclasses.replace` (which calls __init__
        through the fields each time) at a quarter of its cost, 2 per decision."""
        if not changes.keys() <= _RECORD_STATE_FIELDS:
            unknown = sorted(changes.keys() - _RECORD_STATE_FIELDS)
            raise TypeError(f"RecordState has no field {unknown}")
        evolved = object.__new__(type(self))
        evolved.__dict__.update(self.__dict__, **changes)
        return evolved


_RECORD_STATE_FIELDS = frozenset(f.name for f in fields(RecordState))


def describe_ae_owner(
    user_id: int | None, queue_id: str | None, *, unassigned: str = "nobody"
) -> str:
    """AE's owner as reasons and timelines name it; `unassigned` fits the sentence it ends."""
    if user_id is not None:
        return f"AE user {user_id}"
    if queue_id is not None:
        return f"the queue {queue_id}"
    return unassigned


# Effects: what a decision asks AE or SF to do. The outbox stores each as its `kind` and a
# payload of its fields plus the `version` of their shape; `effect_from_outbox` rebuilds it.


@dataclass(frozen=True)
class AeProspectUpsert:
    """Make the AE prospect look like this (created when AE has no prospect yet)."""

    assigned_user_id: int | None
    assigned_queue_id: str | None
    email: str | None = None
    salesforce_id: str | None = None

    target: ClassVar[Target] = "ae"
    kind: ClassVar[str] = "ae.prospect.upsert"
    version: ClassVar[int] = 1

    @classmethod
    def of(cls, state: RecordState) -> AeProspectUpsert:
        """AE's side of the record as ownersync holds it."""
        return cls(
            assigned_user_id=state.ae_assigned_user_id,
            assigned_queue_id=state.ae_assigned_queue_id,
            email=state.email,
            salesforce_id=state.sf_record_id,
        )


@dataclass(frozen=True)
class SfRecordUpsert:
    """Create or update the SF lead/contact; `owner_id` None with auto_assign = the active rule."""

    sobject: Literal["Lead", "Contact"]
    owner_id: str | None
    auto_assign: bool
    email: str | None = None

    target: ClassVar[Target] = "sf"
    kind: ClassVar[str] = "sf.record.upsert"
    version: ClassVar[int] = 1


@dataclass(frozen=True)
class SfOwnerReassign:
    """Move an existing SF record to another owner (PATCH OwnerId, `Sforce-Auto-Assign: FALSE`):
    what an expired follow-up SLA does (A9)."""

    sobject: Literal["Lead", "Contact"]
    owner_id: str

    target: ClassVar[Target] = "sf"
    kind: ClassVar[str] = "sf.record.owner"
    version: ClassVar[int] = 1


Effect = AeProspectUpsert | SfRecordUpsert | SfOwnerReassign

_EFFECT_TYPES: Mapping[str, type[Effect]] = {
    cls.kind: cls for cls in (AeProspectUpsert, SfRecordUpsert, SfOwnerReassign)
}
_EFFECT_SHAPES: Mapping[str, TypeAdapter[Effect]] = {
    kind: TypeAdapter[Effect](cls) for kind, cls in _EFFECT_TYPES.items()
}

# Turns a payload of (kind, version) into the payload of version + 1. Register one here when an
# effect's fields change, so that rows the relay has not sent yet still load after a deploy.
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
EFFECT_UPCASTERS: Mapping[tuple[str, int], Upcaster] = {}

# Payloads written before effects carried a version have exactly the shape of version 1.
UNVERSIONED = 1


class EffectPayloadError(ValueError):
    """An outbox row that no effect type of this code can be rebuilt from."""


def effect_payload(effect: Effect) -> dict[str, Any]:
    """The outbox payload of an effect: its fields (JSON types) and the version of their shape."""
    fields: dict[str, Any] = _EFFECT_SHAPES[effect.kind].dump_python(effect, mode="json")
    return {**fields, "version": effect.version}


def effect_from_outbox(
    kind: str,
    payload: Mapping[str, Any],
    *,
    upcasters: Mapping[tuple[str, int], Upcaster] = EFFECT_UPCASTERS,
) -> Effect:
    """The typed effect of an outbox row, its payload first upcast to the current version."""
    effect_type = _EFFECT_TYPES.get(kind)
    if effect_type is None:
        raise EffectPayloadError(f"unknown effect kind {kind!r}")
    fields = dict(payload)
    version = fields.pop("version", UNVERSIONED)
    if not isinstance(version, int) or version > effect_type.version:
        raise EffectPayloadError(f"{kind} payload version {version!r} is not known to this code")
    while version < effect_type.version:
        upcast = upcasters.get((kind, version))
        if upcast is None:
            raise EffectPayloadError(f"no upcaster for {kind} payload version {version}")
        fields, version = upcast(fields), version + 1
    try:
        return _EFFECT_SHAPES[kind].validate_python(fields)
    except ValidationError as exc:
        raise EffectPayloadError(f"{kind} payload does not fit version {version}: {exc}") from exc


@dataclass(frozen=True)
class Learned:
    """What the answer to a sent effect taught ownersync about the record (None: nothing)."""

    prospect_id: int | None = None
    sf_record_id: str | None = None
    sf_object: str | None = None
    sf_owner_id: str | None = None

    def columns(self) -> dict[str, Any]:
        """The record columns to set, named as `RecordState` and the `records` table name them."""
        learned = ((f.name, getattr(self, f.name)) for f in fields(self))
        return {name: value for name, value in learned if value is not None}


@dataclass(frozen=True)
class Decision:
    rule: Rule
    reason: str
    before: RecordState | None
    after: RecordState | None
    effects: tuple[Effect, ...] = field(default=())
    audited: bool = True  # S8 (a duplicate) leaves no trace at all
    refused: bool = False  # the action was refused (A6/A7 preconditions, A8)


@dataclass(frozen=True)
class Member:
    ae_user_id: int
    created_order: int  # the earlier created user is smaller: it wins ties
    weight: int = 1
    daily_cap: int | None = None
    paused: bool = False
    active: bool = True
    last_assigned_at: datetime | None = None
    assigned_today: int = 0
    assigned_total: int = 0
    hours: WorkingHours | None = None  # None: always on

    def __post_init__(self) -> None:
        if self.weight < 1:
            raise ValueError(f"weight must be at least 1, got {self.weight}")
        if self.daily_cap is not None and self.daily_cap < 0:
            raise ValueError(f"daily_cap must not be negative, got {self.daily_cap}")
