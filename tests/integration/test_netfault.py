"""The fault proxy that stands for Postgres and RabbitMQ outages in the fault tests and chaos."""

from __future__ import annotations

import asyncio
import socket

import asyncpg
import httpx
import pytest

from services.common.web import serve_app
from services.sim.netfault import FaultProxy, Mode, control_app

pytestmark = pytest.mark.integration  # the proxy stands in front of the real Postgres

PG = ("127.0.0.1", 5432)


async def _connect(port: int) -> asyncpg.Connection:
    return await asyncpg.connect(
        host="127.0.0.1", port=port, user="postgres", database="postgres", timeout=2
    )


async def test_traffic_passes_then_a_cut_refuses_and_a_restore_reopens_the_same_port() -> None:
    proxy = FaultProxy(*PG)
    port = await proxy.start()
    try:
        conn = await _connect(port)
        assert await conn.fetchval("select 41 + 1") == 42

        proxy.cut()
        with pytest.raises((OSError, asyncpg.PostgresConnectionError, ConnectionError)):
            await conn.fetchval("select 1")
        with pytest.raises(ConnectionRefusedError):
            await _connect(port)

        await proxy.restore()
        assert proxy.port == port
        conn = await _connect(port)
        assert await conn.fetchval("select 1") == 1
        await conn.close()
    finally:
        await proxy.stop()


async def test_drop_closes_live_connections_and_accepts_new_ones() -> None:
    proxy = FaultProxy(*PG)
    port = await proxy.start()
    try:
        old = await _connect(port)
        proxy.drop()
        with pytest.raises((OSError, asyncpg.PostgresConnectionError, ConnectionError)):
            await old.fetchval("select 1")
        new = await _connect(port)
        assert await new.fetchval("select 2") == 2
        await new.close()
    finally:
        await proxy.stop()


async def test_blackhole_holds_connections_without_passing_bytes() -> None:
    proxy = FaultProxy(*PG)
    port = await proxy.start()
    try:
        conn = await _connect(port)
        proxy.blackhole()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(conn.fetchval("select 1"), 0.5)
        # A new connection is accepted by the socket but its handshake never completes.
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
        with pytest.raises(TimeoutError):
            await _connect(port)
        assert proxy.mode is Mode.BLACKHOLE
    finally:
        await proxy.stop()


async def test_the_control_api_switches_modes() -> None:
    proxy = FaultProxy(*PG)
    port = await proxy.start()
    try:
        async with serve_app(control_app(proxy)) as url, httpx.AsyncClient(base_url=url) as http:
            assert (await http.post("/cut")).json() == {"mode": "down"}
            with pytest.raises(ConnectionRefusedError):
                await _connect(port)
            assert (await http.post("/restore")).json() == {"mode": "pass"}
            conn = await _connect(port)
            assert (await http.get("/state")).json()["links"] == 1
            await conn.close()
    finally:
        await proxy.stop()
