"""Async client for the Salesforce REST subset ownersync uses.

Authenticated by the tenant's token source (`services.common.sf_auth`: one cached token shared
by concurrent calls, renewed once on a 401), create/update/get of Lead and Contact with an
explicit `Sforce-Auto-Assign` on every write, Salesforce's error array parsed into typed errors,
and retries with exponential backoff and full jitter for what is worth retrying (request limit,
5xx, network). Other 4xx are never retried.

A create is never sent twice by this client: once it may have reached Salesforce (a 5xx, or
the connection failed after sending), `SfOutcomeUnknown` says so and the caller looks for the
record before creating it again. Where the org has an External ID field for it, an upsert
through that field is the create that is safe to repeat.
"""

from __future__ import annotations

import asyncio
import collections
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, get_args
from urllib.parse import quote as urlquote

import httpx
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_pascal
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    retry_if_not_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from services.common.sfid import to18
from services.common.soql import datetime_literal, quote

if TYPE_CHECKING:
    from services.common.sf_auth import SfToken, SfTokenSource

SObject = Literal["Lead", "Contact"]

_SOBJECTS: tuple[str, ...] = get_args(SObject)
_FIELD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
# Worth another try: the network failed or Salesforce gave no answer in time.
TRANSPORT_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
# Of those, the ones that prove the request never left: even a create may be sent again.
NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# How long a describe is believed: an admin who adds an External ID field is heard within it.
DESCRIBE_TTL = 600.0


class SfRecordFields(BaseModel):
    """The Lead/Contact fields ownersync writes, sent under SF's names (`Email`, `LastName`,
    `Company`, `OwnerId`). A create sends the ones that are not None; an update sends the ones
    that were given."""

    model_config = ConfigDict(
        alias_generator=to_pascal, validate_by_name=True, frozen=True, extra="forbid"
    )

    email: str | None = None
    last_name: str | None = None
    company: str | None = None
    owner_id: str | None = None


@dataclass(frozen=True)
class SfError:
    error_code: str
    message: str
    fields: tuple[str, ...] = ()

    def __str__(self) -> str:
        where = f" (fields: {', '.join(self.fields)})" if self.fields else ""
        return f"{self.error_code}: {self.message}{where}"


class SfApiError(Exception):
    """A Salesforce call that did not succeed; `status` is None when no HTTP answer came back."""

    def __init__(
        self, status: int | None, errors: Sequence[SfError] = (), *, detail: str | None = None
    ) -> None:
        self.status = status
        self.errors = tuple(errors)
        self.detail = detail
        super().__init__(self._describe())

    @property
    def error_code(self) -> str | None:
        return self.errors[0].error_code if self.errors else None

    def _describe(self) -> str:
        said = "; ".join(str(error) for error in self.errors) or self.detail or "no details"
        head = "no answer from Salesforce" if self.status is None else f"Salesforce {self.status}"
        tail = f" [{self.detail}]" if self.detail and self.errors else ""
        return f"{head}: {said}{tail}"


class SfRequestRejected(SfApiError):
    """Salesforce refused the request (4xx): sending it again would not help."""


class SfTransientError(SfApiError):
    """Salesforce was unavailable or over its limits, and the retries ran out."""


class SfOutcomeUnknown(SfTransientError):
    """A create that may or may not have been applied: Salesforce failed (5xx), or the
    connection did after the request was sent. Look for the record before creating it again."""


@dataclass(frozen=True)
class SfRecordRef:
    id: str
    owner_id: str


def parse_errors(response: httpx.Response) -> tuple[SfError, ...]:
    """Salesforce's `[{"message","errorCode","fields"}]`, or the OAuth `{"error",...}` object."""
    try:
        payload = response.json()
    except ValueError:
        payload = None
    items = [payload] if isinstance(payload, dict) else payload
    if isinstance(items, list):
        errors = tuple(_error_from(item) for item in items if isinstance(item, Mapping))
        if errors:
            return errors
    text = response.text.strip()[:200] or response.reason_phrase
    return (SfError(f"HTTP_{response.status_code}", text),)


def _error_from(item: Mapping[str, Any]) -> SfError:
    code = item.get("errorCode") or item.get("error") or "UNKNOWN_ERROR"
    message = item.get("message") or item.get("error_description") or ""
    fields = tuple(str(name) for name in item.get("fields") or ())
    return SfError(str(code), str(message), fields)


