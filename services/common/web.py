"""What every HTTP role shares: the runtime dependency, a bounded body reader, and a real
HTTP server on loopback inside the current event loop (the receiver, the simulators, tests)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Annotated

import uvicorn
from fastapi import Depends, HTTPException, Request
from starlette.types import ASGIApp

from services.common.runtime import Runtime


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now. Another process may take it before the caller does: to
    serve, pass port 0 to `serve_app` instead, which keeps the socket it is given."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class ServeError(RuntimeError):
    """An embedded server could not listen or start its app."""


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (0: a free port), TCP_NODELAY set.

    The option is for the connections it accepts, which inherit it (Linux). Served from a
    socket handed to uvicorn without it, the roles' connections kept Nagle's algorithm on
    (measured, not traced to the line: the relay against the AE simulator process fell from
    4.8 to 4.0 calls in flight of 5, 23.7 to 19.8 writes/s, and this option alone restored
    it); each answer's last segment waits for the client's delayed ACK then, ~40 ms a call."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family)
    except OSError as exc:
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class _EmbeddedServer(uvicorn.Server):
    # The process owner (CLI or test) handles signals; servers inside it must not steal them.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serve_app(app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve `app` until the block exits; yields its base URL (http://host:port).

    Port 0 takes a free port, held from the moment it is chosen: processes started side by
    side (test workers, replicas) never race for one. The socket is bound here, not by
    uvicorn, which would end the whole process with SystemExit when a port is taken."""
    sock = listen(host, port)
    url = f"http://{host}:{sock.getsockname()[1]}"
    # log_config=None: uvicorn's own lines go through the root handler, so they come out in
    # OWNERSYNC_LOG_FORMAT with control characters escaped, like every other line.
    config = uvicorn.Config(app, log_level="warning", lifespan="on", log_config=None)
    server = _EmbeddedServer(config)

    async def serve() -> None:
        try:
            await server.serve(sockets=[sock])
        except SystemExit as exc:  # uvicorn's answer to an app whose startup failed
            failed = f"the app on {url} failed to start (uvicorn exit {exc.code})"
            raise ServeError(failed) from None

    with sock:
        task = asyncio.create_task(serve())
        while not server.started:
            if task.done():
                task.result()
                raise ServeError(f"the server on {url} stopped before it started")
            await asyncio.sleep(0.01)
        try:
            yield url
        finally:
            server.should_exit = True
            await task


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime  # set by the app's lifespan (bootstrap)
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes")


async def limited_body(request: Request, runtime: RuntimeDep) -> bytes:
    """The request body, refused with 413 past the limit without reading it all."""
    limit = runtime.settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)
