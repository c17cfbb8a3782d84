"""The typed shapes of the admin operations: what the API accepts and answers, and the CLI shows.

JSON names are camelCase; every model refuses unknown fields. Inputs accept the camelCase names
only; views may be built in Python with the snake_case names.
"""

from __future__ import annotations

import ipaddress
from datetime import date, datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    model_validator,
)
from pydantic.alias_generators import to_camel

from services.common.hours import WorkingHours
from services.common.messages import AeProspect, AssignmentAction
from services.common.sfid import to18
from services.common.sla import DEFAULT_MAX_ESCALATIONS, DEFAULT_UNTOUCHED_STATUSES

# --- field types -------------------------------------------------------------------------

_NO_CONTROL = r"^[^\x00-\x1f\x7f]+$"
TenantKey = Annotated[
    str,
    StringConstraints(max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$"),
    Field(description="tenant id: lower-case letters, digits, `-` and `_`, 64 at most"),
]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=_NO_CONTROL)]
Email = Annotated[
    str,
    StringConstraints(max_length=254, pattern=r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+$"),
    Field(description="compared case-insensitively"),
]
BigId = Annotated[int, Field(ge=1, le=9_223_372_036_854_775_807)]
Secret = Annotated[str, StringConstraints(min_length=16, max_length=200, pattern=r"^[!-~]+$")]
EndpointKey = Annotated[
    str, StringConstraints(min_length=32, max_length=200, pattern=r"^[A-Za-z0-9_~.-]+$")
]  # URL-safe: it travels as a query parameter
SyncMode = Literal["leads", "contacts"]
Scope = Literal["read", "write", "admin"]


def _prefixed(prefix: str, what: str) -> AfterValidator:
    def check(value: str) -> str:
        if not value.startswith(prefix):
            raise ValueError(f"{what} starts with {prefix}")
        return value

    return AfterValidator(check)


def _sf_id(prefix: str, what: str) -> tuple[object, ...]:
    # The pattern checks the raw input (and shows in the OpenAPI schema); then the id is made
    # canonical (18 characters, checksum checked) and its key prefix checked. The caller unpacks
    # these into `Annotated[str, ...]`, which a type checker reads as a plain `str` alias.
    first = "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in prefix)
    return (
        StringConstraints(
            max_length=18,
            pattern=rf"^{first}[A-Za-z0-9]{{{15 - len(prefix)}}}(?:[A-Za-z0-5]{{3}})?$",
        ),
        AfterValidator(to18),
        _prefixed(prefix, what),
        Field(description=f"{what}, 15 or 18 characters (stored as 18)"),
    )


SfUserId = Annotated[str, *_sf_id("005", "SF user id")]
SfQueueId = Annotated[str, *_sf_id("00G", "SF queue id")]
SfOrgId = Annotated[str, *_sf_id("00D", "SF org id")]
SfRecordId = Annotated[str, *_sf_id("", "SF lead or contact id")]


def _user_or_queue(value: str) -> str:
    if not value.startswith(("005", "00G")):
        raise ValueError("a SF user (005…) or queue (00G…) id")
    return value


SfOwnerId = Annotated[
    str,
    StringConstraints(max_length=18, pattern=r"^[A-Za-z0-9]{15}(?:[A-Za-z0-5]{3})?$"),
    AfterValidator(to18),
    AfterValidator(_user_or_queue),
    Field(description="SF user (005…) or queue (00G…) id, 15 or 18 characters"),
]
SfStatus = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=_NO_CONTROL)]
# At most 30 days: a follow-up SLA is hours, rarely days.
SlaSeconds = Annotated[int, Field(ge=1, le=30 * 86_400)]
TimeZoneName = Annotated[str, StringConstraints(min_length=1, max_length=64)]
HoursText = Annotated[str, StringConstraints(min_length=1, max_length=100)]


class ApiModel(BaseModel):
    """A view: answered by the API, shown by the CLI."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )


class ApiInput(BaseModel):
    """A request body: camelCase names only, nothing unknown."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        validate_by_name=False,
        validate_by_alias=True,
        serialize_by_alias=True,
    )


class ErrorBody(ApiModel):
    code: str = Field(description="stable, machine-readable: not_found, mapping_conflict, …")
    message: str
    details: Any = Field(None, description="the facts behind the error, when there are any")


