"""The console's gate, on the served app over loopback (SQLite, in-process broker): signing in
with a key, the session cookie, CSRF on every change, read keys refused on change."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import pytest
from pydantic import SecretStr

from services.admin.api_keys import create_api_key, revoke_api_key
from services.admin.groups import get_group
from services.bootstrap import create_app
from services.common.crypto import new_key_spec
from services.common.runtime import Runtime, build_runtime
from services.common.settings import Settings
from services.common.web import serve_app
from services.console.session import COOKIE

OPERATOR_KEY = "operator-console-test-0123456789abcdef0123456789"
ALICE_SF = "0055g0000Zti3ElAQI"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class Console:
    url: str
    runtime: Runtime
    keys: dict[str, str]

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, follow_redirects=False)

    async def sign_in(self, http: httpx.AsyncClient, key: str, tenant: str = "") -> httpx.Response:
        form = await http.get("/console/sign-in")
        token = CSRF.search(form.text)
        assert token is not None
        return await http.post(
            "/console/sign-in", data={"csrf": token.group(1), "api_key": key, "tenant": tenant}
        )

    @contextlib.asynccontextmanager
    async def signed_in(self, scope: str) -> AsyncIterator[httpx.AsyncClient]:
        """A client whose session was started with the tenant's `scope` key."""
        async with self.client() as http:
            await self.sign_in(http, self.keys[scope])
            yield http

    async def paused(self, group: int, user: int) -> bool:
        async with self.runtime.engine.connect() as conn:
            members = (await get_group(conn, "acme", group)).members
        return next(m.paused for m in members if m.ae_user_id == user)


@pytest.fixture
async def console(service_settings: Settings) -> AsyncIterator[Console]:
    settings = service_settings.model_copy(
        update={"operator_key": SecretStr(OPERATOR_KEY), "secrets_key": SecretStr(new_key_spec())}
    )
    runtime = build_runtime(settings)
    keys = {}
    async with runtime.engine.begin() as conn:
        for scope in ("read", "write", "admin"):
            made = await create_api_key(
                conn, "acme", name=scope, scopes=[scope], now=datetime.now(UTC)
            )
            keys[scope] = made.key
    async with serve_app(create_app(runtime)) as url:
        yield Console(url, runtime, keys)
    await runtime.close()


def csrf_of(page: httpx.Response) -> str:
    found = CSRF.search(page.text)
    assert found is not None, page.text[:500]
    return found.group(1)


async def test_signing_in_keeps_an_httponly_strict_cookie_that_does_not_hold_the_key(
    console: Console,
) -> None:
    async with console.client() as http:
        assert (await http.get("/console")).headers["location"] == "/console/sign-in"
        signed = await console.sign_in(http, console.keys["read"])
        assert signed.status_code == 303 and signed.headers["location"] == "/console"
        cookie = next(
            c for c in signed.headers.get_list("set-cookie") if c.startswith(f"{COOKIE}=")
        )
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
        secret_part = console.keys["read"].split("_", 2)[2]
        assert secret_part not in cookie and console.keys["read"] not in cookie
        page = await http.get("/console")
        assert page.status_code == 200 and "Overview of acme" in page.text
        assert page.headers["content-security-policy"].startswith("default-src 'self'")
        assert "read key" in page.text


async def test_a_wrong_key_or_another_tenant_or_a_forged_sign_in_form_does_not_sign_in(
    console: Console,
) -> None:
    async with console.client() as http:
        wrong = await console.sign_in(http, "osk_0123456789abcdef_nope")
        assert wrong.status_code == 401 and "does not sign in" in wrong.text
        other = await console.sign_in(http, console.keys["admin"], tenant="globex")
        assert other.status_code == 401
        operator_without_tenant = await console.sign_in(http, OPERATOR_KEY)
        assert operator_without_tenant.status_code == 401
        assert (await http.get("/console")).status_code == 303
    async with console.client() as http:
        forged = await http.post(
            "/console/sign-in", data={"csrf": "guess", "api_key": console.keys["admin"]}
        )
        assert forged.status_code == 403
        assert not any(c.startswith(f"{COOKIE}=") for c in forged.headers.get_list("set-cookie"))


