"""Account Engagement (Pardot) API v5 simulator: the subset ownersync calls, state in memory.

AE takes the access token of a Salesforce connected app: linked to the SF simulators' tokens
(`AeSimState(tokens=…)` and `add_business_unit`), it admits a call only with a live token of the
org that owns the `Pardot-Business-Unit-Id`, carrying the `pardot_api` scope. Linked to none
(`tokens` None, as `ownersync sim` still serves it), any bearer token passes.

Imports (the v5 Import API, /api/v5/imports, as its public page describes it): created Open
with a CSV batch, submitted by setting `status` Ready, then processed in the background
(Waiting, Processing, Complete over `import_seconds`); rows matched by `matchId` update their
prospect, rows that fail (no such prospect, no such user, an un-assign) are kept for the errors
CSV. The same gate applies to every call (auth, 5 concurrent calls, quota, faults, lost answers).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import Scope

from services.sim.lost_answers import AnswerLoss, LoseAnswers, LostAnswer
from services.sim.sf.tokens import AccessTokens

API_PREFIX = "/api/v5/objects"
IMPORTS_PREFIX = "/api/v5/imports"
GATED_PREFIX = "/api/v5/"
# The CSV columns an import takes: one match column, and the prospect fields it writes.
IMPORT_MATCH_COLUMNS = ("matchId", "matchSalesforceId", "matchEmail")
IMPORT_FIELD_COLUMNS = ("email", "assignedUserId", "salesforceId")
DEFAULT_PAGE_SIZE = 200
MAX_PAGE_SIZE = 1000

# AE's numeric error codes, as they appear in `{"code": ..., "message": ...}` bodies.
CODE_INVALID_PROSPECT_ID = 3
CODE_INVALID_REQUEST = 63
CODE_CONCURRENT_LIMIT = 66
CODE_DAILY_LIMIT = 122
CODE_MISSING_BUSINESS_UNIT = 181
CODE_INVALID_TOKEN = 184
CODE_SIMULATED_FAULT = 999


class AeApiError(Exception):
    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def latency_range(text: str) -> tuple[float, float | None]:
    """`latency_ms` and `latency_max_ms` of "200" (fixed) or "100-300" (uniform)."""
    low, _, high = text.partition("-")
    try:
        bounds = float(low), float(high) if high else None
    except ValueError:
        raise ValueError(f"latency {text!r}: expected milliseconds, e.g. 200 or 100-300") from None
    if bounds[0] < 0 or (bounds[1] is not None and bounds[1] < bounds[0]):
        raise ValueError(f"latency {text!r}: expected 0 <= low <= high")
    return bounds


def _error_response(status: int, code: int, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class AeSimFaults(AnswerLoss):
    """Switches that make the simulator misbehave the way the real AE sometimes does."""

    latency_ms: float = 0.0
    # With a maximum, each call's latency is drawn uniformly from [latency_ms, latency_max_ms].
    latency_max_ms: float | None = None
    fail_next: int = 0
    fail_status: int = 503
    failure_rate: float = 0.0
    retry_after: str | None = None  # the Retry-After header of the failures (seconds or a date)
    seed: int | None = None
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def configure(self, **settings: Any) -> None:
        for name, value in settings.items():
            if name == "rng" or not hasattr(self, name):
                raise ValueError(f"unknown fault setting {name!r}")
            setattr(self, name, value)
        if "seed" in settings:
            self.rng = random.Random(self.seed)

    def clear(self) -> None:
        self.configure(
            latency_ms=0.0,
            latency_max_ms=None,
            fail_next=0,
            fail_status=503,
            failure_rate=0.0,
            retry_after=None,
            seed=None,
        )
        self.configure(**asdict(AnswerLoss()))

    def latency(self) -> float:
        """Seconds the current call takes before AE answers it."""
        top = self.latency_max_ms
        if top is None or top <= self.latency_ms:
            return self.latency_ms / 1000
        return self.rng.uniform(self.latency_ms, top) / 1000

    def next_failure(self) -> int | None:
        """The status to fail the current request with, or None to let it through."""
        if self.fail_next > 0:
            self.fail_next -= 1
            return self.fail_status
        if self.failure_rate > 0 and self.rng.random() < self.failure_rate:
            return self.fail_status
        return None


@dataclass
class AeSimState:
    prospects: dict[int, dict[str, Any]] = field(default_factory=dict)
    users: dict[int, dict[str, Any]] = field(default_factory=dict)
    next_prospect_id: int = 5001
    next_user_id: int = 1001
    faults: AeSimFaults = field(default_factory=AeSimFaults)
    call_log: list[tuple[str, str, int]] = field(default_factory=list)
    # The SF tokens this AE trusts, and which org owns each business unit (id -> org id).
    tokens: AccessTokens | None = None
    business_units: dict[str, str] = field(default_factory=dict)
    max_concurrent: int = 5
    daily_quota: int = 1_000_000
    calls_today: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    # The same by business unit (AE's limit is per unit), and the client connections seen.
    in_flight_by_unit: Counter[str] = field(default_factory=Counter)
    max_in_flight_by_unit: Counter[str] = field(default_factory=Counter)
    connections: set[tuple[str, int]] = field(default_factory=set)
    # (wall-clock times the call arrived and was answered, method, path, status) of every call.
    timed_calls: list[tuple[float, float, str, str, int]] = field(default_factory=list)
    # Imports (id -> import), and how long one takes from Ready to Complete.
    imports: dict[int, dict[str, Any]] = field(default_factory=dict)
    next_import_id: int = 1
    import_seconds: float = 0.2
    # Prospects whose import rows fail (as a row locked by another job would), once each.
    import_row_faults: set[int] = field(default_factory=set)
    # The connector user's role lacks the Import ability: creating an import is refused (403).
    imports_refused: bool = False
    _import_tasks: set[asyncio.Task[None]] = field(default_factory=set, repr=False)

    def add_business_unit(self, business_unit_id: str, org_id: str) -> None:
        self.business_units[business_unit_id] = org_id

    def add_user(
        self,
        email: str,
        *,
        first_name: str = "",
        last_name: str = "",
        is_active: bool = True,
        salesforce_id: str | None = None,
        user_id: int | None = None,
    ) -> dict[str, Any]:
        user_id = user_id if user_id is not None else self.next_user_id
        self.next_user_id = max(self.next_user_id, user_id + 1)
        user = {
            "id": user_id,
            "email": email,
            "firstName": first_name,
            "lastName": last_name,
            "isActive": is_active,
            "salesforceId": salesforce_id,
        }
        self.users[user_id] = user
        return user

    def add_prospect(
        self,
        email: str | None,
        *,
        assigned_user_id: int | None = None,
        assigned_queue_id: str | None = None,
        salesforce_id: str | None = None,
        prospect_id: int | None = None,
    ) -> dict[str, Any]:
        prospect_id = prospect_id if prospect_id is not None else self.next_prospect_id
        self.next_prospect_id = max(self.next_prospect_id, prospect_id + 1)
        stamp = _now()
        prospect = {
            "id": prospect_id,
            "email": email,
            "assignedUserId": assigned_user_id,
            "assignedQueueId": assigned_queue_id,
            "salesforceId": salesforce_id,
            "createdAt": stamp,
            "updatedAt": stamp,
        }
        self.prospects[prospect_id] = prospect
        return prospect

    def calls(self, method: str | None = None, path: str | None = None) -> list[int]:
        """Statuses of the logged calls matching `method` and `path` (None matches any)."""
        return [
            status
            for logged_method, logged_path, status in self.call_log
            if method in (None, logged_method) and path in (None, logged_path)
        ]

    def mean_in_flight(self) -> float:
        """Calls in flight on average, from the first call's arrival to the last answer."""
        if not self.timed_calls:
            return 0.0
        start = min(call[0] for call in self.timed_calls)
        end = max(call[1] for call in self.timed_calls)
        busy = sum(call[1] - call[0] for call in self.timed_calls)
        return busy / (end - start) if end > start else 0.0

    def reset(self) -> None:
        self.prospects.clear()
        self.users.clear()
        self.next_prospect_id = 5001
        self.next_user_id = 1001
        self.imports.clear()
        self.next_import_id = 1
        self.faults.clear()
        self.reset_counts()
        self.calls_today = 0

    def reset_counts(self) -> None:
        """Forget the calls seen so far (prospects, users and faults stay)."""
        self.call_log.clear()
        self.timed_calls.clear()
        self.connections.clear()
        self.max_in_flight = self.in_flight
        self.max_in_flight_by_unit = Counter(self.in_flight_by_unit)

    def snapshot(self) -> dict[str, Any]:
        return {
            "prospects": list(self.prospects.values()),
            "users": list(self.users.values()),
            "callsToday": self.calls_today,
            "callCounts": {
                f"{method} {path} {status}": count
                for (method, path, status), count in Counter(self.call_log).items()
            },
            "callLog": [list(call) for call in self.call_log],
            "maxInFlight": self.max_in_flight,
            "maxInFlightByUnit": dict(self.max_in_flight_by_unit),
            "connections": len(self.connections),
            "timedCalls": [list(call) for call in self.timed_calls],
            "imports": [
                {k: v for k, v in imp.items() if k not in {"rows", "errors", "columns"}}
                for imp in self.imports.values()
            ],
        }