class ErrorResponse(ApiModel):
    """Every error the API answers has this shape."""

    error: ErrorBody


# --- tenants and keys --------------------------------------------------------------------


class TenantView(ApiModel):
    id: str
    salesforce_org_id: str
    connector_user_id: str = Field(description="the SF user that owns records by default")
    sync_mode: SyncMode
    auto_create_prospects: bool
    connector_verified: bool
    previous_secret_expires_at: datetime | None = Field(
        None, description="until then the previous webhook secret is still accepted"
    )
    salesforce_endpoint_key_set: bool = Field(
        False, description="whether SF outbound messages can authenticate (`?key=` in the URL)"
    )
    untouched_statuses: list[str] = Field(
        list(DEFAULT_UNTOUCHED_STATUSES),
        description="SF lead Statuses of a record nobody worked (follow-up SLAs)",
    )
    previous_endpoint_key_expires_at: datetime | None = Field(
        None, description="until then the previous SF endpoint key is still accepted"
    )
    created_at: datetime


class TenantCreate(ApiInput):
    id: TenantKey
    salesforce_org_id: SfOrgId
    connector_user_id: SfUserId
    connector_user_name: Name = "Connector user"
    sync_mode: SyncMode = "leads"
    auto_create_prospects: bool = True
    connector_verified: bool = False
    webhook_secret: Secret | None = Field(None, description="generated when omitted")
    salesforce_endpoint_key: EndpointKey | None = Field(None, description="generated when omitted")


class TenantCreated(ApiModel):
    tenant: TenantView
    webhook_secret: str = Field(description="shown this once: AE signs its webhooks with it")
    salesforce_endpoint_key: str = Field(
        description="shown this once: the `key` query parameter of the SF outbound-message URLs"
    )


class TenantPatch(ApiInput):
    """Connector settings; an omitted or null field is left as it is."""

    salesforce_org_id: SfOrgId | None = None
    connector_user_id: SfUserId | None = Field(None, description="must be an active SF user")
    sync_mode: SyncMode | None = None
    auto_create_prospects: bool | None = None
    connector_verified: bool | None = None
    untouched_statuses: list[SfStatus] | None = Field(
        None,
        min_length=1,
        max_length=50,
        description="SF Statuses of a record nobody worked; a follow-up SLA is met when the "
        "Status leaves them",
    )


class SecretRotation(ApiInput):
    grace_seconds: int = Field(
        86_400, ge=0, le=7 * 86_400, description="how long the old secret stays valid"
    )
    webhook_secret: Secret | None = Field(None, description="generated when omitted")


class EndpointKeyRotation(ApiInput):
    grace_seconds: int = Field(
        86_400, ge=0, le=7 * 86_400, description="how long the old key stays valid"
    )
    salesforce_endpoint_key: EndpointKey | None = Field(None, description="generated when omitted")


class EndpointKeyRotated(ApiModel):
    salesforce_endpoint_key: str = Field(description="the new key, shown this once")
    previous_endpoint_key_expires_at: datetime | None


class SecretRotated(ApiModel):
    webhook_secret: str = Field(description="the new secret, shown this once")
    previous_secret_expires_at: datetime | None


class ApiKeyCreate(ApiInput):
    name: Name
    scopes: list[Scope] = Field(
        min_length=1, max_length=3, description="`write` includes `read`; `admin` includes both"
    )


class ApiKeyView(ApiModel):
    id: str
    name: str
    scopes: list[Scope]
    created_at: datetime
    revoked_at: datetime | None


class ApiKeyCreated(ApiModel):
    api_key: ApiKeyView
    key: str = Field(description="the secret key, shown this once: send it as `Bearer <key>`")


# --- connections ------------------------------------------------------------------------


def _service_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError("must be an http(s) URL with a host")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("must carry no query, fragment or credentials")
    # Credentials and tokens travel to this URL: in clear text only to this machine.
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ValueError("must be https (http only for localhost)")
    return value.rstrip("/")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


ServiceUrl = Annotated[
    str,
    StringConstraints(min_length=8, max_length=300, pattern=r"^[!-~]+$"),
    AfterValidator(_service_url),
]
ClientId = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=r"^[!-~]+$")]
ClientSecret = Annotated[
    SecretStr,
    Field(
        min_length=8,
        max_length=255,
        description="write-only: stored sealed (OWNERSYNC_SECRETS_KEY), never answered",
    ),
]
BusinessUnitId = Annotated[str, *_sf_id("0Uv", "AE business unit id")]


