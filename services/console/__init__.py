"""The operator console, `/console`: server-rendered pages (Jinja2, htmx) over the same admin
service layer as the /v1 API and the CLI, signed in with a tenant API key.

Everything it loads is served from here (`/console/static`): no asset comes from elsewhere.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from services.console.pages import render, router
from services.console.session import PATH, Refused, SignInNeeded

STATIC = Path(__file__).parent / "static"


def install_console(app: FastAPI) -> None:
    """Add the console's pages, its static files and its two refusals to `app`."""
    app.include_router(router)
    app.mount(f"{PATH}/static", StaticFiles(directory=STATIC), name="console-static")

    @app.exception_handler(SignInNeeded)
    async def _sign_in(request: Request, exc: SignInNeeded) -> Response:
        if request.headers.get("hx-request"):
            # htmx follows this with a full page load, not a swap into the current page.
            return Response(status_code=204, headers={"HX-Redirect": f"{PATH}/sign-in"})
        return RedirectResponse(f"{PATH}/sign-in", status_code=303)

    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused) -> Response:
        return render(request, "refused.html", {"message": exc.message, "page": ""}, status=403)