# --- request bodies -------------------------------------------------------------------------


class _AeBody(BaseModel):
    # AE refuses fields it does not know instead of ignoring them.
    model_config = ConfigDict(extra="forbid")


class ProspectCreate(_AeBody):
    email: str | None = None
    assignedUserId: int | None = None
    assignedQueueId: str | None = None
    salesforceId: str | None = None


class ProspectUpdate(_AeBody):
    email: str | None = None
    assignedUserId: int | None = None
    assignedQueueId: str | None = None
    salesforceId: str | None = None


class SeedProspect(ProspectCreate):
    id: int | None = Field(default=None, ge=1)


class FaultSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    latency_ms: float | None = Field(default=None, ge=0)
    latency_max_ms: float | None = Field(
        default=None, ge=0, description="draw each call's latency from [latency_ms, this]"
    )
    fail_next: int | None = Field(default=None, ge=0)
    fail_status: int | None = Field(default=None, ge=400, le=599)
    failure_rate: float | None = Field(default=None, ge=0, le=1)
    retry_after: str | None = Field(
        default=None, max_length=64, description="Retry-After of the failures: seconds or a date"
    )
    seed: int | None = None
    lose_answers_after_apply: int | None = Field(
        default=None, ge=0, description="The next N writes are applied, then their answer lost."
    )
    lost_answer: LostAnswer | None = None
    lost_answer_hold_ms: int | None = Field(default=None, ge=0)
    import_seconds: float | None = Field(
        default=None, ge=0, description="how long an import takes from Ready to Complete"
    )


