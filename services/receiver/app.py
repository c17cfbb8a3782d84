"""The receiver's routes: SF outbound messages, AE webhooks, health and metrics.

`services.bootstrap.create_app` composes them with the /v1 API into the served app.
"""

from __future__ import annotations

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text

from services.common.metrics import metrics_response
from services.common.web import BodyTooLarge, RuntimeDep
from services.receiver import engagement, salesforce
from services.receiver.errors import error_response
from services.receiver.soap import fault_body


def install_receiver(app: FastAPI) -> None:
    """Add the SF and AE endpoints, `/healthz`, `/readyz` and `/metrics` to `app`."""
    app.include_router(salesforce.router)
    app.include_router(engagement.router)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, exc: BodyTooLarge) -> Response:
        if request.url.path.startswith("/salesforce/"):
            return Response(fault_body(str(exc.detail)), 413, media_type=salesforce.SOAP_MEDIA)
        return error_response(413, "body_too_large", str(exc.detail))

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics", include_in_schema=False)
    async def metrics() -> Response:
        return metrics_response()

    @app.get("/healthz", tags=["health"], summary="The process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="The database and the broker answer")
    async def readyz(runtime: RuntimeDep) -> JSONResponse:
        checks = {"database": "ok", "broker": "ok"}
        try:
            async with runtime.engine.connect() as conn:
                await conn.execute(text("select 1"))
        except Exception as exc:
            checks["database"] = f"down: {exc.__class__.__name__}"
        if not await runtime.broker.ping():
            checks["broker"] = "down"
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse({"ready": ready, **checks}, status_code=200 if ready else 503)
