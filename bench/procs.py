"""The processes under test: start, wait until they answer, CPU and peak memory from /proc, stop.

psutil is not a dependency, so CPU time comes from /proc/<pid>/stat (utime + stime) and peak
resident memory from /proc/<pid>/status (VmHWM).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

CLK_TCK = os.sysconf("SC_CLK_TCK")
REPO = Path(__file__).resolve().parents[1]

# Infrastructure the roles share, found by process name (read only: never signalled).
INFRA = {"postgres": ("postgres",), "rabbitmq": ("beam.smp",)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of one process, None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces: split after its closing parenthesis.
    fields = raw.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM (peak resident set) in MiB, None when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def pids_named(names: Iterable[str]) -> list[int]:
    wanted = set(names)
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() in wanted:
                    found.append(int(entry.name))
    return found


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    health_url: str | None = None
    peak_mb: float | None = None
    command: list[str] = field(default_factory=list)  # what start() ran, for restart()
    env: dict[str, str] = field(default_factory=dict)
    restarts: int = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


@dataclass
class Services:
    """The roles (and the simulators) of one run, each a subprocess of the benchmark."""

    log_dir: Path
    env: Mapping[str, str]
    items: dict[str, Service] = field(default_factory=dict)

    def start(
        self,
        name: str,
        args: list[str],
        *,
        health_url: str | None = None,
        env: Mapping[str, str] | None = None,
        module: str = "services.cli",
    ) -> Service:
        """`python -m <module> <args>` (an `ownersync` command by default), logging to a file."""
        command = [sys.executable, "-m", module, *args]
        full_env = {**self.env, **(env or {})}
        log_path = self.log_dir / f"{name}.log"
        service = Service(name, _spawn(command, full_env, log_path), log_path, health_url)
        service.command, service.env = command, full_env
        self.items[name] = service
        return service

    def kill(self, name: str) -> None:
        """SIGKILL one of our own processes (by pid): no clean-up, as a crash or an OOM kill."""
        service = self.items[name]
        if service.alive():
            with contextlib.suppress(ProcessLookupError):
                service.proc.kill()
        service.proc.wait()

    def pause(self, name: str, timeout: float = 30.0) -> None:
        """Stop one service gracefully (SIGTERM, then SIGKILL past `timeout`), keeping its
        peak memory so far; `restart` starts it again."""
        service = self.items[name]
        _terminate(service)
        _reap(service, timeout)

    def restart(self, name: str) -> Service:
        """Start a stopped (or killed) service again with the same command and settings; its
        log goes on in the same file."""
        service = self.items[name]
        if service.alive():
            raise RuntimeError(f"{name} is still running (pid {service.pid})")
        service.proc = _spawn(service.command, service.env, service.log_path, append=True)
        service.restarts += 1
        return service

    async def wait_ready(self, within: float = 60.0, names: Iterable[str] | None = None) -> None:
        """Until every service (or those named) answers 200 on its health URL."""
        wanted = set(names) if names is not None else set(self.items)
        async with httpx.AsyncClient(timeout=2.0) as client:
            for service in self.items.values():
                if service.health_url is None or service.name not in wanted:
                    continue
                deadline = time.monotonic() + within
                while True:
                    if not service.alive():
                        raise RuntimeError(
                            f"{service.name} exited with {service.proc.returncode}:\n"
                            + service.log_tail()
                        )
                    with contextlib.suppress(httpx.HTTPError):
                        if (await client.get(service.health_url)).status_code == 200:
                            break
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"{service.name} not ready after {within:.0f}s:\n" + service.log_tail()
                        )
                    await asyncio.sleep(0.1)

    def check_alive(self, stopped: Iterable[str] = ()) -> None:
        """Raise if one of the services died (except those `stopped` on purpose)."""
        for service in self.items.values():
            if service.name not in stopped and not service.alive():
                raise RuntimeError(
                    f"{service.name} died (exit {service.proc.returncode}):\n" + service.log_tail()
                )

    def stop(self, timeout: float = 20.0) -> None:
        """Peak memory first (VmHWM), then SIGTERM to each of our own processes, by pid."""
        for service in self.items.values():
            _terminate(service)
        deadline = time.monotonic() + timeout
        for service in self.items.values():
            _reap(service, max(0.1, deadline - time.monotonic()))


def _terminate(service: Service) -> None:
    """Peak memory so far (VmHWM), then SIGTERM, if the service still runs."""
    if service.alive():
        service.peak_mb = _max(service.peak_mb, peak_rss_mb(service.pid))
        with contextlib.suppress(ProcessLookupError):
            service.proc.send_signal(signal.SIGTERM)


def _max(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def _reap(service: Service, timeout: float) -> None:
    """Wait up to `timeout` for the service to exit, then SIGKILL it."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        service.proc.wait(timeout)
    if service.alive():
        with contextlib.suppress(ProcessLookupError):
            service.proc.kill()
    service.proc.wait()


def _spawn(
    command: list[str], env: Mapping[str, str], log_path: Path, *, append: bool = False
) -> subprocess.Popen[bytes]:
    with log_path.open("ab" if append else "wb") as log:
        return subprocess.Popen(
            command,
            cwd=REPO,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C to the benchmark is not sent to the roles
            preexec_fn=_die_with_parent,
        )


def _die_with_parent() -> None:
    """SIGTERM the role when the benchmark dies, even killed (a test's timeout): an orphaned
    relay would keep claiming rows of the next run's database."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class CpuSample:
    at: float
    seconds: dict[tuple[str, int], float]  # (group, pid) -> CPU seconds


class CpuMeter:
    """CPU seconds of our processes and of Postgres and RabbitMQ (all their processes)."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.extra: dict[str, int] = {}  # more of our own processes (the baseline's)

    def sample(self) -> CpuSample:
        pids: list[tuple[str, int]] = [(n, s.pid) for n, s in self.services.items.items()]
        pids += list(self.extra.items())
        pids.append(("bench (load)", os.getpid()))
        for name, comms in INFRA.items():
            pids += [(name, pid) for pid in pids_named(comms)]
        seconds = {}
        for key in pids:
            used = cpu_seconds(key[1])
            if used is not None:
                seconds[key] = used
        return CpuSample(time.monotonic(), seconds)

    @staticmethod
    def share(before: CpuSample, after: CpuSample) -> dict[str, float]:
        """Per process group: CPU used over the interval, in % of one core.

        A process that started during the interval counts from zero; one that ended during
        it is lost (short-lived Postgres backends: a small underestimate).
        """
        wall = max(after.at - before.at, 1e-9)
        used: dict[str, float] = {}
        for key, seconds in after.seconds.items():
            used[key[0]] = used.get(key[0], 0.0) + max(0.0, seconds - before.seconds.get(key, 0.0))
        return {name: value / wall * 100 for name, value in used.items()}