# --- rules ----------------------------------------------------------------------------------


def _validate_assignment(state: AeSimState, changes: dict[str, Any]) -> None:
    if changes.get("assignedUserId") is not None and changes.get("assignedQueueId") is not None:
        raise AeApiError(
            400, CODE_INVALID_REQUEST, "assignedUserId and assignedQueueId are exclusive"
        )
    user_id = changes.get("assignedUserId")
    if user_id is not None and user_id not in state.users:
        raise AeApiError(400, CODE_INVALID_REQUEST, f"Invalid assignedUserId {user_id}")
    email = changes.get("email")
    if email is not None and "@" not in email:
        raise AeApiError(400, CODE_INVALID_REQUEST, f"Invalid email {email!r}")


def _apply_update(prospect: dict[str, Any], changes: dict[str, Any]) -> None:
    prospect.update(changes)
    # A prospect has one owner: a user or a SF queue, never both.
    if changes.get("assignedUserId") is not None:
        prospect["assignedQueueId"] = None
    if changes.get("assignedQueueId") is not None:
        prospect["assignedUserId"] = None
    prospect["updatedAt"] = _now()


def _project(record: dict[str, Any], fields: str | None) -> dict[str, Any]:
    if fields is None:
        return dict(record)
    wanted = [name.strip() for name in fields.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in record]
    if unknown:
        raise AeApiError(400, CODE_INVALID_REQUEST, f"Unknown fields: {', '.join(unknown)}")
    return {name: record[name] for name in wanted}


def _page(
    records: list[dict[str, Any]], fields: str | None, limit: int, token: str | None
) -> dict[str, Any]:
    try:
        start = int(token) if token else 0
    except ValueError:
        raise AeApiError(400, CODE_INVALID_REQUEST, "Invalid nextPageToken") from None
    end = start + limit
    return {
        "values": [_project(record, fields) for record in records[start:end]],
        "nextPageToken": str(end) if end < len(records) else None,
    }


def _get_prospect(state: AeSimState, prospect_id: int) -> dict[str, Any]:
    prospect = state.prospects.get(prospect_id)
    if prospect is None:
        raise AeApiError(404, CODE_INVALID_PROSPECT_ID, f"Invalid prospect ID {prospect_id}")
    return prospect


