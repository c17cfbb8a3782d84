"""Errors of the /v1 API, all as `{"error": {"code", "message", "details"}}`.

Only paths under /v1 get this treatment: the SF endpoint answers SOAP faults and the AE
webhook endpoint its own JSON, and both keep FastAPI's default handlers.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.admin.errors import AdminError, Conflict, Invalid, NotFound, Unavailable
from services.admin.schemas import ErrorResponse

log = logging.getLogger("ownersync.api")
PREFIX = "/v1"


class Unauthorized(AdminError):
    code = "unauthorized"


class Forbidden(AdminError):
    code = "forbidden"


STATUS: dict[type[AdminError], int] = {
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    Invalid: 422,
    Unavailable: 503,
}
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}


def error_json(status: int, code: str, message: str, details: Any = None) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": jsonable_encoder(details)}}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route can answer."""
    words = {
        401: "No API key, or not a live one",
        403: "The key lacks the scope this route needs",
        404: "Not found (also: a tenant that is not the key's)",
        409: "Conflicts with what is stored",
        413: "The request body is over the size limit (OWNERSYNC_MAX_BODY_BYTES)",
        422: "The request does not validate",
        429: "This key made too many requests; retry after `Retry-After` seconds",
        503: "The broker could not take the request; retry",
    }
    return {s: {"model": ErrorResponse, "description": words[s]} for s in statuses}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AdminError)
    async def _admin_error(request: Request, exc: AdminError) -> Response:
        status = next((s for cls, s in STATUS.items() if isinstance(exc, cls)), 400)
        return error_json(status, exc.code, exc.message, exc.details)

    @app.exception_handler(IntegrityError)
    async def _integrity(request: Request, exc: IntegrityError) -> Response:
        # A concurrent request got there first (the checks before the write passed for both).
        log.warning("integrity error on %s: %s", request.url.path, exc.orig)
        return error_json(409, "conflict", "the change conflicts with a concurrent one; retry")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        if not request.url.path.startswith(PREFIX):
            return await request_validation_exception_handler(request, exc)
        details = [
            {"loc": list(e.get("loc", ())), "message": e.get("msg", ""), "type": e.get("type")}
            for e in exc.errors()
        ]
        return error_json(422, "validation_error", "the request does not validate", details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if not request.url.path.startswith(PREFIX):
            return await http_exception_handler(request, exc)
        if exc.status_code == 400:
            # FastAPI's answer to a body it cannot even decode; malformed JSON is already 422.
            return error_json(
                422, "validation_error", f"the request does not validate: {exc.detail}"
            )
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return error_json(exc.status_code, code, str(exc.detail), None)
