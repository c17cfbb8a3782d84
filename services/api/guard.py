"""The gate every /v1 request passes before FastAPI sees it: the API key, the key's rate, the
body size, and the last word on errors nothing else handled.

It is plain ASGI because FastAPI reads and parses a route's body before any dependency runs:
as a dependency, the key check would come after a 33 MiB upload had been read and a malformed
one refused with 422. Here an unknown key gets 401 before one byte of the body is read.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api.auth import Caller, authenticate_header
from services.api.errors import PREFIX, Unauthorized, error_json
from services.common.runtime import Runtime

log = logging.getLogger("ownersync.api")

# The API's own description and docs: readable without a key, like any public OpenAPI document.
PUBLIC_PATHS = frozenset({f"{PREFIX}/openapi.json", f"{PREFIX}/docs"})
REQUEST_ID_HEADER = "X-Request-Id"


@dataclass
class RateLimiter:
    """A token bucket per API key: `burst` requests at once, then `rate` a second."""

    rate: float
    burst: int
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def wait(self, key: str) -> float:
        """0 when `key` may go now (a token is spent), else the seconds until it may."""
        now = self.clock()
        tokens, then = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        if tokens >= 1:
            self._buckets[key] = (tokens - 1, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1 - tokens) / self.rate


def rate_limiter(runtime: Runtime) -> RateLimiter:
    """The runtime's limiter: every app serving one runtime shares one set of buckets."""
    limiter = runtime.extras.get("api_rate_limiter")
    if not isinstance(limiter, RateLimiter):
        settings = runtime.settings
        limiter = RateLimiter(settings.api_rate_per_second, settings.api_rate_burst)
        runtime.extras["api_rate_limiter"] = limiter
    return limiter


def is_api_path(path: str) -> bool:
    return path == PREFIX or path.startswith(f"{PREFIX}/")


class BodyOverLimit(Exception):
    pass


class ApiGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_api_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = False

        async def send_with_request_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        try:
            await self._guarded(scope, receive, send_with_request_id)
        except Exception:
            # Logged here with the traceback and answered without it: the body names only the
            # request id, which finds this log line.
            log.exception(
                "unhandled error answering %s %s",
                scope["method"],
                scope["path"],
                extra={"request_id": request_id},
            )
            if started:
                raise
            await error_json(
                500,
                "internal_error",
                "the request failed on the server; the request id finds it in the server log",
                {"requestId": request_id},
            )(scope, receive, send_with_request_id)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime: Runtime = scope["app"].state.runtime
        if scope["path"] not in PUBLIC_PATHS:
            try:
                who = await authenticate_header(runtime, Headers(scope=scope).get("authorization"))
            except Unauthorized as exc:
                await error_json(401, exc.code, exc.message)(scope, receive, send)
                return
            scope["state"]["caller"] = who
            wait = rate_limiter(runtime).wait(_bucket(who))
            if wait > 0:
                await _too_many_requests(wait)(scope, receive, send)
                return
        limit = runtime.settings.max_body_bytes
        try:
            body = await _read_body(scope, receive, limit)
        except BodyOverLimit:
            await error_json(413, "body_too_large", f"request body over {limit} bytes")(
                scope, receive, send
            )
            return
        await self.app(scope, _replay(body, receive), send)


def _bucket(who: Caller) -> str:
    return who.key_id or "operator"


def _too_many_requests(wait: float) -> ASGIApp:
    seconds = max(1, math.ceil(wait))
    response = error_json(
        429,
        "rate_limited",
        f"this key made too many requests; retry in {seconds} s",
        {"retryAfterSeconds": seconds},
    )
    response.headers["Retry-After"] = str(seconds)
    return response


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole body, refused as soon as it is declared or found to be over `limit`."""
    declared = Headers(scope=scope).get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyOverLimit
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break  # the client went away; the app sees an empty body and its answer is lost
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyOverLimit
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the app the body already read, then whatever follows."""
    pending = True

    async def replayed() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
