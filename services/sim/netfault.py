"""A TCP proxy that fails on demand: outages of Postgres or RabbitMQ without stopping them.

Postgres and RabbitMQ are shared by every test run and helper on a machine, so a test or the
chaos suite points one run's roles at a proxy and breaks the proxy instead of the service:

- `cut()`: the service is down. Live connections are closed and the listening socket is
  closed too, so new connections are refused, as with a stopped server.
- `drop()`: every live connection is closed (backends terminated, broker connections closed);
  new ones are accepted.
- `blackhole()`: connections stay open and new ones are accepted, but no byte passes (a
  failover behind a load balancer that black-holes traffic).
- `restore()`: back to passing traffic, on the same port.

`python -m services.sim.netfault` runs one proxy as a process with a small HTTP control API
(`POST /cut`, `/drop`, `/blackhole`, `/restore`, `GET /state`) for multi-process runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import logging
from dataclasses import dataclass, field

from fastapi import FastAPI

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024


class Mode(enum.StrEnum):
    PASS = "pass"
    DOWN = "down"
    BLACKHOLE = "blackhole"


@dataclass(eq=False)
class _Link:
    """One client connection and its upstream; closing it closes both sides."""

    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for writer in self.writers:
            with contextlib.suppress(Exception):
                writer.transport.abort()


class FaultProxy:
    def __init__(
        self, target_host: str, target_port: int, listen_host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.target = (target_host, target_port)
        self.listen_host = listen_host
        self.port = port
        self.mode = Mode.PASS
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None
        self.connections = 0  # accepted since start, for tests and reports

    async def start(self) -> int:
        """Listen (on `port`, or a free one the first time) and return the port."""
        self._server = await asyncio.start_server(
            self._accept, self.listen_host, self.port, reuse_address=True
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        await self._close_server()
        self._drop_links()
        self._flowing.set()

    @property
    def url_host(self) -> str:
        return f"{self.listen_host}:{self.port}"

    def cut(self) -> None:
        log.info("proxy %s -> %s:%s down", self.url_host, *self.target)
        self.mode = Mode.DOWN
        self._flowing.set()
        self._drop_links()
        if self._server is not None:
            self._server.close()  # refuse new connections; the port is taken again on restore
            self._server = None

    def drop(self) -> None:
        log.info("proxy %s: %d connections dropped", self.url_host, len(self._links))
        self._drop_links()

    def blackhole(self) -> None:
        log.info("proxy %s black-holed", self.url_host)
        self.mode = Mode.BLACKHOLE
        self._flowing.clear()

    async def restore(self) -> None:
        log.info("proxy %s -> %s:%s restored", self.url_host, *self.target)
        self.mode = Mode.PASS
        self._flowing.set()
        if self._server is None:
            await self.start()

    async def _close_server(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def _drop_links(self) -> None:
        for link in list(self._links):
            link.close()
        self._links.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        link = _Link(writers=[writer])
        if self.mode is Mode.DOWN:
            link.close()
            return
        self._links.add(link)
        try:
            await self._flowing.wait()
            if link not in self._links:  # dropped or cut while it waited
                return
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except (OSError, asyncio.CancelledError):
            link.close()
            self._links.discard(link)
            return
        link.writers.append(up_writer)
        link.tasks = [
            asyncio.create_task(self._pipe(reader, up_writer, link)),
            asyncio.create_task(self._pipe(up_reader, writer, link)),
        ]

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link
    ) -> None:
        try:
            while data := await reader.read(_CHUNK):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            link.close()
            self._links.discard(link)


def control_app(proxy: FaultProxy) -> FastAPI:
    app = FastAPI(title="netfault control")

    @app.get("/state")
    async def state() -> dict[str, object]:
        return {"mode": proxy.mode.value, "port": proxy.port, "links": len(proxy._links)}

    @app.post("/cut")
    async def cut() -> dict[str, str]:
        proxy.cut()
        return {"mode": proxy.mode.value}

    @app.post("/drop")
    async def drop() -> dict[str, str]:
        proxy.drop()
        return {"mode": proxy.mode.value}

    @app.post("/blackhole")
    async def blackhole() -> dict[str, str]:
        proxy.blackhole()
        return {"mode": proxy.mode.value}

    @app.post("/restore")
    async def restore() -> dict[str, str]:
        await proxy.restore()
        return {"mode": proxy.mode.value}

    return app


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


async def _serve(listen: tuple[str, int], target: tuple[str, int], control_port: int) -> None:
    from services.common.web import serve_app  # the HTTP server every role uses

    proxy = FaultProxy(*target, listen_host=listen[0], port=listen[1])
    port = await proxy.start()
    async with serve_app(control_app(proxy), port=control_port) as url:
        print(f"netfault {listen[0]}:{port} -> {target[0]}:{target[1]}, control {url}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await proxy.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m services.sim.netfault",
        description="A TCP proxy that can be cut, dropped or black-holed over HTTP.",
    )
    parser.add_argument("--listen", type=_host_port, default=("127.0.0.1", 0), help="HOST:PORT")
    parser.add_argument("--target", type=_host_port, required=True, help="HOST:PORT to forward to")
    parser.add_argument("--control-port", type=int, required=True, help="HTTP control API port")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.listen, args.target, args.control_port))


if __name__ == "__main__":
    main()