class SalesforceConnectionSet(ApiInput):
    login_url: ServiceUrl = Field(
        description="`https://login.salesforce.com`, `https://test.salesforce.com` or the org's "
        "My Domain URL: the token comes from `{loginUrl}/services/oauth2/token`"
    )
    client_id: ClientId = Field(description="the connected app's consumer key")
    client_secret: ClientSecret | None = Field(
        None,
        description="the connected app's consumer secret (client-credentials flow, scopes `api "
        "pardot_api`); write-only. Required the first time; omitted later, the stored one stays",
    )


class EngagementConnectionSet(ApiInput):
    base_url: ServiceUrl = Field(
        "https://pi.pardot.com",
        description="AE API host (`https://pi.demo.pardot.com` for demo orgs)",
    )
    business_unit_id: BusinessUnitId


class ConnectionsSet(ApiInput):
    salesforce: SalesforceConnectionSet
    engagement: EngagementConnectionSet


class ClientSecretRotation(ApiInput):
    client_secret: ClientSecret
    client_id: ClientId | None = Field(
        None, description="the new consumer key, when SF's rotation gave one; omitted: kept"
    )


class SalesforceConnectionView(ApiModel):
    login_url: str
    client_id: str
    client_secret_set: bool = Field(description="the secret itself is never answered")
    client_secret_key_id: str | None = Field(
        description="the id of the OWNERSYNC_SECRETS_KEY key that seals it"
    )


class EngagementConnectionView(ApiModel):
    base_url: str
    business_unit_id: str


class ConnectionsView(ApiModel):
    """Null systems and time: no connections stored for this tenant."""

    salesforce: SalesforceConnectionView | None
    engagement: EngagementConnectionView | None
    updated_at: datetime | None


CheckStatus = Literal["ok", "failed", "not_set"]


class SystemCheck(ApiModel):
    status: CheckStatus
    code: str | None = Field(
        None,
        description="why it failed: `invalid_client` (or another OAuth error), `no_token`, "
        "`unauthorized`, `missing_scope`, `not_found`, `unreachable`, `unavailable`, …",
    )
    message: str | None = None
    user: str | None = Field(None, description="the user read: SF user id, or AE user id")


class ConnectionsCheck(ApiModel):
    salesforce: SystemCheck
    engagement: SystemCheck
    checked_at: datetime


class SecretsResealed(ApiModel):
    resealed: int = Field(description="secrets sealed anew under the current key")
    key_id: str = Field(description="the current key id")


# --- users and mappings ------------------------------------------------------------------


class SfUserView(ApiModel):
    id: str
    name: str | None
    email: str | None
    active: bool
    connected_ae_user_id: int | None
    created_at: datetime


class SfUserCreate(ApiInput):
    id: SfUserId
    name: Name | None = None
    email: Email | None = None
    active: bool = True


class SfUserPatch(ApiInput):
    """`name` and `email` may be set to null; an omitted field is left as it is. Deactivating
    a user removes its connected-user mapping."""

    name: Name | None = None
    email: Email | None = None
    active: bool | None = None


class AeUserView(ApiModel):
    id: int
    name: str | None
    email: str | None
    salesforce_user_id: str | None
    active: bool
    connected_sf_user_id: str | None
    created_at: datetime


class AeUserCreate(ApiInput):
    id: BigId
    name: Name | None = None
    email: Email | None = None
    salesforce_user_id: SfUserId | None = Field(None, description="the CRM user AE knows, if any")
    active: bool = True


class AeUserPatch(ApiInput):
    """`name`, `email` and `salesforceUserId` may be set to null; an omitted field is left as
    it is. Deactivating a user removes its connected-user mapping."""

    name: Name | None = None
    email: Email | None = None
    salesforce_user_id: SfUserId | None = None
    active: bool | None = None


class SfUsersLoad(ApiInput):
    users: list[SfUserCreate] = Field(min_length=1, max_length=5000)


class AeUsersLoad(ApiInput):
    users: list[AeUserCreate] = Field(min_length=1, max_length=5000)


class UsersLoaded(ApiModel):
    created: int
    updated: int
    deactivated_mappings_removed: int = 0