async def test_the_operator_key_signs_in_to_a_named_tenant_as_admin(console: Console) -> None:
    async with console.client() as http:
        assert (await console.sign_in(http, OPERATOR_KEY, tenant="acme")).status_code == 303
        page = await http.get("/console/setup")
        assert "operator key" in page.text and "Rotate the AE webhook secret" in page.text


async def test_a_change_without_the_sessions_csrf_token_is_refused(console: Console) -> None:
    async with console.signed_in("write") as http:
        path = "/console/round-robin/7/members/101/pause"
        assert (await http.post(path, data={})).status_code == 403
        refused = await http.post(path, data={"csrf": "x" * 43})
        assert refused.status_code == 403 and "out of date" in refused.text
        assert await console.paused(7, 101) is False
        token = csrf_of(await http.get("/console/round-robin"))
        done = await http.post(path, data={"csrf": token})
        assert done.status_code == 200 and "User 101 paused in group 7" in done.text
        assert await console.paused(7, 101) is True


async def test_a_read_key_sees_but_is_refused_on_change(console: Console) -> None:
    async with console.signed_in("read") as http:
        page = await http.get("/console/round-robin")
        assert page.status_code == 200 and "inbound-sdrs" in page.text
        assert "Pause user 101" not in page.text  # no button it could not use
        refused = await http.post(
            "/console/round-robin/7/members/101/pause", data={"csrf": csrf_of(page)}
        )
        assert refused.status_code == 403 and "needs the write scope" in refused.text
        assert await console.paused(7, 101) is False


async def test_a_write_key_is_refused_what_takes_admin(console: Console) -> None:
    async with console.signed_in("write") as http:
        token = csrf_of(await http.get("/console/setup"))
        refused = await http.post("/console/setup/webhook-secret", data={"csrf": token})
        assert refused.status_code == 403 and "needs the admin scope" in refused.text


async def test_a_mapping_conflict_is_answered_409_with_the_mapping_that_holds(
    console: Console,
) -> None:
    async with console.signed_in("write") as http:
        token = csrf_of(await http.get("/console/users"))
        answer = await http.post(
            "/console/users/connect",
            data={"csrf": token, "ae_user_id": "105", "sf_user_id": ALICE_SF},
        )
        assert answer.status_code == 409
        assert "mapping_conflict" in answer.text
        assert f"AE user 101 ↔ SF user {ALICE_SF}" in answer.text
        bad = await http.post(
            "/console/users/connect", data={"csrf": token, "ae_user_id": "x", "sf_user_id": "y"}
        )
        assert bad.status_code == 422 and "validation_error" in bad.text


async def test_a_revoked_key_ends_its_session_and_signing_out_ends_it_too(
    console: Console,
) -> None:
    async with console.signed_in("admin") as http:
        assert (await http.get("/console/records")).status_code == 200
        key_id = console.keys["admin"].split("_")[1]
        async with console.runtime.engine.begin() as conn:
            await revoke_api_key(conn, "acme", key_id, datetime.now(UTC))
        assert (await http.get("/console/records")).status_code == 303
    async with console.signed_in("read") as http:
        token = csrf_of(await http.get("/console"))
        out = await http.post("/console/sign-out", data={"csrf": token})
        assert out.status_code == 303
        assert (await http.get("/console")).status_code == 303
        htmx = await http.get("/console", headers={"HX-Request": "true"})
        assert htmx.headers["hx-redirect"] == "/console/sign-in"


async def test_pages_load_nothing_from_elsewhere(console: Console) -> None:
    async with console.signed_in("admin") as http:
        for path in (
            "/console",
            "/console/records?q=1",
            "/console/users",
            "/console/round-robin",
            "/console/dead-letters",
            "/console/setup",
        ):
            page = await http.get(path)
            assert page.status_code == 200, (path, page.text[:300])
            assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
            assert "/console/static/htmx.min.js" in assets, path
            assert not [a for a in assets if a.startswith(("http:", "https:", "//"))], path
        script = await http.get("/console/static/htmx.min.js")
        assert script.status_code == 200 and "htmx" in script.text[:100]
