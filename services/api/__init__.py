"""The internal REST API, `/v1`: tenants, users, connected users, user sync, queues and
groups, records and their audit, assignment requests, reconcile, dead letters, effects.

Every route is typed (unknown fields refused), lists are paginated, errors have one shape, and
the routes call the same service layer as the CLI (`services.admin`). Its own OpenAPI
document is served at `/v1/openapi.json` (docs at `/v1/docs`); the app's `/docs` shows it too.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from services.api import (
    connections,
    dead_letters,
    effects,
    groups,
    mappings,
    operations,
    records,
    tenants,
    users,
)
from services.api.errors import PREFIX, install_error_handlers, responses
from services.api.guard import ApiGuard

TAGS = [
    {"name": "tenants", "description": "Tenants, connector settings, webhook secret, API keys"},
    {"name": "connections", "description": "Each tenant's SF org and AE business unit"},
    {"name": "sf users", "description": "Salesforce users of a tenant"},
    {"name": "ae users", "description": "Account Engagement users of a tenant"},
    {"name": "connected users", "description": "AE user <-> SF user mappings and user sync"},
    {"name": "queues", "description": "SF lead queues AE may assign to"},
    {"name": "groups", "description": "Round-robin groups of AE users"},
    {"name": "records", "description": "Records and their audit timeline"},
    {"name": "operations", "description": "Assignment requests and reconcile"},
    {"name": "dead letters", "description": "Events that could not be applied"},
    {"name": "effects", "description": "Effects to SF and AE not sent yet, or dead; discard"},
]


def v1_router() -> APIRouter:
    router = APIRouter(prefix=PREFIX, responses=responses(401, 403, 404, 413, 422, 429))
    modules = (
        tenants,
        connections,
        users,
        mappings,
        groups,
        records,
        operations,
        dead_letters,
        effects,
    )
    for module in modules:
        router.include_router(module.router)
    return router


DESCRIPTION = (
    "Send `Authorization: Bearer <key>`. Scopes: `read` (every GET), `write` (users, "
    "mappings, user sync, queues, groups, assignment requests, reconcile, effect discard; "
    "includes `read`), "
    "`admin` (connector settings, connections, webhook secret, API keys, dead-letter replay and "
    "discard; includes `write`). A tenant's key sees only its tenant: any other answers 404. "
    "Lists take `limit` and `cursor` and answer `{items, nextCursor}`; errors are "
    "`{error: {code, message, details}}`; every answer carries an `X-Request-Id`. Bodies are "
    "limited (413) and each key has a request rate (429 with `Retry-After`)."
)


def _described(router: APIRouter) -> FastAPI:
    """An app that holds the /v1 routes and nothing else: its OpenAPI is the API's own."""
    described = FastAPI(
        title="ownersync internal API",
        version="1",
        summary="Connected users, user sync, audit trail, reconcile and dead letters",
        description=DESCRIPTION,
        openapi_tags=TAGS,
    )
    described.include_router(router)
    return described


def openapi_document() -> dict[str, Any]:
    """The document `/v1/openapi.json` serves."""
    return _described(v1_router()).openapi()


def install_api(app: FastAPI) -> None:
    """Add the /v1 routes, their guard, their error handlers and their own OpenAPI document
    to `app`."""
    router = v1_router()
    app.include_router(router)
    app.add_middleware(ApiGuard)
    install_error_handlers(app)
    described = _described(router)

    @app.get(f"{PREFIX}/openapi.json", include_in_schema=False)
    async def openapi_v1() -> JSONResponse:
        return JSONResponse(described.openapi())

    @app.get(f"{PREFIX}/docs", include_in_schema=False)
    async def docs_v1() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=f"{PREFIX}/openapi.json", title="ownersync API v1")