def _is_transient(status: int, errors: Sequence[SfError]) -> bool:
    if status >= 500:
        return True
    return status == 403 and any(e.error_code == "REQUEST_LIMIT_EXCEEDED" for e in errors)


def _raise_for_status(response: httpx.Response, *, repeatable: bool) -> httpx.Response:
    if response.is_success:
        return response
    errors = parse_errors(response)
    if _is_transient(response.status_code, errors):
        # A 5xx may come after the work was done; a refusal over the request limit never does.
        if not repeatable and response.status_code >= 500:
            raise SfOutcomeUnknown(response.status_code, errors)
        raise SfTransientError(response.status_code, errors)
    raise SfRequestRejected(response.status_code, errors)


def external_id_path(api_version: str, sobject: str, field: str, value: str) -> str:
    """The record of `sobject` whose External ID `field` is `value` (the upsert resource)."""
    _check_sobject(sobject)
    if not _FIELD_NAME.fullmatch(field):
        raise ValueError(f"not a field name: {field!r}")
    return f"/services/data/{api_version}/sobjects/{sobject}/{field}/{urlquote(value, safe='')}"


def created_since_soql(sobject: str, *, email: str, created_by: str | None, since: datetime) -> str:
    """The query for the oldest `sobject` with `email` that `created_by` made at `since` or
    later (anyone's, when the creator is not known)."""
    _check_sobject(sobject)
    where = [f"Email = {quote(email)}"]
    if created_by is not None:
        where.append(f"CreatedById = {quote(created_by)}")
    where.append(f"CreatedDate >= {datetime_literal(since)}")
    return (
        f"SELECT Id, OwnerId FROM {sobject} WHERE {' AND '.join(where)} "
        "ORDER BY CreatedDate ASC LIMIT 1"
    )


def _check_sobject(sobject: str) -> None:
    if sobject not in _SOBJECTS:
        raise ValueError(f"unsupported sObject {sobject!r}; expected one of {_SOBJECTS}")


