"""The console's routes: each reads or changes through `services.admin`, then renders a page.

A change answers its page again with what happened (a new secret is shown in that answer
only) and tells htmx which URL the page lives at, so a reload never sends the form again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path as FilePath
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection

from services.admin import connections, effects, groups, mappings, reconcile, tenants, user_sync
from services.admin import dead_letters as dl
from services.admin.errors import AdminError
from services.admin.schemas import GroupMemberPut, MappingCreate, SecretRotation
from services.common.runtime import Runtime
from services.common.web import RuntimeDep
from services.console import views
from services.console.session import (
    CSRF_FIELD,
    PATH,
    Admin,
    ConsoleUser,
    Reader,
    Writer,
    end_session,
    keep_sign_in_token,
    sign_in,
    sign_in_form_is_ours,
    sign_in_token,
    start_session,
)

templates = Jinja2Templates(directory=FilePath(__file__).parent / "templates")
router = APIRouter(prefix=PATH, include_in_schema=False)

NAV = (
    ("overview", PATH, "Overview"),
    ("records", f"{PATH}/records", "Records"),
    ("users", f"{PATH}/users", "Connected users"),
    ("round_robin", f"{PATH}/round-robin", "Round robin"),
    ("dead_letters", f"{PATH}/dead-letters", "Dead letters"),
    ("setup", f"{PATH}/setup", "Setup"),
)
URL = {name: url for name, url, _ in NAV}
HEADERS = {
    # Nothing is loaded from elsewhere, no page may frame this one, and no page (some show a
    # secret once) is kept in a cache or named in a Referer.
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}
GroupId = Annotated[int, Path(ge=1, le=9_223_372_036_854_775_807)]
AeUserId = Annotated[int, Path(ge=1, le=9_223_372_036_854_775_807)]
LetterId = Annotated[str, Path(max_length=64, pattern=r"^[A-Za-z0-9-]+$")]
EffectId = Annotated[int, Path(ge=1, le=9_223_372_036_854_775_807)]
Change = Callable[[], Awaitable[tuple[str, dict[str, Any]]]]


def render(
    request: Request,
    template: str,
    context: dict[str, Any],
    *,
    user: ConsoleUser | None = None,
    status: int = 200,
) -> HTMLResponse:
    page = context.get("page", template.removesuffix(".html"))
    response = templates.TemplateResponse(
        request,
        template,
        {"user": user, "nav": NAV, "page": page, "csrf_field": CSRF_FIELD, **context},
        status_code=status,
    )
    response.headers.update(HEADERS)
    return response


async def _load(page: str, request: Request, runtime: Runtime, user: ConsoleUser) -> dict[str, Any]:
    if page == "overview":
        return await views.overview_page(runtime, user)
    if page == "records":
        return await views.records_page(runtime, user, request.query_params.get("q", ""))
    if page == "users":
        return await views.users_page(runtime, user)
    if page == "round_robin":
        return await views.round_robin_page(runtime, user)
    if page == "dead_letters":
        return await views.dead_letters_page(runtime, user)
    return await views.setup_page(runtime, user, str(request.base_url))


async def show(
    request: Request,
    runtime: Runtime,
    user: ConsoleUser,
    page: str,
    *,
    status: int = 200,
    **extra: Any,
) -> HTMLResponse:
    context = await _load(page, request, runtime, user)
    response = render(request, f"{page}.html", {**context, **extra}, user=user, status=status)
    if request.method == "POST":
        response.headers["HX-Replace-Url"] = URL[page]
    return response


async def changed(
    request: Request, runtime: Runtime, user: ConsoleUser, page: str, change: Change
) -> HTMLResponse:
    """Run `change`; show `page` with what it did, or with why it was refused."""
    try:
        notice, extra = await change()
    except AdminError as exc:
        refusal = views.explain(exc)
        return await show(request, runtime, user, page, status=refusal["status"], error=refusal)
    except ValidationError as exc:
        words = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        refusal = {"status": 422, "message": words, "code": "validation_error", "details": None}
        return await show(request, runtime, user, page, status=422, error=refusal)
    return await show(request, runtime, user, page, notice=notice, **extra)


async def _form(request: Request) -> dict[str, str]:
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _blank_is_none(value: str | None) -> str | None:
    return value.strip() or None if value is not None else None


# --- signing in --------------------------------------------------------------------------


def _sign_in_form(request: Request, status: int = 200, **context: Any) -> HTMLResponse:
    token = sign_in_token(request)
    response = render(request, "sign_in.html", {"sign_in_csrf": token, **context}, status=status)
    keep_sign_in_token(request, response, token)
    return response


@router.get("/sign-in")
async def sign_in_page(request: Request) -> HTMLResponse:
    return _sign_in_form(request)


@router.post("/sign-in")
async def sign_in_submit(request: Request, runtime: RuntimeDep) -> Response:
    form = await _form(request)
    key, tenant = form.get("api_key", ""), form.get("tenant", "").strip()
    if not sign_in_form_is_ours(request, form.get(CSRF_FIELD, "")):
        return _sign_in_form(
            request, 403, error="this sign-in form is out of date: try again", tenant=tenant
        )
    user = await sign_in(runtime, key, tenant)
    if user is None:
        words = "that key does not sign in here (unknown, revoked, or not this tenant's)"
        return _sign_in_form(request, 401, error=words, tenant=tenant)
    redirect = RedirectResponse(PATH, status_code=303)
    start_session(request, redirect, runtime, key, user)
    return redirect


@router.post("/sign-out")
async def sign_out(user: Reader) -> Response:
    redirect = RedirectResponse(f"{PATH}/sign-in", status_code=303)
    end_session(redirect)
    return redirect


# --- pages -------------------------------------------------------------------------------


@router.get("")
async def overview_page(request: Request, runtime: RuntimeDep, user: Reader) -> HTMLResponse:
    return await show(request, runtime, user, "overview")


@router.get("/records")
async def records_page(
    request: Request,
    runtime: RuntimeDep,
    user: Reader,
    q: Annotated[str, Query(max_length=254)] = "",
) -> HTMLResponse:
    return await show(request, runtime, user, "records")


@router.get("/users")
async def users_page(request: Request, runtime: RuntimeDep, user: Reader) -> HTMLResponse:
    return await show(request, runtime, user, "users")


@router.get("/round-robin")
async def round_robin_page(request: Request, runtime: RuntimeDep, user: Reader) -> HTMLResponse:
    return await show(request, runtime, user, "round_robin")


@router.get("/dead-letters")
async def dead_letters_page(request: Request, runtime: RuntimeDep, user: Reader) -> HTMLResponse:
    return await show(request, runtime, user, "dead_letters")


@router.get("/setup")
async def setup_page(request: Request, runtime: RuntimeDep, user: Reader) -> HTMLResponse:
    return await show(request, runtime, user, "setup")


# --- connected users ---------------------------------------------------------------------


@router.post("/users/connect")
async def connect_users(request: Request, runtime: RuntimeDep, user: Writer) -> HTMLResponse:
    form = await _form(request)

    async def change() -> tuple[str, dict[str, Any]]:
        wanted = MappingCreate.model_validate(
            {"aeUserId": form.get("ae_user_id"), "sfUserId": form.get("sf_user_id")}
        )
        async with runtime.engine.begin() as conn:
            view, created = await mappings.create_mapping(
                conn,
                user.tenant_id,
                ae_user_id=wanted.ae_user_id,
                sf_user_id=wanted.sf_user_id,
                now=views.now(),
            )
        held = "connected" if created else "were already connected"
        return f"AE user {view.ae_user_id} and SF user {view.sf_user_id} {held}.", {}

    return await changed(request, runtime, user, "users", change)


@router.post("/users/{ae_user_id}/disconnect")
async def disconnect_user(
    request: Request, runtime: RuntimeDep, user: Writer, ae_user_id: AeUserId
) -> HTMLResponse:
    async def change() -> tuple[str, dict[str, Any]]:
        async with runtime.engine.begin() as conn:
            view = await mappings.delete_mapping(conn, user.tenant_id, ae_user_id=ae_user_id)
        return f"AE user {view.ae_user_id} is no longer connected to {view.sf_user_id}.", {}

    return await changed(request, runtime, user, "users", change)


class _Run(Protocol):
    def __call__(
        self, conn: AsyncConnection, tenant_id: str, *, dry_run: bool, now: datetime
    ) -> Awaitable[Any]: ...


async def _preview_or_apply(
    request: Request, runtime: Runtime, user: ConsoleUser, name: str, run: _Run, shown: str
) -> HTMLResponse:
    """Run `run` as a preview unless the form asks to apply it; show its report as `shown`."""
    dry_run = (await _form(request)).get("mode") != "apply"

    async def change() -> tuple[str, dict[str, Any]]:
        async with runtime.engine.begin() as conn:
            report = await run(conn, user.tenant_id, dry_run=dry_run, now=views.now())
        what = f"{name} preview: nothing changed yet." if dry_run else f"{name} applied."
        return what, {shown: report}

    return await changed(request, runtime, user, "users", change)


@router.post("/users/sync")
async def sync_users(request: Request, runtime: RuntimeDep, user: Writer) -> HTMLResponse:
    run = user_sync.run_user_sync
    return await _preview_or_apply(request, runtime, user, "User sync", run, "sync_report")


@router.post("/reconcile")
async def run_reconcile(request: Request, runtime: RuntimeDep, user: Writer) -> HTMLResponse:
    run = reconcile.reconcile
    return await _preview_or_apply(request, runtime, user, "Reconcile", run, "reconcile_report")


# --- round robin -------------------------------------------------------------------------


@router.post("/round-robin/{group_id}/members/{ae_user_id}")
async def set_member(
    request: Request, runtime: RuntimeDep, user: Writer, group_id: GroupId, ae_user_id: AeUserId
) -> HTMLResponse:
    form = await _form(request)

    async def change() -> tuple[str, dict[str, Any]]:
        wanted = GroupMemberPut.model_validate(
            {"weight": form.get("weight") or 1, "dailyCap": _blank_is_none(form.get("daily_cap"))}
        )
        async with runtime.engine.begin() as conn:
            await groups.put_member(conn, user.tenant_id, group_id, ae_user_id, wanted)
        cap = wanted.daily_cap if wanted.daily_cap is not None else "no"
        return f"User {ae_user_id}: weight {wanted.weight}, {cap} daily cap.", {}

    return await changed(request, runtime, user, "round_robin", change)


async def _pause(
    request: Request,
    runtime: Runtime,
    user: ConsoleUser,
    group_id: int,
    ae_user_id: int,
    paused: bool,
) -> HTMLResponse:
    async def change() -> tuple[str, dict[str, Any]]:
        async with runtime.engine.begin() as conn:
            await groups.set_member_paused(
                conn, user.tenant_id, group_id, ae_user_id, paused=paused
            )
        return f"User {ae_user_id} {'paused' if paused else 'resumed'} in group {group_id}.", {}

    return await changed(request, runtime, user, "round_robin", change)


@router.post("/round-robin/{group_id}/members/{ae_user_id}/pause")
async def pause_member(
    request: Request, runtime: RuntimeDep, user: Writer, group_id: GroupId, ae_user_id: AeUserId
) -> HTMLResponse:
    return await _pause(request, runtime, user, group_id, ae_user_id, True)


@router.post("/round-robin/{group_id}/members/{ae_user_id}/resume")
async def resume_member(
    request: Request, runtime: RuntimeDep, user: Writer, group_id: GroupId, ae_user_id: AeUserId
) -> HTMLResponse:
    return await _pause(request, runtime, user, group_id, ae_user_id, False)


# --- dead letters and held effects -------------------------------------------------------


def _replayed(done: Any) -> str:
    kept = f"; kept (no event type to route by): {len(done.not_replayable)}"
    return f"Replayed {len(done.replayed)}{kept if done.not_replayable else ''}."


@router.post("/dead-letters/replay")
async def replay_all(request: Request, runtime: RuntimeDep, user: Admin) -> HTMLResponse:
    async def change() -> tuple[str, dict[str, Any]]:
        done = await dl.replay_dead_letters(dl.dead_letter_store(runtime.broker), user.tenant_id)
        return _replayed(done), {}

    return await changed(request, runtime, user, "dead_letters", change)


@router.post("/dead-letters/{letter_id}/replay")
async def replay_one(
    request: Request, runtime: RuntimeDep, user: Admin, letter_id: LetterId
) -> HTMLResponse:
    async def change() -> tuple[str, dict[str, Any]]:
        store = dl.dead_letter_store(runtime.broker)
        return _replayed(await dl.replay_dead_letters(store, user.tenant_id, letter_id)), {}

    return await changed(request, runtime, user, "dead_letters", change)


@router.post("/dead-letters/{letter_id}/discard")
async def discard_letter(
    request: Request, runtime: RuntimeDep, user: Admin, letter_id: LetterId
) -> HTMLResponse:
    async def change() -> tuple[str, dict[str, Any]]:
        store = dl.dead_letter_store(runtime.broker)
        done = await dl.discard_dead_letter(store, user.tenant_id, letter_id)
        return f"Discarded dead letter {done.discarded}.", {}

    return await changed(request, runtime, user, "dead_letters", change)


@router.post("/effects/{effect_id}/discard")
async def discard_effect(
    request: Request, runtime: RuntimeDep, user: Writer, effect_id: EffectId
) -> HTMLResponse:
    async def change() -> tuple[str, dict[str, Any]]:
        async with runtime.engine.begin() as conn:
            done = await effects.discard_effect(
                conn, user.tenant_id, effect_id, by=user.by, now=views.now()
            )
        return f"Discarded effect {done.discarded}: it will not be sent.", {}

    return await changed(request, runtime, user, "dead_letters", change)


# --- setup -------------------------------------------------------------------------------


@router.post("/setup/check")
async def check_connections(request: Request, runtime: RuntimeDep, user: Admin) -> HTMLResponse:
    async def change() -> tuple[str, dict[str, Any]]:
        keyring = runtime.settings.keyring if runtime.settings.secrets_key is not None else None
        async with runtime.engine.connect() as conn:
            stored, sf_user = await connections.connections_for_check(conn, user.tenant_id, keyring)
        check = await connections.check_connections(stored, sf_user, views.now())
        return "Connections checked.", {"check": check}

    return await changed(request, runtime, user, "setup", change)


def _grace(form: dict[str, str]) -> timedelta:
    rotation = SecretRotation.model_validate({"graceSeconds": form.get("grace_seconds") or 86_400})
    return timedelta(seconds=rotation.grace_seconds)


_Rotate = Callable[[AsyncConnection, timedelta, datetime], Awaitable[str]]


async def _rotated(
    request: Request, runtime: Runtime, user: ConsoleUser, rotate: _Rotate, notice: str, shown: str
) -> HTMLResponse:
    """Rotate with the grace the form asks for; the new value is shown as `shown`, this once."""
    form = await _form(request)

    async def change() -> tuple[str, dict[str, Any]]:
        grace = _grace(form)
        async with runtime.engine.begin() as conn:
            new = await rotate(conn, grace, views.now())
        return notice, {shown: new}

    return await changed(request, runtime, user, "setup", change)


@router.post("/setup/webhook-secret")
async def rotate_webhook_secret(request: Request, runtime: RuntimeDep, user: Admin) -> HTMLResponse:
    async def rotate(conn: AsyncConnection, grace: timedelta, now: datetime) -> str:
        done = await tenants.rotate_webhook_secret(conn, user.tenant_id, grace=grace, now=now)
        return done.webhook_secret

    notice = "New AE webhook secret: copy it now, it is not shown again."
    return await _rotated(request, runtime, user, rotate, notice, "new_webhook_secret")


@router.post("/setup/endpoint-key")
async def rotate_endpoint_key(request: Request, runtime: RuntimeDep, user: Admin) -> HTMLResponse:
    async def rotate(conn: AsyncConnection, grace: timedelta, now: datetime) -> str:
        done = await tenants.rotate_endpoint_key(conn, user.tenant_id, grace=grace, now=now)
        return done.salesforce_endpoint_key

    notice = "New SF endpoint key: copy the URLs now, the key is not shown again."
    return await _rotated(request, runtime, user, rotate, notice, "new_endpoint_key")
