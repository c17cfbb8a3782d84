"""The state the owner decisions read, and the decisions and effects they return.

Shared by the syncer (S-rows) and the assigner (A-rows); pure data, no I/O.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

SyncMode = Literal["leads", "contacts"]


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
    last_modstamp: datetime | None = None

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
        return replace(self, **changes)


@dataclass(frozen=True)
class AeProspectUpsert:
    """Make the AE prospect look like this (created when AE has no prospect yet)."""

    assigned_user_id: int | None
    assigned_queue_id: str | None
    email: str | None = None
    salesforce_id: str | None = None

    target = "ae"
    kind = "ae.prospect.upsert"

    def payload(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SfRecordUpsert:
    """Create or update the SF lead/contact; `owner_id` None with auto_assign = the active rule."""

    sobject: Literal["Lead", "Contact"]
    owner_id: str | None
    auto_assign: bool
    email: str | None = None

    target = "sf"
    kind = "sf.record.upsert"

    def payload(self) -> dict[str, Any]:
        return asdict(self)


Effect = AeProspectUpsert | SfRecordUpsert


@dataclass(frozen=True)
class Decision:
    rule: str
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

    def __post_init__(self) -> None:
        if self.weight < 1:
            raise ValueError(f"weight must be at least 1, got {self.weight}")
        if self.daily_cap is not None and self.daily_cap < 0:
            raise ValueError(f"daily_cap must not be negative, got {self.daily_cap}")