class SfClient:
    """Borrows `tokens` (shared with the tenant's AE client): closing the client leaves it open."""

    def __init__(
        self,
        tokens: SfTokenSource,
        *,
        api_version: str = "v62.0",
        timeout: float = 10.0,
        max_attempts: int = 5,
        backoff_base: float = 0.2,
        backoff_max: float = 5.0,
    ) -> None:
        self._tokens = tokens
        self._api_version = api_version
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._http = httpx.AsyncClient(timeout=timeout, headers={"Accept": "application/json"})
        self._described: dict[str, tuple[float, frozenset[str]]] = {}
        self._describing = asyncio.Lock()
        self.outcomes: collections.Counter[str] = collections.Counter()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # ---- records

    async def create(self, sobject: SObject, fields: SfRecordFields, *, auto_assign: bool) -> str:
        """Create a record; returns its 18-character id. SfOutcomeUnknown when it may exist."""
        body = fields.model_dump(by_alias=True, exclude_none=True)
        path = self._sobject_path(sobject)
        response = await self._call(
            "POST", path, body=body, auto_assign=auto_assign, repeatable=False
        )
        return to18(str(response.json()["id"]))

    async def upsert(
        self,
        sobject: SObject,
        external_id_field: str,
        key: str,
        fields: SfRecordFields,
        *,
        auto_assign: bool,
    ) -> str:
        """Create the record whose `external_id_field` holds `key`, or update it when it exists
        already: safe to send again, so it is retried like an update. Returns its 18-char id."""
        body = fields.model_dump(by_alias=True, exclude_none=True)
        path = external_id_path(self._api_version, sobject, external_id_field, key)
        response = await self._call("PATCH", path, body=body, auto_assign=auto_assign)
        return to18(str(response.json()["id"]))

    async def external_id_fields(self, sobject: SObject) -> frozenset[str]:
        """The External ID fields of `sobject` this connection can write, from its describe
        (kept for DESCRIBE_TTL seconds)."""
        async with self._describing:
            described = self._described.get(sobject)
            if described is None or time.monotonic() - described[0] > DESCRIBE_TTL:
                path = f"{self._sobject_path(sobject)}/describe"
                fields = (await self._call("GET", path)).json().get("fields") or []
                writable = frozenset(
                    str(f["name"])
                    for f in fields
                    if f.get("externalId") and f.get("createable") and f.get("updateable")
                )
                described = self._described[sobject] = (time.monotonic(), writable)
            return described[1]

    async def first_created_since(
        self, sobject: SObject, *, email: str, since: datetime
    ) -> SfRecordRef | None:
        """The oldest `sobject` with `email` that this connection's user created at `since` or
        later: what a create whose answer was lost would have made."""
        token = await self._tokens.token()
        soql = created_since_soql(sobject, email=email, created_by=token.user_id, since=since)
        path = f"/services/data/{self._api_version}/query"
        found = (await self._call("GET", path, params={"q": soql})).json().get("records") or []
        return SfRecordRef(to18(found[0]["Id"]), to18(found[0]["OwnerId"])) if found else None

    async def update(
        self, sobject: SObject, record_id: str, changes: SfRecordFields, *, auto_assign: bool
    ) -> None:
        body = changes.model_dump(by_alias=True, exclude_unset=True)
        path = self._record_path(sobject, record_id)
        await self._call("PATCH", path, body=body, auto_assign=auto_assign)

    async def get(self, sobject: SObject, record_id: str) -> dict[str, Any]:
        response = await self._call("GET", self._record_path(sobject, record_id))
        record: dict[str, Any] = response.json()
        return record

    async def get_user(self, user_id: str) -> dict[str, Any]:
        """One SF user: what a connection check reads to prove the token works."""
        path = f"/services/data/{self._api_version}/sobjects/User/{to18(user_id)}"
        user: dict[str, Any] = (await self._call("GET", path)).json()
        return user

    def _sobject_path(self, sobject: str) -> str:
        _check_sobject(sobject)
        return f"/services/data/{self._api_version}/sobjects/{sobject}"

    def _record_path(self, sobject: str, record_id: str) -> str:
        return f"{self._sobject_path(sobject)}/{to18(record_id)}"

    # ---- one call: retries around (session + request)

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        auto_assign: bool | None = None,
        params: Mapping[str, str] | None = None,
        repeatable: bool = True,
    ) -> httpx.Response:
        headers = {}
        if auto_assign is not None:
            # Salesforce treats a missing header as TRUE, so every write states it.
            headers["Sforce-Auto-Assign"] = "TRUE" if auto_assign else "FALSE"
        request = _Request(method, path, body, headers, params, repeatable)
        try:
            response = await self._with_retries(request)
        except SfRequestRejected:
            self.outcomes["rejected"] += 1
            raise
        except SfOutcomeUnknown:
            self.outcomes["outcome_unknown"] += 1
            raise
        except SfTransientError as exc:
            self.outcomes["transient"] += 1
            raise SfTransientError(
                exc.status, exc.errors, detail=f"gave up after {self._max_attempts} attempts"
            ) from exc
        self.outcomes["ok"] += 1
        return response

    async def _with_retries(self, request: _Request) -> httpx.Response:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._max_attempts),
            # Full jitter: a uniform wait in [0, min(max, base * 2^n)].
            wait=wait_random_exponential(multiplier=self._backoff_base, max=self._backoff_max),
            retry=retry_if_exception_type(SfTransientError)
            & retry_if_not_exception_type(SfOutcomeUnknown),
            before_sleep=self._count_retry,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._send_in_session(request)
        raise AssertionError("unreachable: tenacity either returns or re-raises")

    def _count_retry(self, retry_state: RetryCallState) -> None:
        self.outcomes["retried"] += 1

    async def _send_in_session(self, request: _Request) -> httpx.Response:
        token = await self._tokens.token()
        response = await self._send(request, token)
        if response.status_code == 401:
            # The session expired or was revoked: renew once; a second 401 is a real refusal.
            token = await self._tokens.renew(token)
            response = await self._send(request, token)
        return _raise_for_status(response, repeatable=request.repeatable)

    async def _send(self, request: _Request, token: SfToken) -> httpx.Response:
        try:
            return await self._http.request(
                request.method,
                f"{token.instance_url}{request.path}",
                json=request.body,
                params=request.params,
                headers={**request.headers, "Authorization": f"Bearer {token.access_token}"},
            )
        except TRANSPORT_ERRORS as exc:
            sent = not isinstance(exc, NOT_SENT_ERRORS)
            failure = SfOutcomeUnknown if sent and not request.repeatable else SfTransientError
            raise failure(None, detail=f"{type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    body: Mapping[str, Any] | None
    headers: dict[str, str]
    params: Mapping[str, str] | None
    repeatable: bool  # False: a create, which is not sent again once it may have arrived
