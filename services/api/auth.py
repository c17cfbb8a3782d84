"""Who is calling: a tenant's API key (scopes read/write/admin) or the operator key.

The key is checked by `services.api.guard` before the body is read; the dependencies here
take the caller it found. Tenant isolation: the key is resolved first, then its tenant
compared with the path's; a mismatch answers exactly what a tenant that does not exist
answers (404, no details), so a key never learns whether another tenant exists.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer, SecurityScopes
from fastapi.security.utils import get_authorization_scheme_param

from services.admin.api_keys import authenticate, effective_scopes
from services.admin.errors import NotFound
from services.admin.tenants import NOT_FOUND, tenant_row
from services.api.errors import Forbidden, Unauthorized
from services.common.runtime import Runtime
from services.common.web import RuntimeDep

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="`Authorization: Bearer <key>`: a tenant API key (`osk_…`), or the operator key "
    "(OWNERSYNC_OPERATOR_KEY), which may create tenants and act on any tenant as `admin`.",
)
_TENANT = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


@dataclass(frozen=True)
class Caller:
    tenant_id: str | None  # None: the operator
    scopes: frozenset[str]
    key_id: str | None = None

    @property
    def is_operator(self) -> bool:
        return self.tenant_id is None


async def authenticate_header(runtime: Runtime, authorization: str | None) -> Caller:
    """The caller an `Authorization` header names; Unauthorized for anything else."""
    scheme, presented = get_authorization_scheme_param(authorization)
    if not presented or scheme.lower() != "bearer":
        raise Unauthorized("an API key is required: Authorization: Bearer <key>")
    operator = runtime.settings.operator_key
    if operator is not None and hmac.compare_digest(
        presented.encode(), operator.get_secret_value().encode()
    ):
        return Caller(None, effective_scopes(["admin"]))
    async with runtime.engine.connect() as conn:
        owner = await authenticate(conn, presented)
    if owner is None:
        raise Unauthorized("the API key is not valid (unknown or revoked)")
    return Caller(owner.tenant_id, owner.scopes, owner.key_id)


async def caller(
    request: Request,
    runtime: RuntimeDep,
    # Declared for the OpenAPI security scheme; the header itself was read by the guard.
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Caller:
    known = getattr(request.state, "caller", None)
    if isinstance(known, Caller):
        return known
    return await authenticate_header(runtime, request.headers.get("authorization"))


async def tenant_access(
    scopes: SecurityScopes,
    tenant: Annotated[str, Path(max_length=64)],
    who: Annotated[Caller, Depends(caller)],
    runtime: RuntimeDep,
) -> str:
    """The path's tenant, once the caller may use it with the route's scope."""
    if who.is_operator:
        if not _TENANT.fullmatch(tenant):
            raise NotFound(NOT_FOUND)
        async with runtime.engine.connect() as conn:
            await tenant_row(conn, tenant)
    elif who.tenant_id != tenant:
        raise NotFound(NOT_FOUND)
    missing = [s for s in scopes.scopes if s not in who.scopes]
    if missing:
        raise Forbidden(
            f"this key lacks the {missing[0]!r} scope", details={"required": missing[0]}
        )
    return tenant


async def operator_only(who: Annotated[Caller, Depends(caller)]) -> Caller:
    if not who.is_operator:
        raise Forbidden("only the operator key may do this", details={"required": "operator"})
    return who


ReadTenant = Annotated[str, Security(tenant_access, scopes=["read"])]
WriteTenant = Annotated[str, Security(tenant_access, scopes=["write"])]
AdminTenant = Annotated[str, Security(tenant_access, scopes=["admin"])]
Operator = Annotated[Caller, Security(operator_only, scopes=["operator"])]
Who = Annotated[Caller, Depends(caller)]
