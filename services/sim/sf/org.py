"""The simulated Salesforce org: users, queues, leads and contacts, the active lead assignment
rule, OAuth tokens and the injected API faults, all in memory in `SfSimState`."""

from __future__ import annotations

import random
import re
import secrets
import string
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from services.common.sfid import (
    KEY_PREFIX_CONTACT,
    KEY_PREFIX_LEAD,
    KEY_PREFIX_QUEUE,
    KEY_PREFIX_USER,
    InvalidSalesforceId,
    to18,
)
from services.sim.lost_answers import AnswerLoss
from services.sim.sf.outbound import OutboundMessenger
from services.sim.sf.soap import SObjectType
from services.sim.sf.soql import Query
from services.sim.sf.tokens import AccessTokens

Operator = Literal["equals", "contains", "startsWith", "notEquals"]

KEY_PREFIXES: dict[SObjectType, str] = {"Lead": KEY_PREFIX_LEAD, "Contact": KEY_PREFIX_CONTACT}
REQUIRED_FIELDS: dict[SObjectType, tuple[str, ...]] = {
    "Lead": ("LastName", "Company"),
    "Contact": ("LastName",),
}
# The standard fields a describe lists (custom ones are the org's `external_id_fields`).
STANDARD_FIELDS: dict[SObjectType, tuple[str, ...]] = {
    "Lead": ("Id", "Email", "FirstName", "LastName", "Company", "OwnerId"),
    "Contact": ("Id", "Email", "FirstName", "LastName", "OwnerId"),
}
# Salesforce maintains these itself; a write that names them is refused.
READ_ONLY_FIELDS = frozenset(
    {"Id", "CreatedDate", "SystemModstamp", "LastModifiedDate", "CreatedById", "IsDeleted"}
)
_FIELD_NAME = re.compile(r"^[A-Z][A-Za-z0-9_]*$")
_ID_CHARS = string.ascii_letters + string.digits


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

    @classmethod
    def not_found(cls) -> SfSimError:
        return cls(404, "NOT_FOUND", "The requested resource does not exist")

    def body(self) -> list[dict[str, Any]]:
        return [{"message": self.message, "errorCode": self.error_code, "fields": self.fields}]


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
class SimFaults(AnswerLoss):
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
    client_secret: str | None = "ownersync-sim-secret"  # None: revoked, every token refused
    # The connected app's OAuth scopes: every token it issues carries these.
    oauth_scopes: frozenset[str] = frozenset({"api", "pardot_api"})
    tokens: AccessTokens = field(default_factory=AccessTokens)
    instance_url: str | None = None  # None: the URL the simulator is served at
    users: dict[str, SimUser] = field(default_factory=dict)
    queues: dict[str, SimQueue] = field(default_factory=dict)
    leads: dict[str, dict[str, Any]] = field(default_factory=dict)
    contacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    rule_entries: list[RuleEntry] = field(default_factory=list)
    default_owner_id: str | None = None  # when no rule entry matches; None: the API user
    # The org's External ID custom fields (unique text, on leads and contacts): an admin's setup,
    # kept by `reset`. A write naming another custom field is refused, as Salesforce does.
    external_id_fields: set[str] = field(default_factory=set)
    faults: SimFaults = field(default_factory=SimFaults)
    calls: list[CallRecord] = field(default_factory=list)
    clock: Callable[[], datetime] = _utcnow
    rng: random.Random = field(default_factory=random.Random)
    outbound: OutboundMessenger = field(init=False, repr=False)
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

    def expire_tokens(self) -> int:
        return self.tokens.expire(self.org_id)

    def revoke_tokens(self) -> int:
        return self.tokens.revoke(self.org_id)

    def rotate_client_secret(self, new_secret: str | None = None) -> str:
        """A new consumer secret (the old one refused from now on), as SF's setup rotates it."""
        self.client_secret = new_secret or secrets.token_urlsafe(32)
        return self.client_secret

    def revoke_client_secret(self) -> None:
        self.client_secret = None

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
        """An access token carrying the connected app's scopes; ValueError for bad credentials."""
        # A revoked secret is compared against a fresh random one: same work, never a match.
        expected = self.client_secret or secrets.token_urlsafe(32)
        id_ok = secrets.compare_digest(client_id.encode(), self.client_id.encode())
        secret_ok = secrets.compare_digest(client_secret.encode(), expected.encode())
        if not (id_ok and secret_ok and self.client_secret is not None):
            raise ValueError("invalid client credentials")
        return self.tokens.issue(self.org_id, self.client_id, self.oauth_scopes)

    def authorize(self, authorization: str | None) -> None:
        """A live token of this org with the `api` scope, else 401 INVALID_SESSION_ID."""
        scheme, _, token = (authorization or "").partition(" ")
        grant = self.tokens.grant(token.strip()) if scheme.lower() == "bearer" else None
        if grant is None or grant.org_id != self.org_id or "api" not in grant.scopes:
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
            raise SfSimError.not_found()
        return record

    def create_record(
        self, sobject: SObjectType, fields: dict[str, Any], *, auto_assign: bool = True
    ) -> dict[str, Any]:
        self._check_writable(sobject, fields)
        record: dict[str, Any] = {"Email": None, **fields}
        _check_required(sobject, record)
        record["OwnerId"] = self._owner_for(sobject, record, auto_assign, self.api_user_id)
        now = self._next_modstamp()
        record.update(
            Id=self.new_id(KEY_PREFIXES[sobject]),
            CreatedDate=now,
            CreatedById=self.api_user_id,  # every write comes through the connected app's user
            SystemModstamp=now,
        )
        self._check_unique(sobject, record)
        self.table(sobject)[record["Id"]] = record
        self.outbound.record_created(sobject, record)
        return record

    def upsert_record(
        self,
        sobject: SObjectType,
        external_id_field: str,
        value: str,
        fields: dict[str, Any],
        *,
        auto_assign: bool = True,
    ) -> tuple[dict[str, Any], bool]:
        """Update the record whose `external_id_field` is `value`, else create it with that
        value. Returns the record and whether it was created."""
        if external_id_field not in self.external_id_fields:
            raise SfSimError(
                404,
                "NOT_FOUND",
                "Provided external ID field does not exist or is not accessible: "
                f"{external_id_field}",
            )
        table = self.table(sobject)
        match = next((r for r in table.values() if r.get(external_id_field) == value), None)
        if match is not None:  # at most one: the field is unique
            updated = self.update_record(sobject, match["Id"], fields, auto_assign=auto_assign)
            return updated, False
        created = self.create_record(
            sobject, {**fields, external_id_field: value}, auto_assign=auto_assign
        )
        return created, True

    def describe(self, sobject: SObjectType) -> dict[str, Any]:
        """The part of Salesforce's sObject describe that says which fields there are and
        which of them are External IDs the API user can write."""
        fields = [_described(name, external_id=False) for name in STANDARD_FIELDS[sobject]]
        fields += [_described(name, external_id=True) for name in sorted(self.external_id_fields)]
        return {"name": sobject, "custom": False, "fields": fields}

    def query(self, soql: str) -> list[dict[str, Any]]:
        """What `soql` selects; the simulator reads the subset described in its soql module."""
        try:
            query = Query.parse(soql)
        except ValueError as exc:
            raise SfSimError(400, "MALFORMED_QUERY", str(exc)) from None
        sobject = next((s for s in KEY_PREFIXES if s.lower() == query.sobject.lower()), None)
        if sobject is None:
            raise SfSimError(
                400, "INVALID_TYPE", f"sObject type '{query.sobject}' is not supported."
            )
        for name in query.field_names():
            self._check_field(sobject, name)
        found = query.run(list(self.table(sobject).values()))
        return [{"attributes": {"type": sobject}, **record} for record in found]

    def update_record(
        self,
        sobject: SObjectType,
        record_id: str,
        fields: dict[str, Any],
        *,
        auto_assign: bool = True,
    ) -> dict[str, Any]:
        before = self.get_record(sobject, record_id)
        self._check_writable(sobject, fields)
        after = {**before, **fields}
        _check_required(sobject, after)
        self._check_unique(sobject, after)
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

    def _check_writable(self, sobject: SObjectType, fields: dict[str, Any]) -> None:
        for name in fields:
            self._check_field(sobject, name)
        _check_writable(sobject, fields)

    def _check_field(self, sobject: SObjectType, name: str) -> None:
        unknown_custom = name.endswith("__c") and name not in self.external_id_fields
        if unknown_custom or not _FIELD_NAME.match(name):
            raise SfSimError(
                400,
                "INVALID_FIELD",
                f"No such column '{name}' on sobject of type {sobject}",
                [name],
            )

    def _check_unique(self, sobject: SObjectType, record: dict[str, Any]) -> None:
        for name in self.external_id_fields:
            value = record.get(name)
            taken = value is not None and any(
                other.get(name) == value and other["Id"] != record["Id"]
                for other in self.table(sobject).values()
            )
            if taken:
                raise SfSimError(
                    400, "DUPLICATE_VALUE", f"duplicate value found: {name} duplicates value"
                )

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


def _described(name: str, *, external_id: bool) -> dict[str, Any]:
    writable = name != "Id"
    return {
        "name": name,
        "type": "id" if name == "Id" else "string",
        "custom": name.endswith("__c"),
        "externalId": external_id,
        "unique": external_id,
        "createable": writable,
        "updateable": writable,
    }


def _check_required(sobject: SObjectType, record: dict[str, Any]) -> None:
    missing = [name for name in REQUIRED_FIELDS[sobject] if record.get(name) in (None, "")]
    if missing:
        raise SfSimError(
            400,
            "REQUIRED_FIELD_MISSING",
            f"Required fields are missing: [{', '.join(missing)}]",
            missing,
        )
