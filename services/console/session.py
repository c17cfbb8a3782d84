"""Who is signed in to the console, and whether a form may change anything.

The session is a cookie holding the API key sealed with Fernet (AES-CBC + HMAC): the browser
never holds the key in clear, and every request opens the cookie and checks the key again,
so a revoked key ends its sessions at once. The sealing key is derived from
OWNERSYNC_SECRETS_KEY when it is set (sessions survive restarts and work across replicas);
otherwise each process draws its own (signing in again after a restart).

Each session carries a random CSRF token: every form sends it back and it is compared in
constant time. The sign-in form, which comes before any session, uses a double-submit cookie.
"""

from __future__ import annotations

import base64
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Annotated, Any

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from fastapi import Depends, Request, Response

from services.admin.api_keys import authenticate, effective_scopes
from services.admin.errors import NotFound
from services.admin.tenants import tenant_row
from services.common.runtime import Runtime
from services.common.web import RuntimeDep

COOKIE = "ownersync_console"
SIGN_IN_COOKIE = "ownersync_console_sign_in"
PATH = "/console"
SESSION_SECONDS = 8 * 3600
CSRF_FIELD = "csrf"


class SignInNeeded(Exception):
    """No session, an expired one, or its key no longer works."""


class Refused(Exception):
    """The signed-in key may not do this (its scope), or the form is not the session's."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class ConsoleUser:
    tenant_id: str
    scopes: frozenset[str]
    csrf: str
    key_id: str | None  # None: the operator key

    @property
    def is_operator(self) -> bool:
        return self.key_id is None

    @property
    def by(self) -> str:
        """Who made a change, as the audit says it."""
        return "the operator key (console)" if self.is_operator else f"API key {self.key_id}"

    def may(self, scope: str) -> bool:
        return scope in self.scopes


def _fernet(runtime: Runtime) -> Fernet:
    sealer = runtime.extras.get("console_sealer")
    if isinstance(sealer, Fernet):
        return sealer
    secret = runtime.settings.secrets_key
    if secret is not None:
        material = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"ownersync console session"
        ).derive(secret.get_secret_value().encode())
        sealer = Fernet(base64.urlsafe_b64encode(material))
    else:
        sealer = Fernet(Fernet.generate_key())
    runtime.extras["console_sealer"] = sealer
    return sealer


async def sign_in(runtime: Runtime, presented: str, tenant: str) -> ConsoleUser | None:
    """The session a key opens on `tenant` (the key's own tenant when blank), or None."""
    presented = presented.strip()
    operator = runtime.settings.operator_key
    if operator is not None and hmac.compare_digest(
        presented.encode(), operator.get_secret_value().encode()
    ):
        if not tenant:
            return None
        async with runtime.engine.connect() as conn:
            try:
                await tenant_row(conn, tenant)
            except NotFound:
                return None
        return ConsoleUser(tenant, effective_scopes(["admin"]), secrets.token_urlsafe(32), None)
    async with runtime.engine.connect() as conn:
        owner = await authenticate(conn, presented)
    if owner is None or (tenant and tenant != owner.tenant_id):
        return None
    return ConsoleUser(owner.tenant_id, owner.scopes, secrets.token_urlsafe(32), owner.key_id)


def start_session(
    request: Request, response: Response, runtime: Runtime, key: str, user: ConsoleUser
) -> None:
    sealed = {"key": key.strip(), "tenant": user.tenant_id, "csrf": user.csrf}
    token = _fernet(runtime).encrypt(json.dumps(sealed).encode()).decode()
    _set(request, response, COOKIE, token, SESSION_SECONDS)
    response.delete_cookie(SIGN_IN_COOKIE, path=PATH)


def end_session(response: Response) -> None:
    response.delete_cookie(COOKIE, path=PATH)


def sign_in_token(request: Request) -> str:
    """The double-submit token of the sign-in form (the cookie's, while it has one)."""
    return request.cookies.get(SIGN_IN_COOKIE) or secrets.token_urlsafe(32)


def keep_sign_in_token(request: Request, response: Response, token: str) -> None:
    _set(request, response, SIGN_IN_COOKIE, token, 3600)


def sign_in_form_is_ours(request: Request, sent: str) -> bool:
    return _same(request.cookies.get(SIGN_IN_COOKIE), sent)


def _set(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def _same(expected: str | None, sent: object) -> bool:
    if not expected or not isinstance(sent, str) or not sent:
        return False
    return hmac.compare_digest(expected.encode(), sent.encode())


async def signed_in(request: Request, runtime: RuntimeDep) -> ConsoleUser:
    """The session's user, its key checked again now."""
    cookie = request.cookies.get(COOKIE)
    if not cookie:
        raise SignInNeeded
    try:
        sealed: dict[str, Any] = json.loads(
            _fernet(runtime).decrypt(cookie.encode(), ttl=SESSION_SECONDS)
        )
    except (InvalidToken, ValueError) as exc:
        raise SignInNeeded from exc
    user = await sign_in(runtime, str(sealed.get("key", "")), str(sealed.get("tenant", "")))
    if user is None:
        raise SignInNeeded
    return ConsoleUser(user.tenant_id, user.scopes, str(sealed.get("csrf", "")), user.key_id)


async def _changing(request: Request, user: ConsoleUser, scope: str) -> ConsoleUser:
    form = await request.form()
    if not _same(user.csrf, form.get(CSRF_FIELD)):
        raise Refused("this form is out of date or was not sent by this console: reload the page")
    if not user.may(scope):
        raise Refused(f"your key can only look: this change needs the {scope} scope")
    return user


async def writer(request: Request, user: Annotated[ConsoleUser, Depends(signed_in)]) -> ConsoleUser:
    return await _changing(request, user, "write")


async def admin(request: Request, user: Annotated[ConsoleUser, Depends(signed_in)]) -> ConsoleUser:
    return await _changing(request, user, "admin")


Reader = Annotated[ConsoleUser, Depends(signed_in)]
Writer = Annotated[ConsoleUser, Depends(writer)]
Admin = Annotated[ConsoleUser, Depends(admin)]
