"""`serve_app`, the real HTTP server every role, simulator and test runs inside its event loop:
port 0 holds the port it picked from the start, and a server that cannot listen or start fails
with an error its caller can catch, not with uvicorn's SystemExit, which would end the
process's event loop (and, under pytest, every test after it on that worker)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from services.common.web import ServeError, listen, serve_app


def _hello() -> FastAPI:
    app = FastAPI()

    @app.get("/")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    return app


async def test_servers_started_side_by_side_on_port_0_each_hold_their_own_port() -> None:
    async with contextlib.AsyncExitStack() as stack:
        urls = await asyncio.gather(
            *(stack.enter_async_context(serve_app(_hello())) for _ in range(8))
        )
        async with httpx.AsyncClient() as client:
            answers = [(await client.get(url)).json() for url in urls]

    assert len(set(urls)) == 8
    assert all(not url.endswith(":0") for url in urls)
    assert answers == [{"hello": "world"}] * 8


async def test_a_port_taken_by_another_listener_is_a_clear_error_not_an_exit() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(ServeError, match=f"cannot listen on 127.0.0.1:{port}"):
            async with serve_app(_hello(), port=port):
                pass  # pragma: no cover: never reached

    # The event loop lives on, and the port serves once it is free.
    async with serve_app(_hello(), port=port) as url, httpx.AsyncClient() as client:
        assert (await client.get(url)).status_code == 200


async def test_an_app_whose_startup_fails_is_a_clear_error_not_an_exit() -> None:
    @contextlib.asynccontextmanager
    async def broken(_: FastAPI) -> AsyncIterator[None]:
        raise RuntimeError("no database")
        yield  # pragma: no cover

    with pytest.raises(ServeError, match="failed to start"):
        async with serve_app(FastAPI(lifespan=broken)):
            pass  # pragma: no cover: never reached


def test_connections_the_server_accepts_send_at_once_without_nagle() -> None:
    """Nagle's algorithm held each answer's last segment for the client's delayed ACK (40 ms
    a call, a fifth of the relay's AE rate): accepted connections inherit TCP_NODELAY."""
    with listen("127.0.0.1", 0) as server, socket.create_connection(server.getsockname()):
        accepted, _ = server.accept()
        with accepted:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
