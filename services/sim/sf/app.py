"""The simulated org over HTTP: the OAuth and REST routes ownersync calls, and the `/_sim`
control routes with their fault switches. The app's lifespan runs the outbound messenger."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.types import Scope

from services.common.sfid import InvalidSalesforceId, to18
from services.sim.lost_answers import AnswerLoss, LoseAnswers, LostAnswer
from services.sim.sf.org import CallRecord, SfSimError, SfSimState
from services.sim.sf.soap import SObjectType

_API_VERSION = re.compile(r"^v\d+\.\d$")
_SOBJECTS: dict[str, SObjectType] = {"lead": "Lead", "contact": "Contact"}


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
        raise SfSimError.not_found()
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
                "scope": " ".join(sorted(sim.oauth_scopes)),
                "issued_at": str(int(time.time() * 1000)),
            }
        )

    return router


def _oauth_error(error: str, description: str) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status_code=400)


def _rest_router() -> APIRouter:
    router = APIRouter(prefix="/services/data/{version}/sobjects")

    @router.get("/User/{user_id}")
    async def read_user(version: str, user_id: str, sim: ApiSim) -> JSONResponse:
        user_id = _user_id(user_id)
        found = sim.users.get(user_id)
        if found is None or not _API_VERSION.match(version):
            raise SfSimError.not_found()
        url = f"/services/data/{version}/sobjects/User/{user_id}"
        return JSONResponse(
            {
                "attributes": {"type": "User", "url": url},
                "Id": user_id,
                "Name": found.name,
                "Email": found.email,
                "IsActive": found.is_active,
            }
        )

    @router.get("/{name}/describe")
    async def describe(version: str, name: str, sim: ApiSim) -> JSONResponse:
        return JSONResponse(sim.describe(_sobject(name, version)))

    @router.patch("/{name}/{field}/{value}")
    async def upsert(
        version: str, name: str, field: str, value: str, request: Request, sim: ApiSim
    ) -> JSONResponse:
        """Upsert through an External ID: 201 when created, 200 when an existing record was
        updated (Salesforce answers so from API version 46.0)."""
        sobject = _sobject(name, version)
        fields = await _json_fields(request)
        record, created = sim.upsert_record(
            sobject, field, value, fields, auto_assign=_auto_assign(request)
        )
        return JSONResponse(
            {"id": record["Id"], "success": True, "errors": [], "created": created},
            status_code=201 if created else 200,
        )

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


def _query_router() -> APIRouter:
    router = APIRouter(prefix="/services/data/{version}")

    @router.get("/query")
    async def query(version: str, q: str, sim: ApiSim) -> JSONResponse:
        if not _API_VERSION.match(version):
            raise SfSimError.not_found()
        records = sim.query(q)
        return JSONResponse({"totalSize": len(records), "done": True, "records": records})

    return router


def _user_id(raw: str) -> str:
    try:
        return to18(raw)
    except InvalidSalesforceId:
        message = f"User ID: id value of incorrect type: {raw}"
        raise SfSimError(400, "MALFORMED_ID", message) from None


class OAuthSettings(BaseModel):
    """The connected app as an admin changes it in SF's setup; fields left out stay as they are."""

    rotate_client_secret: bool = Field(False, description="A new secret; the old one refused.")
    client_secret: str | None = Field(None, min_length=1, description="Set this secret.")
    revoke_client_secret: bool = Field(False, description="Refuse every token request.")
    revoke_tokens: bool = Field(False, description="The org's tokens answer 401 at once.")
    expire_tokens: bool = Field(False, description="The org's tokens run out of time now.")
    scopes: list[str] | None = Field(None, description="The scopes new tokens carry.")


def _apply_oauth(state: SfSimState, settings: OAuthSettings) -> dict[str, Any]:
    if settings.scopes is not None:
        state.oauth_scopes = frozenset(settings.scopes)
    if settings.client_secret is not None or settings.rotate_client_secret:
        state.rotate_client_secret(settings.client_secret)
    if settings.revoke_client_secret:
        state.revoke_client_secret()
    if settings.revoke_tokens:
        state.revoke_tokens()
    if settings.expire_tokens:
        state.expire_tokens()
    # The simulator's setup page: like SF's, it shows the consumer secret to its admin.
    return {
        "client_id": state.client_id,
        "client_secret": state.client_secret,
        "scopes": sorted(state.oauth_scopes),
        "live_tokens": state.tokens.live(state.org_id),
    }


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
    lose_answers_after_apply: int | None = Field(
        None, ge=0, description="The next N writes are applied, then their answer is lost."
    )
    lost_answer: LostAnswer | None = Field(
        None, description="How: the connection drops, a 500 comes back, or it comes too late."
    )
    lost_answer_hold_ms: int | None = Field(
        None, ge=0, description="How long a `timeout` keeps the caller waiting."
    )
    outbound_duplicate: bool | None = Field(None, description="Deliver every message twice.")
    outbound_reorder: bool | None = Field(None, description="Deliver out of write order.")
    outbound_batch_window_ms: int | None = Field(None, ge=0)


def _apply_faults(state: SfSimState, settings: FaultSettings) -> dict[str, Any]:
    switches = (
        "latency_ms",
        "request_limit_exceeded",
        "server_errors",
        "invalid_session",
        "lose_answers_after_apply",
        "lost_answer",
        "lost_answer_hold_ms",
    )
    for name in switches:
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


class SchemaSettings(BaseModel):
    """The org's custom fields as an admin sets them up."""

    external_id_fields: list[str] = Field(
        description="The External ID fields of leads and contacts (e.g. OwnersyncKey__c)."
    )


def _control_router() -> APIRouter:
    router = APIRouter(prefix="/_sim", tags=["simulator control"])

    @router.post("/schema")
    async def schema(settings: SchemaSettings, sim: Sim) -> dict[str, Any]:
        sim.external_id_fields = set(settings.external_id_fields)
        return {"external_id_fields": sorted(sim.external_id_fields)}

    @router.post("/faults")
    async def faults(settings: FaultSettings, sim: Sim) -> dict[str, Any]:
        return _apply_faults(sim, settings)

    @router.post("/oauth")
    async def oauth(settings: OAuthSettings, sim: Sim) -> dict[str, Any]:
        return _apply_oauth(sim, settings)

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
    app.include_router(_query_router())
    app.include_router(_control_router())
    # Outermost: the write has gone through every check and been applied when its answer is lost.
    app.add_middleware(
        LoseAnswers,
        faults=_faults_of,
        is_write=_is_write,
        server_error=(500, json.dumps(_UNKNOWN_EXCEPTION).encode()),
    )
    return app


_UNKNOWN_EXCEPTION = [
    {"message": "An unexpected error occurred.", "errorCode": "UNKNOWN_EXCEPTION", "fields": []}
]


def _faults_of(scope: Scope) -> AnswerLoss:
    state: SfSimState = scope["app"].state.sim
    return state.faults


def _is_write(scope: Scope) -> bool:
    return scope["path"].startswith("/services/data/") and scope["method"] in {"POST", "PATCH"}
