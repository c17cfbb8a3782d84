"""Where a role's time goes, seen from Postgres: pg_stat_activity sampled during a phase.

Each Postgres backend is matched to the role process that owns its client socket (the
backend's client_port against /proc/<pid>/fd and /proc/net/tcp). A sample of a role's
connection says whether the role was outside a transaction (consuming, acking, publishing,
waiting for work), inside one with Postgres executing a statement ("in Postgres"), or inside
one with Postgres waiting for the role ("in Python", i.e. between statements). The syncer
applies its batches one at a time, so its shares are shares of its wall time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import asyncpg

from bench.db import asyncpg_url

_SOCKET = re.compile(r"socket:\[(\d+)\]")


def _local_ports_by_inode() -> dict[str, int]:
    ports: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                ports[fields[9]] = int(fields[1].rsplit(":", 1)[1], 16)
    return ports


def ports_of(pids: Mapping[str, int]) -> dict[int, str]:
    """Local TCP port -> role name, for the sockets each role process holds."""
    by_inode = _local_ports_by_inode()
    owner: dict[int, str] = {}
    for role, pid in pids.items():
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    match = _SOCKET.match(os.readlink(f"/proc/{pid}/fd/{fd}"))
                    if match and match.group(1) in by_inode:
                        owner[by_inode[match.group(1)]] = role
    return owner


def _statement(query: str) -> str:
    q = " ".join(query.split())
    words = q.split(" ")
    verb = words[0].upper() if words else ""
    if verb in ("INSERT",) and len(words) > 2:
        return f"INSERT INTO {words[2]}"
    if verb == "UPDATE" and len(words) > 1:
        return f"UPDATE {words[1]}"
    if verb == "SELECT":
        match = re.search(r"\bFROM (\w+)", q, re.IGNORECASE)
        lock = " FOR UPDATE" if "FOR UPDATE" in q.upper() else ""
        return f"SELECT FROM {match.group(1) if match else '?'}{lock}"
    return verb.rstrip(";") or "(between statements)"


class DbSampler:
    """Samples pg_stat_activity every `every` seconds while running."""

    def __init__(self, url: str, pids: Mapping[str, int], every: float = 0.05) -> None:
        self.url = url
        self.pids = dict(pids)
        self.every = every
        self.samples = 0
        self.counts: Counter[tuple[str, str, str]] = Counter()  # (role, where, statement)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> dict[str, dict[str, float]]:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        return self.shares()

    async def _loop(self) -> None:
        conn = await asyncpg.connect(asyncpg_url(self.url))
        owner = ports_of(self.pids)
        checked = set(owner)  # ports looked up already (the benchmark's own are no role's)
        try:
            while True:
                rows = await conn.fetch(
                    "select client_port, state, wait_event_type, query from pg_stat_activity "
                    "where datname = current_database() and pid <> pg_backend_pid() "
                    "and backend_type = 'client backend'"
                )
                if any(r["client_port"] not in checked for r in rows):
                    owner = ports_of(self.pids)  # a pool opened a connection
                    checked |= set(owner) | {r["client_port"] for r in rows}
                self.samples += 1
                for r in rows:
                    role = owner.get(r["client_port"])
                    if role is None:
                        continue
                    state = r["state"] or ""
                    if state == "idle":
                        continue
                    where = "in Python"
                    if state == "active":
                        # Blocked by another transaction's lock (a row another role holds),
                        # not working: told apart, they call for different cures.
                        locked = r["wait_event_type"] == "Lock"
                        where = "waiting for a lock" if locked else "in Postgres"
                    self.counts[(role, where, _statement(r["query"] or ""))] += 1
                await asyncio.sleep(self.every)
        finally:
            await conn.close()

    def shares(self) -> dict[str, dict[str, float]]:
        """role -> {"<where>: <statement>": share of samples, "in a transaction": total}."""
        out: dict[str, dict[str, float]] = {}
        if not self.samples:
            return out
        for (role, where, statement), count in self.counts.items():
            role_out = out.setdefault(role, {})
            role_out[f"{where}: {statement}"] = count / self.samples
        for role_out in out.values():
            role_out["in a transaction"] = sum(role_out.values())
        return out
