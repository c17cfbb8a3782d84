"""Async client for the Salesforce REST subset ownersync uses.

Authenticated by the tenant's token source (`services.common.sf_auth`: one cached token shared
by concurrent calls, renewed once on a 401), create/update/get of Lead and Contact with an
explicit `Sforce-Auto-Assign` on every write, Salesforce's error array parsed into typed errors,
and retries with exponential backoff and full jitter for what is worth retrying (request limit,
5xx, network). Other 4xx are never retried.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, get_args

import httpx
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_pascal
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from services.common.sfid import to18

if TYPE_CHECKING:
    from services.common.sf_auth import SfToken, SfTokenSource

SObject = Literal["Lead", "Contact"]

_SOBJECTS: tuple[str, ...] = get_args(SObject)
# Worth another try: the network failed or Salesforce gave no answer in time. A create retried
# after a read timeout may exist twice in Salesforce (its REST API has no idempotency key).
TRANSPORT_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


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


def _raise_for_status(response: httpx.Response) -> httpx.Response:
    if response.is_success:
        return response
    errors = parse_errors(response)
    if _is_transient(response.status_code, errors):
        raise SfTransientError(response.status_code, errors)
    raise SfRequestRejected(response.status_code, errors)


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
        """Create a record; returns its 18-character id."""
        body = fields.model_dump(by_alias=True, exclude_none=True)
        response = await self._call(
            "POST", self._sobject_path(sobject), body=body, auto_assign=auto_assign
        )
        return to18(str(response.json()["id"]))

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
        if sobject not in _SOBJECTS:
            raise ValueError(f"unsupported sObject {sobject!r}; expected one of {_SOBJECTS}")
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
    ) -> httpx.Response:
        headers = {}
        if auto_assign is not None:
            # Salesforce treats a missing header as TRUE, so every write states it.
            headers["Sforce-Auto-Assign"] = "TRUE" if auto_assign else "FALSE"
        try:
            response = await self._with_retries(method, path, body, headers)
        except SfRequestRejected:
            self.outcomes["rejected"] += 1
            raise
        except SfTransientError as exc:
            self.outcomes["transient"] += 1
            raise SfTransientError(
                exc.status, exc.errors, detail=f"gave up after {self._max_attempts} attempts"
            ) from exc
        self.outcomes["ok"] += 1
        return response

    async def _with_retries(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None,
        headers: dict[str, str],
    ) -> httpx.Response:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._max_attempts),
            # Full jitter: a uniform wait in [0, min(max, base * 2^n)].
            wait=wait_random_exponential(multiplier=self._backoff_base, max=self._backoff_max),
            retry=retry_if_exception_type(SfTransientError),
            before_sleep=self._count_retry,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._send_in_session(method, path, body, headers)
        raise AssertionError("unreachable: tenacity either returns or re-raises")

    def _count_retry(self, retry_state: RetryCallState) -> None:
        self.outcomes["retried"] += 1

    async def _send_in_session(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None,
        headers: dict[str, str],
    ) -> httpx.Response:
        token = await self._tokens.token()
        response = await self._send(method, token, path, body, headers)
        if response.status_code == 401:
            # The session expired or was revoked: renew once; a second 401 is a real refusal.
            token = await self._tokens.renew(token)
            response = await self._send(method, token, path, body, headers)
        return _raise_for_status(response)

    async def _send(
        self,
        method: str,
        token: SfToken,
        path: str,
        body: Mapping[str, Any] | None,
        headers: dict[str, str],
    ) -> httpx.Response:
        try:
            return await self._http.request(
                method,
                f"{token.instance_url}{path}",
                json=body,
                headers={**headers, "Authorization": f"Bearer {token.access_token}"},
            )
        except TRANSPORT_ERRORS as exc:
            raise SfTransientError(None, detail=f"{type(exc).__name__}: {exc}") from exc