class MappingView(ApiModel):
    ae_user_id: int
    sf_user_id: str
    created_at: datetime


class MappingCreate(ApiInput):
    ae_user_id: BigId
    sf_user_id: SfUserId


class UserSyncRequest(ApiInput):
    dry_run: bool = Field(False, description="report what would be mapped, change nothing")


UserSyncOutcome = Literal["matched", "already_mapped", "unmatched", "conflicting"]


class UserSyncEntry(ApiModel):
    ae_user_id: int
    ae_email: str | None
    sf_user_id: str | None = Field(description="the SF user matched, held or contended")
    outcome: UserSyncOutcome
    reason_code: str
    reason: str


class UserSyncReport(ApiModel):
    dry_run: bool
    counts: dict[UserSyncOutcome, int]
    users: list[UserSyncEntry] = Field(description="every AE user of the tenant, by id")


# --- queues and groups -------------------------------------------------------------------


class QueueView(ApiModel):
    id: str
    name: str


class QueueCreate(ApiInput):
    id: SfQueueId
    name: Name


class QueuePatch(ApiInput):
    name: Name


class WorkingHoursFields(BaseModel):
    """A member's working hours: the round robin skips members who are off."""

    time_zone: TimeZoneName | None = Field(None, description="IANA zone, e.g. America/New_York")
    weekly_hours: dict[HoursText, HoursText] | None = Field(
        None,
        max_length=7,
        description='local hours per weekday, e.g. {"mon": "09:00-17:00"}; null: always on',
    )
    away_dates: list[date] = Field([], max_length=366, description="local dates off")


class GroupMemberView(ApiModel):
    ae_user_id: int
    weight: int
    daily_cap: int | None
    paused: bool
    last_assigned_at: datetime | None
    assigned_today: int
    assigned_total: int
    time_zone: str | None = None
    weekly_hours: dict[str, str] | None = None
    away_dates: list[date] = []


class GroupSla(BaseModel):
    """A round-robin group's follow-up SLA: a record nobody works goes to the next member."""

    sla_seconds: SlaSeconds | None = Field(None, description="null: no follow-up SLA")
    sla_business_hours: bool = Field(False, description="count the owner's working hours only")
    assign_when_closed: bool = Field(
        False, description="when nobody is on, assign anyway instead of waiting for the first"
    )
    max_escalations: int = Field(
        DEFAULT_MAX_ESCALATIONS, ge=0, le=20, description="moves before the fallback"
    )
    fallback_owner_id: SfOwnerId | None = Field(
        None, description="SF queue or user a record goes to after max_escalations"
    )


class GroupSlaView(GroupSla, ApiModel):
    pass


class GroupSlaPut(GroupSla, ApiInput):
    pass


class GroupView(ApiModel):
    id: int
    name: str
    members: list[GroupMemberView]
    sla: GroupSlaView = Field(default_factory=GroupSlaView)


class GroupCreate(ApiInput):
    id: BigId
    name: Name
    members: list[BigId] = Field([], max_length=1000, description="AE user ids, weight 1")


class GroupPatch(ApiInput):
    name: Name


class GroupMemberPut(WorkingHoursFields, ApiInput):
    weight: int = Field(1, ge=1, le=1000, description="share of the round robin")
    daily_cap: int | None = Field(None, ge=1, le=1_000_000, description="null: no cap")

    @model_validator(mode="after")
    def _readable_hours(self) -> GroupMemberPut:
        WorkingHours.parse(self.time_zone, self.weekly_hours, self.away_dates)  # HoursError
        return self


# --- records, audit, assignment requests, reconcile --------------------------------------


class SlaTimerView(ApiModel):
    """One follow-up SLA clock of a record: pending until SF confirms the owner, then running
    until it is met, stopped (owner changed by someone else), or runs out (escalated to the next
    member, fallback, expired; waiting: nobody is on to take it yet)."""

    id: int
    state: str
    group_id: int
    ae_user_id: int
    sf_owner_id: str
    escalations: int = Field(description="moves of the record by its SLA before this clock")
    sla_seconds: int
    business_hours: bool
    started_at: datetime | None
    due_at: datetime | None
    ended_at: datetime | None
    reason: str | None