def _sim(request: Request) -> AeSimState:
    state: AeSimState = request.app.state.sim
    return state


# --- routes ---------------------------------------------------------------------------------


def _api_router() -> APIRouter:
    router = APIRouter(prefix=API_PREFIX)
    page_size = Query(DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)
    page_token = Query(None, alias="nextPageToken")

    @router.post("/prospects", status_code=201)
    async def create_prospect(
        request: Request, body: ProspectCreate, fields: str | None = None
    ) -> dict[str, Any]:
        state = _sim(request)
        values = body.model_dump()
        _validate_assignment(state, values)
        prospect = state.add_prospect(
            values["email"],
            assigned_user_id=values["assignedUserId"],
            assigned_queue_id=values["assignedQueueId"],
            salesforce_id=values["salesforceId"],
        )
        return _project(prospect, fields)

    @router.patch("/prospects/{prospect_id}")
    async def update_prospect(
        request: Request, prospect_id: int, body: ProspectUpdate, fields: str | None = None
    ) -> dict[str, Any]:
        state = _sim(request)
        prospect = _get_prospect(state, prospect_id)
        changes = body.model_dump(exclude_unset=True)
        _validate_assignment(state, changes)
        _apply_update(prospect, changes)
        return _project(prospect, fields)

    @router.get("/prospects/{prospect_id}")
    async def read_prospect(
        request: Request, prospect_id: int, fields: str | None = None
    ) -> dict[str, Any]:
        return _project(_get_prospect(_sim(request), prospect_id), fields)

    @router.get("/prospects")
    async def query_prospects(
        request: Request,
        email: str | None = None,
        salesforce_id: str | None = Query(None, alias="salesforceId"),
        fields: str | None = None,
        limit: int = page_size,
        next_page_token: str | None = page_token,
    ) -> dict[str, Any]:
        prospects = [
            p
            for p in _sim(request).prospects.values()
            if (email is None or (p["email"] or "").lower() == email.lower())
            and (salesforce_id is None or p["salesforceId"] == salesforce_id)
        ]
        return _page(prospects, fields, limit, next_page_token)

    @router.get("/users")
    async def query_users(
        request: Request,
        fields: str | None = None,
        limit: int = page_size,
        next_page_token: str | None = page_token,
    ) -> dict[str, Any]:
        return _page(list(_sim(request).users.values()), fields, limit, next_page_token)

    return router


# --- imports ----------------------------------------------------------------------------------


class ImportSpec(_AeBody):
    operation: str
    object: str
    createOnNoMatch: bool = True
    state: str | None = None
    status: str | None = None


class ImportUpdate(_AeBody):
    status: str


_IMPORT_VIEW = (
    "id",
    "operation",
    "object",
    "status",
    "isExpired",
    "createdCount",
    "updatedCount",
    "errorCount",
    "createdAt",
    "updatedAt",
)


def _import_view(imp: dict[str, Any]) -> dict[str, Any]:
    return {name: imp[name] for name in _IMPORT_VIEW}


