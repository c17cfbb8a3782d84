"""Async client for the Account Engagement (Pardot) API v5 subset that ownersync calls.

AE authenticates with the access token of the tenant's SF connected app (`Authorization:
Bearer`, scope `pardot_api`) plus `Pardot-Business-Unit-Id`; the token comes from the tenant's
token source, shared with its SF client, and is renewed once when AE answers 401.

AE has no idempotency key, so a prospect create is never sent twice by this client: once it
may have reached AE (a 5xx, or the connection failed after sending), `AeOutcomeUnknown` says
so and the caller looks for the prospect before creating it again.

Bulk owner changes go through AE's v5 Import API (`create_import`, `submit_import`,
`get_import`, `import_errors`), as documented at
https://developer.salesforce.com/docs/marketing/pardot/guide/import-v5.html:
- `POST /api/v5/imports`, multipart/form-data: part `input` (JSON: `operation` "Upsert",
  `object` "Prospect", `createOnNoMatch` false) and part `importFile` (the CSV: a header of
  prospect field names, e.g. the match column `matchId` and `assignedUserId`, one row per
  prospect). Answers the import, `status` "Open". Bulk-assigning to a user needs the
  "Prospects > Prospects > Assign" ability; un-assigning is NOT supported through Import.
- `PATCH /api/v5/imports/{id}` `{"status": "Ready"}`: submits it (then Waiting, Processing,
  Complete).
- `GET /api/v5/imports/{id}?fields=id,status,isExpired,createdCount,updatedCount,errorCount`:
  its status and counts.
- `GET /api/v5/imports/{id}/errors`: a CSV of the rows that failed, each with its error.
The import is created Open and submitted by a second call, never created Ready: a create whose
answer is lost leaves at worst an Open import that AE never processes (it expires), so sending
the same owners again in a new import is safe.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeVar, runtime_checkable
from zoneinfo import ZoneInfo

import httpx
import orjson
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    RetryError,
    retry_if_exception,
    retry_if_exception_type,
    retry_if_not_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from services.common.retry_after import parse_retry_after
from services.common.sf_client import NOT_SENT_ERRORS, SfRequestRejected, SfTransientError

if TYPE_CHECKING:
    from services.common.sf_auth import SfToken, SfTokenSource

PROSPECTS = "/api/v5/objects/prospects"
JSON = "application/json"
USERS = "/api/v5/objects/users"
IMPORTS = "/api/v5/imports"
_IMPORT_FIELDS = "id,status,isExpired,createdCount,updatedCount,errorCount"
# AE answers 429 with this code once the business unit's daily quota is spent: retrying is useless.
DAILY_LIMIT_CODE = 122

M = TypeVar("M", bound="_AeModel")


class _AeModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, validate_by_name=True, validate_by_alias=True, frozen=True
    )


class AeProspect(_AeModel):
    id: int
    email: str | None = None
    assigned_user_id: int | None = None
    assigned_queue_id: str | None = None
    salesforce_id: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class AeProspectFields(_AeModel):
    """The prospect fields ownersync writes. A create sends the ones that are not None; an
    update sends the ones that were given, None included (None clears the field in AE)."""

    model_config = ConfigDict(extra="forbid")

    email: str | None = None
    assigned_user_id: int | None = None
    assigned_queue_id: str | None = None
    salesforce_id: str | None = None


class AeUser(_AeModel):
    id: int
    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    is_active: bool = True
    salesforce_id: str | None = None


class AeImport(_AeModel):
    """An import (bulk upsert) as AE reports it. `status`: Open, Ready, Waiting, Processing,
    Complete (anything else: it failed as a whole)."""

    id: int
    status: str
    is_expired: bool = False
    created_count: int | None = None
    updated_count: int | None = None
    error_count: int | None = None

    @property
    def complete(self) -> bool:
        return self.status == "Complete"

    @property
    def running(self) -> bool:
        return self.status in {"Open", "Ready", "Waiting", "Processing"} and not self.is_expired


# AE v5 returns only the fields asked for, so every read names the fields the models hold.
_PROSPECT_FIELDS = ",".join(f.alias or n for n, f in AeProspect.model_fields.items())
_USER_FIELDS = ",".join(f.alias or n for n, f in AeUser.model_fields.items())


class AeError(Exception):
    def __init__(
        self,
        status: int | None,
        code: int | None,
        message: str,
        *,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(status, code, message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after  # seconds AE asked us to wait (Retry-After), if any

    def __str__(self) -> str:
        status = self.status if self.status is not None else "no response"
        code = f" (code {self.code})" if self.code is not None else ""
        return f"AE {status}{code}: {self.message}"


class AeTransientError(AeError):
    """AE was unavailable or throttling; the call may succeed later."""


class AeOutcomeUnknown(AeTransientError):
    """A create that may or may not have been applied: AE failed (5xx), or the connection did
    after the request was sent. Look for the prospect before creating it again."""


class AeRequestRejected(AeError):
    """AE refused the request itself; sending it again will not help."""


class AeNotFound(AeRequestRejected):
    pass


class AeQuotaExhausted(AeError):
    """The daily API quota is spent (locally counted or reported by AE)."""


def _error_from(response: httpx.Response) -> AeError:
    code: int | None = None
    message = response.text[:500] or response.reason_phrase
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        code = body.get("code") if isinstance(body.get("code"), int) else None
        message = str(body.get("message", message))
    status = response.status_code
    if status == 429 and code == DAILY_LIMIT_CODE:
        return AeQuotaExhausted(status, code, message)
    if status == 429 or status >= 500:
        wait = parse_retry_after(response.headers.get("Retry-After"), datetime.now(UTC))
        return AeTransientError(status, code, message, retry_after=wait)
    if status == 404:
        return AeNotFound(status, code, message)
    return AeRequestRejected(status, code, message)


class AeClient:
    """Borrows `tokens` (shared with the tenant's SF client): closing the client leaves it open."""

    def __init__(
        self,
        base_url: str,
        tokens: SfTokenSource,
        business_unit_id: str,
        *,
        max_concurrency: int = 5,
        timeout: float = 10.0,
        max_attempts: int = 5,
        backoff_base: float = 0.2,
        backoff_max: float = 5.0,
        daily_quota: int | None = None,
        quota_timezone: str = "UTC",
        shared_limits: AeCallLimits | None = None,
    ) -> None:
        """`daily_quota` and `max_concurrency` are counted in this process; `shared_limits`
        (the relay's, in Postgres) counts AE's quota and concurrent calls across processes."""
        # One client, its connections kept alive: each call of a steady stream reuses one
        # (at most `max_concurrency` are ever busy at once).
        self._http = httpx.AsyncClient(
            base_url=base_url,
            timeout=timeout,
            headers={"Pardot-Business-Unit-Id": business_unit_id, "Accept": JSON},
            limits=httpx.Limits(max_keepalive_connections=max_concurrency),
        )
        self._tokens = tokens
        self._slots = asyncio.Semaphore(max_concurrency)
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._daily_quota = daily_quota
        self._quota_zone = ZoneInfo(quota_timezone)
        self._quota_day = datetime.now(self._quota_zone).date()
        self._shared = shared_limits
        self.calls_made = 0
        self.outcomes: Counter[str] = Counter()

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

    @property
    def quota_remaining(self) -> int | None:
        if self._shared is not None:
            return self._shared.quota_remaining
        if self._daily_quota is None:
            return None
        self._new_quota_day()
        return max(self._daily_quota - self.calls_made, 0)

    # --- API ------------------------------------------------------------------------------

    async def create_prospect(self, fields: AeProspectFields) -> AeProspect:
        """AeOutcomeUnknown when the prospect may have been created all the same."""
        body = fields.model_dump(by_alias=True, exclude_none=True)
        data = await self._request(
            "POST", PROSPECTS, json=body, params=_prospect_fields(), repeatable=False
        )
        return _parse(AeProspect, data)

    async def update_prospect(self, prospect_id: int, changes: AeProspectFields) -> AeProspect:
        return _parse(AeProspect, await self._update(prospect_id, changes))

    async def set_prospect(self, prospect_id: int, changes: AeProspectFields) -> None:
        """`update_prospect` for a caller that only needs it done (the relay): AE's answer is
        not validated into a model nobody reads."""
        await self._update(prospect_id, changes)

    async def _update(self, prospect_id: int, changes: AeProspectFields) -> dict[str, Any]:
        body = changes.model_dump(by_alias=True, exclude_unset=True)
        if not body:
            raise ValueError("update_prospect needs at least one field")
        path = f"{PROSPECTS}/{prospect_id}"
        return await self._request("PATCH", path, json=body, params=_prospect_fields())

    async def get_prospect(self, prospect_id: int) -> AeProspect:
        data = await self._request("GET", f"{PROSPECTS}/{prospect_id}", params=_prospect_fields())
        return _parse(AeProspect, data)

    async def find_prospects_by_email(self, email: str) -> list[AeProspect]:
        params = {**_prospect_fields(), "email": email}
        return [_parse(AeProspect, value) async for value in self._pages(PROSPECTS, params)]

    async def find_prospects_by_salesforce_id(self, salesforce_id: str) -> list[AeProspect]:
        params = {**_prospect_fields(), "salesforceId": salesforce_id}
        found = [_parse(AeProspect, value) async for value in self._pages(PROSPECTS, params)]
        # Checked here too: an AE that ignored the filter must not make every prospect a match.
        return [p for p in found if p.salesforce_id == salesforce_id]

    async def first_user(self) -> AeUser | None:
        """One AE user (a single call): what a connection check reads."""
        page = await self._request("GET", USERS, params={"fields": _USER_FIELDS, "limit": "1"})
        values = page.get("values") or []
        return _parse(AeUser, values[0]) if values else None

    async def list_users(self, *, page_size: int | None = None) -> list[AeUser]:
        params = {"fields": _USER_FIELDS}
        if page_size is not None:
            params["limit"] = str(page_size)
        return [_parse(AeUser, value) async for value in self._pages(USERS, params)]

    # --- bulk: the v5 Import API (see the module's docstring) ------------------------------

    async def create_import(self, csv_text: str, *, filename: str = "owners.csv") -> AeImport:
        """A new Open import of prospect upserts matched by id (no creates), holding `csv_text`
        as its first batch. Not submitted: see `submit_import`. AeOutcomeUnknown when it may
        exist all the same (it stays Open, never processed)."""
        spec = {"operation": "Upsert", "object": "Prospect", "createOnNoMatch": False}
        files = {
            "input": (None, orjson.dumps(spec), JSON),
            "importFile": (filename, csv_text.encode(), "text/csv"),
        }
        data = await self._request("POST", IMPORTS, files=files, repeatable=False)
        return _parse(AeImport, data)

    async def submit_import(self, import_id: int) -> AeImport:
        """Set the import's status to Ready: AE queues it and processes it asynchronously."""
        data = await self._request(
            "PATCH", f"{IMPORTS}/{import_id}", json={"status": "Ready"}, params=_import_fields()
        )
        return _parse(AeImport, data)

    async def get_import(self, import_id: int) -> AeImport:
        data = await self._request("GET", f"{IMPORTS}/{import_id}", params=_import_fields())
        return _parse(AeImport, data)

    async def import_errors(self, import_id: int) -> str:
        """The CSV of the import's failed rows (its columns, plus the error of each row)."""
        return await self._request_text("GET", f"{IMPORTS}/{import_id}/errors")

    # --- transport ------------------------------------------------------------------------

    async def _pages(self, path: str, params: dict[str, str]) -> AsyncIterator[dict[str, Any]]:
        token: str | None = None
        while True:
            page_params = {**params, "nextPageToken": token} if token else params
            page = await self._request("GET", path, params=page_params)
            for value in page.get("values", []):
                yield value
            token = page.get("nextPageToken")
            if not token:
                return

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        repeatable: bool = True,
        files: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        data = await self._call(_Request(method, path, json, params, repeatable, files))
        assert isinstance(data, dict)
        return data

    async def _request_text(self, method: str, path: str) -> str:
        data = await self._call(_Request(method, path, None, None, True, text=True))
        assert isinstance(data, str)
        return data

    async def _call(self, request: _Request) -> dict[str, Any] | str:
        backoff = wait_exponential_jitter(
            multiplier=self._backoff_base, max=self._backoff_max, jitter=self._backoff_base
        )
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._max_attempts),
            wait=lambda state: max(backoff(state), _asked_wait(state)),
            retry=retry_if_exception_type(AeTransientError)
            & retry_if_not_exception_type(AeOutcomeUnknown)
            # AE asked for a longer wait than this call may take: the caller waits instead.
            & retry_if_exception(lambda exc: (_retry_after(exc) or 0.0) <= self._backoff_max),
            before_sleep=self._count_retry,
        )
        try:
            data: dict[str, Any] | str = await retrying(self._attempt, request)
        except RetryError as exc:
            self.outcomes["transient"] += 1
            last = exc.last_attempt.exception()
            assert isinstance(last, AeTransientError)
            raise AeTransientError(
                last.status,
                last.code,
                f"{last.message} (gave up after {self._max_attempts} tries)",
                retry_after=last.retry_after,
            ) from last
        except AeOutcomeUnknown:
            self.outcomes["outcome_unknown"] += 1
            raise
        except AeQuotaExhausted:
            self.outcomes["quota_exhausted"] += 1
            raise
        except AeRequestRejected:
            self.outcomes["rejected"] += 1
            raise
        except AeError:
            self.outcomes["invalid_response"] += 1
            raise
        except SfRequestRejected:
            # No token: the tenant's connected app was refused (SfCredentialsRefused).
            self.outcomes["no_token"] += 1
            raise
        self.outcomes["ok"] += 1
        return data

    async def _attempt(self, request: _Request) -> dict[str, Any] | str:
        token = await self._token()
        response = await self._send(request, token)
        if response.status_code == 401:
            # The token expired or was revoked: renew once; a second 401 is a real refusal.
            token = await self._token(refused=token)
            response = await self._send(request, token)
        if response.is_success:
            return response.text if request.text else _json_object(response)
        error = _error_from(response)
        # A 5xx may come after the work was done; a 429 is a refusal before any of it.
        if not request.repeatable and response.status_code >= 500:
            raise AeOutcomeUnknown(
                error.status, error.code, error.message, retry_after=error.retry_after
            )
        raise error

    async def _send(self, request: _Request, token: SfToken) -> httpx.Response:
        async with self._slots, self._shared_call():
            self._spend_quota()
            try:
                authorization = f"Bearer {token.access_token}"
                if request.json is None:
                    headers = {"Authorization": authorization}
                    content = None
                else:  # orjson: what httpx's `json=` does, without the stdlib encoder
                    headers = {"Authorization": authorization, "Content-Type": JSON}
                    content = orjson.dumps(request.json)
                return await self._http.request(
                    request.method,
                    request.path,
                    content=content,
                    params=request.params,
                    files=request.files,
                    headers=headers,
                )
            except httpx.TransportError as exc:  # timeouts, refused connections, dropped sockets
                sent = not isinstance(exc, NOT_SENT_ERRORS)
                failure = AeOutcomeUnknown if sent and not request.repeatable else AeTransientError
                raise failure(None, None, f"{request.method} {request.path}: {exc!r}") from exc

    async def _token(self, refused: SfToken | None = None) -> SfToken:
        try:
            if refused is None:
                return await self._tokens.token()
            return await self._tokens.renew(refused)
        except SfTransientError as exc:
            raise AeTransientError(exc.status, None, f"no Salesforce token: {exc}") from exc

    def _shared_call(self) -> AbstractAsyncContextManager[None]:
        return self._shared.call() if self._shared is not None else nullcontext()

    def _new_quota_day(self) -> None:
        today = datetime.now(self._quota_zone).date()
        if today != self._quota_day:
            self._quota_day, self.calls_made = today, 0

    def _spend_quota(self) -> None:
        if self._shared is not None:
            return  # spent by the shared limits, with the slot
        if self.quota_remaining == 0:
            raise AeQuotaExhausted(None, None, f"local daily quota of {self._daily_quota} spent")
        self.calls_made += 1

    def _count_retry(self, _: RetryCallState) -> None:
        self.outcomes["retried"] += 1


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    json: dict[str, Any] | None
    params: dict[str, str] | None
    repeatable: bool  # False: a create, which is not sent again once it may have arrived
    files: dict[str, Any] | None = None  # multipart/form-data parts
    text: bool = False  # the answer is text (a CSV), not a JSON object