class RecordView(ApiModel):
    id: int
    prospect_id: int | None
    sf_record_id: str | None
    sf_object: str | None
    email: str | None
    ae_assigned_user_id: int | None
    ae_assigned_queue_id: str | None
    sf_owner_id: str | None
    last_modstamp: datetime | None
    owners_agree: bool | None = Field(
        description="AE's owner is the one the connected users give for the SF owner; null "
        "when the record is not in SF or its SF owner is not connected"
    )
    created_at: datetime
    updated_at: datetime
    sla: list[SlaTimerView] = Field(
        [], description="the record's follow-up SLA clocks, oldest first (record views only)"
    )


class AuditEntry(ApiModel):
    id: int
    rule: str = Field(description="the decision-table row that applied (A1…A8, S1…S9)")
    reason: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    event_id: str | None
    event_type: str | None
    source_id: str | None = Field(description="the SF notification id, webhook id or request")
    trace_id: str | None = Field(
        None, description="the OpenTelemetry trace of the decision, when it was traced"
    )
    created_at: datetime


class AssignmentRequest(ApiInput):
    """The same assignment actions as the AE webhooks, for internal callers."""

    request_id: Annotated[
        str, StringConstraints(min_length=1, max_length=200, pattern=r"^[!-~]+$")
    ] = Field(description="idempotency key: the same id is the same request")
    prospect: AeProspect
    action: AssignmentAction


class DecisionPreview(ApiModel):
    """What the assigner would decide if it applied the request now (it decides for real when
    the event arrives; a concurrent change may make it decide otherwise)."""

    rule: str
    reason: str
    refused: bool
    after: dict[str, Any] | None = Field(description="the owners the record would have")


class AssignmentAccepted(ApiModel):
    event_id: str = Field(description="the same request id always gives the same event id")
    status: Literal["accepted"] = "accepted"
    preview: DecisionPreview


class ReconcileRequest(ApiInput):
    dry_run: bool = Field(False, description="report what would change, change nothing")


ReconcileOutcome = Literal[
    "agree", "fixed", "would_fix", "sf_owner_not_connected", "not_in_salesforce"
]


class ReconcileChange(ApiModel):
    record_id: int
    prospect_id: int | None
    sf_record_id: str | None
    rule: str
    before: dict[str, Any]
    after: dict[str, Any]


class ReconcileReport(ApiModel):
    run_id: str = Field(description="the event id the audit and outbox rows carry")
    dry_run: bool
    examined: int
    outcomes: dict[ReconcileOutcome, int]
    fixed_by_rule: dict[str, int]
    changes: list[ReconcileChange] = Field(description="the first 100 changes")
    changes_truncated: bool


# --- dead letters ------------------------------------------------------------------------


class DeadLetterView(ApiModel):
    id: str = Field(description="the event id (the message id)")
    queue: str = Field(description="the work queue it was dead-lettered from")
    reason: str
    event_type: str | None
    tenant: str | None
    source_id: str | None
    body: Any = Field(description="the message as JSON, or as text when it is not JSON")


class DeadLettersReplayed(ApiModel):
    replayed: list[str]
    not_replayable: list[str] = Field(description="ids kept: no event type to route them by")


class DeadLetterDiscarded(ApiModel):
    discarded: str


# --- effects (the outbox) --------------------------------------------------------------------

EffectState = Literal["waiting", "sending", "dead"]


class EffectView(ApiModel):
    id: int = Field(description="the outbox row id")
    record_id: int
    prospect_id: int | None
    sf_record_id: str | None
    target: Literal["ae", "sf"]
    kind: str = Field(description="ae.prospect.upsert, sf.record.upsert")
    state: EffectState = Field(
        description="waiting: not sent yet (due, backing off after a failure, or waiting for "
        "AE's daily quota); sending: a relay holds it now; dead: refused for good"
    )
    attempts: int = Field(description="failed tries (a spent quota is not one)")
    last_error: str | None
    next_attempt_at: datetime = Field(description="when a relay tries it next (waiting)")
    created_at: datetime
    age_seconds: float = Field(description="since the effect was written")
    lease_owner: str | None = Field(description="the relay replica sending it (sending)")


class EffectDiscarded(ApiModel):
    discarded: int = Field(description="the outbox row id")
    superseded: list[int] = Field(
        description="older waiting rows of the same record and kind, which it had replaced"
    )