def _read_csv(text: str) -> tuple[list[str], list[dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(text))
    columns = list(reader.fieldnames or [])
    known = set(IMPORT_MATCH_COLUMNS) | set(IMPORT_FIELD_COLUMNS)
    unknown = [c for c in columns if c not in known]
    if not columns or unknown:
        raise AeApiError(400, CODE_INVALID_REQUEST, f"Invalid CSV columns: {unknown or columns}")
    return columns, list(reader)


async def _upload(request: Request) -> tuple[dict[str, Any] | None, str | None]:
    """The `input` JSON part and the `importFile` CSV part of a multipart request."""
    form = await request.form()
    raw_input, upload = form.get("input"), form.get("importFile")
    spec = None
    if raw_input is not None:
        text = raw_input if isinstance(raw_input, str) else (await raw_input.read()).decode()
        try:
            spec = json.loads(text)
        except ValueError:
            raise AeApiError(400, CODE_INVALID_REQUEST, "input is not JSON") from None
    content = None
    if upload is not None:
        content = upload if isinstance(upload, str) else (await upload.read()).decode()
    return spec, content


def _import_row(state: AeSimState, row: dict[str, str], create: bool) -> str | None:
    """Apply one import row; the error that kept it out, if one did."""
    matches = [c for c in IMPORT_MATCH_COLUMNS if row.get(c)]
    if len(matches) > 1:
        return "Only one match column may have a value"
    prospect = None
    if matches == ["matchId"]:
        try:
            prospect = state.prospects.get(int(row["matchId"]))
        except ValueError:
            return f"Invalid prospect ID {row['matchId']}"
    elif matches:
        wanted = row[matches[0]]
        key = "salesforceId" if matches[0] == "matchSalesforceId" else "email"
        prospect = next((p for p in state.prospects.values() if p[key] == wanted), None)
    if prospect is None and not create:
        return "No matching prospect found"
    changes: dict[str, Any] = {}
    if "assignedUserId" in row:
        user = row["assignedUserId"]
        if not user:
            return "Un-assigning prospects is not supported through Import"
        try:
            user_id = int(user)
        except ValueError:
            return f"Invalid assignedUserId {user}"
        if user_id not in state.users:
            return f"User not found: assignedUserId {user_id}"
        changes["assignedUserId"] = user_id
    for name in ("email", "salesforceId"):
        if name in row:
            changes[name] = row[name] or None
    if prospect is None:
        state.add_prospect(changes.get("email"), assigned_user_id=changes.get("assignedUserId"))
        return None
    _apply_update(prospect, changes)
    return None


async def _process_import(state: AeSimState, imp: dict[str, Any]) -> None:
    """What AE does once an import is Ready: queue it, then apply its rows."""
    step = state.import_seconds / 2
    imp["status"] = "Waiting"
    await asyncio.sleep(step)
    imp["status"], imp["updatedAt"] = "Processing", _now()
    await asyncio.sleep(step)
    created = updated = 0
    for row in imp["rows"]:
        before = len(state.prospects)
        if (faulty := row.get("matchId", "")).isdigit() and int(faulty) in state.import_row_faults:
            state.import_row_faults.discard(int(faulty))
            imp["errors"].append({**row, "error": "simulated row fault: the prospect was busy"})
            continue
        error = _import_row(state, row, imp["createOnNoMatch"])
        if error is not None:
            imp["errors"].append({**row, "error": error})
        elif len(state.prospects) > before:
            created += 1
        else:
            updated += 1
    imp.update(
        status="Complete",
        createdCount=created,
        updatedCount=updated,
        errorCount=len(imp["errors"]),
        updatedAt=_now(),
    )


def _submit(state: AeSimState, imp: dict[str, Any]) -> None:
    if imp["status"] != "Open":
        raise AeApiError(400, CODE_INVALID_REQUEST, f"Import {imp['id']} is {imp['status']}")
    if not imp["rows"]:
        raise AeApiError(400, CODE_INVALID_REQUEST, f"Import {imp['id']} has no batch")
    imp["status"] = "Ready"
    task = asyncio.create_task(_process_import(state, imp))
    state._import_tasks.add(task)
    task.add_done_callback(state._import_tasks.discard)


def _get_import(state: AeSimState, import_id: int) -> dict[str, Any]:
    imp = state.imports.get(import_id)
    if imp is None:
        raise AeApiError(404, CODE_INVALID_REQUEST, f"Invalid import ID {import_id}")
    return imp


def _imports_router() -> APIRouter:
    router = APIRouter(prefix=IMPORTS_PREFIX)

    @router.post("", status_code=201)
    async def create_import(request: Request) -> dict[str, Any]:
        state = _sim(request)
        if state.imports_refused:
            raise AeApiError(403, CODE_INVALID_REQUEST, "the user's role may not import prospects")
        raw, content = await _upload(request)
        try:
            spec = ImportSpec.model_validate(raw)
        except ValueError as exc:
            raise AeApiError(400, CODE_INVALID_REQUEST, f"input: {exc}") from None
        if spec.operation != "Upsert" or spec.object != "Prospect":
            raise AeApiError(400, CODE_INVALID_REQUEST, "only Upsert of Prospect is supported")
        columns, rows = _read_csv(content) if content is not None else ([], [])
        stamp = _now()
        imp = {
            "id": state.next_import_id,
            "operation": spec.operation,
            "object": spec.object,
            "status": "Open",
            "isExpired": False,
            "createdCount": 0,
            "updatedCount": 0,
            "errorCount": 0,
            "createdAt": stamp,
            "updatedAt": stamp,
            "createOnNoMatch": spec.createOnNoMatch,
            "columns": columns,
            "rows": rows,
            "errors": [],
        }
        state.imports[state.next_import_id] = imp
        state.next_import_id += 1
        if "Ready" in (spec.state, spec.status):
            _submit(state, imp)
        return _import_view(imp)

    @router.post("/{import_id}/batches", status_code=201)
    async def add_batch(request: Request, import_id: int) -> dict[str, Any]:
        state = _sim(request)
        imp = _get_import(state, import_id)
        if imp["status"] != "Open":
            raise AeApiError(400, CODE_INVALID_REQUEST, f"Import {import_id} is not Open")
        _, content = await _upload(request)
        if content is None:
            raise AeApiError(400, CODE_INVALID_REQUEST, "importFile is required")
        columns, rows = _read_csv(content)
        if imp["columns"] and columns != imp["columns"]:
            raise AeApiError(400, CODE_INVALID_REQUEST, "every batch needs the same columns")
        imp["columns"] = columns
        imp["rows"].extend(rows)
        return _import_view(imp)

    @router.patch("/{import_id}")
    async def update_import(
        request: Request, import_id: int, body: ImportUpdate, fields: str | None = None
    ) -> dict[str, Any]:
        state = _sim(request)
        imp = _get_import(state, import_id)
        if body.status != "Ready":
            raise AeApiError(400, CODE_INVALID_REQUEST, "status may only be set to Ready")
        _submit(state, imp)
        return _project(_import_view(imp), fields)

    @router.get("/{import_id}")
    async def read_import(
        request: Request, import_id: int, fields: str | None = None
    ) -> dict[str, Any]:
        return _project(_import_view(_get_import(_sim(request), import_id)), fields)

    @router.get("/{import_id}/errors")
    async def import_errors(request: Request, import_id: int) -> Response:
        imp = _get_import(_sim(request), import_id)
        if imp["status"] != "Complete":
            raise AeApiError(400, CODE_INVALID_REQUEST, f"Import {import_id} is not Complete")
        out = io.StringIO()
        writer = csv.DictWriter(out, [*imp["columns"], "error"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(imp["errors"])
        return Response(out.getvalue(), media_type="text/csv")

    return router


def _seed(state: AeSimState, seed: SeedProspect) -> dict[str, Any]:
    return state.add_prospect(
        seed.email,
        assigned_user_id=seed.assignedUserId,
        assigned_queue_id=seed.assignedQueueId,
        salesforce_id=seed.salesforceId,
        prospect_id=seed.id,
    )


def _control_router() -> APIRouter:
    router = APIRouter(prefix="/_sim")

    @router.post("/faults")
    async def set_faults(request: Request, settings: FaultSettings) -> dict[str, Any]:
        state = _sim(request)
        faults = state.faults
        wanted = settings.model_dump(exclude_unset=True)
        if (seconds := wanted.pop("import_seconds", None)) is not None:
            state.import_seconds = seconds
        faults.configure(**wanted)
        return {
            "latency_ms": faults.latency_ms,
            "latency_max_ms": faults.latency_max_ms,
            "fail_next": faults.fail_next,
            "fail_status": faults.fail_status,
            "failure_rate": faults.failure_rate,
            "retry_after": faults.retry_after,
            "seed": faults.seed,
            "lose_answers_after_apply": faults.lose_answers_after_apply,
            "lost_answer": faults.lost_answer,
            "lost_answer_hold_ms": faults.lost_answer_hold_ms,
            "answers_lost": faults.answers_lost,
        }

    @router.post("/prospects", status_code=201)
    async def seed_prospect(request: Request, body: SeedProspect) -> dict[str, Any]:
        """A prospect made in AE itself (by a form, an import), outside the API and its log."""
        return _seed(_sim(request), body)

    @router.post("/prospects/many", status_code=201)
    async def seed_prospects(request: Request, body: list[SeedProspect]) -> dict[str, int]:
        """Many prospects made in AE itself at once (a benchmark's starting point)."""
        state = _sim(request)
        for seed in body:
            _seed(state, seed)
        return {"count": len(body)}

    @router.get("/state")
    async def dump_state(request: Request) -> dict[str, Any]:
        return _sim(request).snapshot()

    @router.post("/reset", status_code=204)
    async def reset(request: Request) -> Response:
        _sim(request).reset()
        return Response(status_code=204)

    return router


# --- the gate every API call goes through, in AE's order ----------------------------------


def _check_auth(state: AeSimState, request: Request) -> JSONResponse | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return _error_response(401, CODE_INVALID_TOKEN, "Missing or malformed bearer token")
    grant = None
    if state.tokens is not None:
        grant = state.tokens.grant(token)
        if grant is None:
            return _error_response(401, CODE_INVALID_TOKEN, "Invalid or expired access token")
        if "pardot_api" not in grant.scopes:
            return _error_response(
                401, CODE_INVALID_TOKEN, "The access token lacks the pardot_api scope"
            )
    business_unit = request.headers.get("pardot-business-unit-id", "").strip()
    if not business_unit:
        return _error_response(
            400, CODE_MISSING_BUSINESS_UNIT, "Pardot-Business-Unit-Id header is required"
        )
    if grant is not None and state.business_units.get(business_unit) != grant.org_id:
        return _error_response(
            401,
            CODE_INVALID_TOKEN,
            f"Business unit {business_unit} is not accessible with this access token",
        )
    return None


def _check_quota(state: AeSimState, _: Request) -> JSONResponse | None:
    if state.calls_today >= state.daily_quota:
        return _error_response(429, CODE_DAILY_LIMIT, "Daily API rate limit met")
    state.calls_today += 1
    return None


def _check_faults(state: AeSimState, _: Request) -> JSONResponse | None:
    status = state.faults.next_failure()
    if status is None:
        return None
    if status == 429:
        failed = _error_response(
            429, CODE_CONCURRENT_LIMIT, "concurrent requests limit (simulated)"
        )
    else:
        failed = _error_response(status, CODE_SIMULATED_FAULT, f"simulated fault {status}")
    if state.faults.retry_after is not None:
        failed.headers["Retry-After"] = state.faults.retry_after
    return failed


async def _gate(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    if not request.url.path.startswith(GATED_PREFIX):
        return await call_next(request)
    state = _sim(request)
    arrived = time.time()
    unit = request.headers.get("pardot-business-unit-id", "").strip()
    if request.client is not None:
        state.connections.add((request.client.host, request.client.port))
    state.in_flight += 1
    state.max_in_flight = max(state.max_in_flight, state.in_flight)
    state.in_flight_by_unit[unit] += 1
    state.max_in_flight_by_unit[unit] = max(
        state.max_in_flight_by_unit[unit], state.in_flight_by_unit[unit]
    )
    try:
        response = await _admit(state, request, call_next)
    finally:
        state.in_flight -= 1
        state.in_flight_by_unit[unit] -= 1
    state.call_log.append((request.method, request.url.path, response.status_code))
    state.timed_calls.append(
        (arrived, time.time(), request.method, request.url.path, response.status_code)
    )
    return response


async def _admit(
    state: AeSimState, request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    if state.in_flight > state.max_concurrent:
        return _error_response(429, CODE_CONCURRENT_LIMIT, "concurrent requests limit")
    # Latency is spent while holding a concurrency slot, as a slow AE would.
    latency = state.faults.latency()
    if latency > 0:
        await asyncio.sleep(latency)
    for check in (_check_auth, _check_quota, _check_faults):
        refusal = check(state, request)
        if refusal is not None:
            return refusal
    return await call_next(request)


async def _ae_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AeApiError)
    return _error_response(exc.status, exc.code, exc.message)


async def _validation_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = "; ".join(
        f"{'.'.join(str(part) for part in err['loc'])}: {err['msg']}" for err in exc.errors()
    )
    return _error_response(400, CODE_INVALID_REQUEST, problems)


def _faults_of(scope: Scope) -> AnswerLoss:
    faults: AeSimFaults = scope["app"].state.sim.faults
    return faults


def _is_write(scope: Scope) -> bool:
    return scope["path"].startswith(GATED_PREFIX) and scope["method"] in {"POST", "PATCH"}


def create_ae_app(state: AeSimState | None = None) -> FastAPI:
    app = FastAPI(title="AE API v5 simulator")
    app.state.sim = state if state is not None else AeSimState()
    app.include_router(_api_router())
    app.include_router(_imports_router())
    app.include_router(_control_router())
    app.middleware("http")(_gate)
    # Outermost: the write has gone through every check and been applied when its answer is lost.
    app.add_middleware(
        LoseAnswers,
        faults=_faults_of,
        is_write=_is_write,
        server_error=(
            500,
            json.dumps(
                {"code": CODE_SIMULATED_FAULT, "message": "simulated fault 500 after the write"}
            ).encode(),
        ),
    )
    app.add_exception_handler(AeApiError, _ae_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_error_handler)
    return app
