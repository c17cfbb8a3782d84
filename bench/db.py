"""The benchmark's own database: created if missing, schema dropped and migrated every run."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import asyncpg

from bench.procs import REPO
from services.common.domain import Rule


def asyncpg_url(url: str) -> str:
    """asyncpg wants postgresql://…; ownersync wants postgresql+asyncpg://…: accept both."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def sqlalchemy_url(url: str) -> str:
    if url.startswith("postgresql://"):
        return url.replace("postgresql://", "postgresql+asyncpg://", 1)
    return url


def database_name(url: str) -> str:
    return asyncpg_url(url).rsplit("/", 1)[1].split("?", 1)[0]


async def prepare_database(url: str) -> None:
    """CREATE DATABASE if missing, then an empty `public` schema (Alembic fills it)."""
    name = database_name(url)
    if not name.replace("_", "").isalnum():
        raise ValueError(f"unexpected database name {name!r}")
    maintenance = asyncpg_url(url).rsplit("/", 1)[0] + "/postgres"
    conn = await asyncpg.connect(maintenance)
    try:
        if not await conn.fetchval("select 1 from pg_database where datname = $1", name):
            await conn.execute(f'create database "{name}"')
    finally:
        await conn.close()
    conn = await asyncpg.connect(asyncpg_url(url))
    try:
        await conn.execute("drop schema if exists public cascade; create schema public")
        await conn.execute("drop schema if exists bench cascade")
    finally:
        await conn.close()


def ownersync(args: list[str], env: Mapping[str, str]) -> str:
    """Run one `ownersync` command (migrate, tenant load) and return what it printed."""
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        cwd=REPO,
        env=dict(env),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"ownersync {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout.strip()


class Store:
    """The few reads the benchmark makes: inbox and outbox counts, AE-side outcomes."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        # Entries processed before this are not the run's (the preload's are older): counting
        # from it reads the processed_at index, not a table of millions of rows.
        self.since = datetime.now(UTC) - timedelta(minutes=5)

    @classmethod
    async def connect(cls, url: str) -> Store:
        return cls(await asyncpg.connect(asyncpg_url(url)))

    async def close(self) -> None:
        await self.conn.close()

    async def inbox_count(self) -> int:
        query = "select count(*) from inbox where processed_at >= $1"
        return int(await self.conn.fetchval(query, self.since))

    async def pending_effects(self) -> int:
        unsent = "select count(*) from outbox where status in ('pending', 'sending')"
        return int(await self.conn.fetchval(unsent))

    async def settled_effects(self, after_id: int = 0) -> int:
        """Settled outbox rows of id > after_id (an id range: the preload's rows are older)."""
        return int(
            await self.conn.fetchval(
                "select count(*) from outbox "
                "where id > $1 and status in ('done', 'superseded', 'dead')",
                after_id,
            )
        )

    async def last_outbox_id(self) -> int:
        return int(await self.conn.fetchval("select coalesce(max(id), 0) from outbox"))

    async def dead_letters(self) -> int:
        return int(await self.conn.fetchval("select count(*) from outbox where status = 'dead'"))

    async def rule_counts(self, since_audit_id: int) -> dict[str, int]:
        """Decisions by rule (the relay's rows say what it learned: not decisions)."""
        rows = await self.conn.fetch(
            "select rule, count(*) from audit_log where id > $1 and rule <> $2 group by rule",
            since_audit_id,
            Rule.RELAY.value,
        )
        return {r[0]: int(r[1]) for r in rows}

    async def last_audit_id(self) -> int:
        return int(await self.conn.fetchval("select coalesce(max(id), 0) from audit_log"))

    async def processed_at(self, event_ids: list[str]) -> dict[str, float]:
        """inbox.processed_at (the applying batch's start) per event id, as epoch seconds."""
        rows = await self.conn.fetch(
            "select event_id, extract(epoch from processed_at)::float8 from inbox "
            "where event_id = any($1::text[])",
            event_ids,
        )
        return {r[0]: r[1] for r in rows}

    async def wait_inbox(
        self, target: int, *, within: float, check: object = None
    ) -> tuple[float | None, int]:
        """Poll until the inbox holds `target` rows: (monotonic time seen, count) or (None, n).

        count(*) is not free on a big inbox: far from the end it polls seldom (from the pace
        so far), in the last second every 50 ms, so the end is seen within ~50 ms.
        """
        start = time.monotonic()
        count = await self.inbox_count()
        first = count
        while count < target:
            now = time.monotonic()
            if now - start > within:
                return None, count
            if callable(check):
                check()
            pace = (count - first) / (now - start) if count > first else 0.0
            eta = (target - count) / pace if pace > 0 else 1.0
            await asyncio.sleep(0.05 if eta <= 1.0 else min(0.5, eta / 4))
            count = await self.inbox_count()
        return time.monotonic(), count

    async def wait_settled(
        self, inbox_target: int, *, within: float, check: object = None
    ) -> tuple[bool, float]:
        """Inbox complete and no pending effect, twice in a row; (settled, seconds waited)."""
        start = time.monotonic()
        quiet = 0
        while quiet < 2:
            if time.monotonic() - start > within:
                return False, time.monotonic() - start
            if callable(check):
                check()
            done = await self.inbox_count() >= inbox_target and await self.pending_effects() == 0
            quiet = quiet + 1 if done else 0
            await asyncio.sleep(0.1)
        return True, time.monotonic() - start


BUSY_TABLES = ("inbox", "records", "outbox", "audit_log")


async def autovacuum_enabled(url: str) -> bool:
    conn = await asyncpg.connect(asyncpg_url(url))
    try:
        return str(await conn.fetchval("show autovacuum")).lower() == "on"
    finally:
        await conn.close()


# The tables autovacuum would ANALYZE now: changed rows past its threshold for their size.
_ANALYZE_DUE = """
SELECT s.relname FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
WHERE s.relname = ANY($1::text[])
  AND s.n_mod_since_analyze > current_setting('autovacuum_analyze_threshold')::float8
      + current_setting('autovacuum_analyze_scale_factor')::float8 * greatest(c.reltuples, 0)
ORDER BY s.relname
"""


class Analyzer:
    """ANALYZE the busy tables as autovacuum would when it is on: every `every` seconds, each
    table whose rows changed since its last ANALYZE pass the server's own threshold
    (`autovacuum_analyze_threshold` + `autovacuum_analyze_scale_factor` x its rows: 50 + 10%).

    Without fresh statistics a connection may keep, for good, a generic plan it cached while a
    table was empty (a sequential scan); autoanalyze is what invalidates such plans. A table of
    10M rows is not analyzed again for a 30,000-row phase, as autovacuum would not either (each
    ANALYZE of it reads 30,000 random pages).
    """

    def __init__(self, url: str, every: float) -> None:
        self.url = url
        self.every = every
        self.runs = 0
        self.tables: dict[str, int] = {}  # ANALYZE runs by table
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        conn = await asyncpg.connect(asyncpg_url(self.url))
        try:
            while True:
                await asyncio.sleep(self.every)
                due = await conn.fetch(_ANALYZE_DUE, list(BUSY_TABLES))
                for row in due:
                    await conn.execute(f"analyze {row['relname']}")
                    self.tables[row["relname"]] = self.tables.get(row["relname"], 0) + 1
                self.runs += bool(due)
        finally:
            await conn.close()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