def _retry_after(exc: BaseException) -> float | None:
    return exc.retry_after if isinstance(exc, AeError) else None


def _asked_wait(state: RetryCallState) -> float:
    """The Retry-After of the failure about to be retried (0 without one)."""
    exc = state.outcome.exception() if state.outcome is not None else None
    return (_retry_after(exc) if exc is not None else None) or 0.0


@runtime_checkable
class AeCallLimits(Protocol):
    """AE's limits of one business unit, shared by every process that calls it."""

    def call(self) -> AbstractAsyncContextManager[None]:
        """Hold one of the concurrent calls and spend one call of the daily quota for the
        duration of a request; AeQuotaExhausted (before any request) once the quota is spent."""
        ...

    @property
    def quota_remaining(self) -> int | None: ...


def _prospect_fields() -> dict[str, str]:
    return {"fields": _PROSPECT_FIELDS}


def _import_fields() -> dict[str, str]:
    return {"fields": _IMPORT_FIELDS}


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        data = orjson.loads(response.content)
    except ValueError:  # orjson.JSONDecodeError is one
        data = None
    if not isinstance(data, dict):
        raise AeError(response.status_code, None, f"expected a JSON object, got {response.text!r}")
    return data


def _parse(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise AeError(None, None, f"unexpected {model.__name__} payload: {exc}") from exc
