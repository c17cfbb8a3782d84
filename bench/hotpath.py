"""The decision path's cost per notification, in one process, with no broker and no HTTP.

`make bench` measures the roles end to end, and on a shared machine its figures move with
everybody else's load. This measures the Python of each step of the path in CPU time (which
that load barely moves), on the bench's own workload and database:

  receive   parse the SOAP body, build and encode the events (what the receiver does)
  decode    decode the broker message into events (what a worker does as it arrives)
  apply     the syncer's transactions: look-ups, decisions, writes, commit (batches of
            --batch-size events, one transaction each); wall time too, as Postgres works then

    python -m bench.hotpath --database-url postgresql+asyncpg://…/ownersync_hot
    python -m bench.hotpath --profile syncer.prof   # cProfile of the apply step

It uses only what every version of the roles has, so the same file measures an older tree:
`PYTHONPATH=/path/to/other/tree python /path/to/bench/hotpath.py …`.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DEFAULT_DB = "postgresql+asyncpg://postgres@127.0.0.1:5432/ownersync_hot"


def _cpu_and_wall(work: Callable[[], Any]) -> tuple[Any, float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    result = work()
    return result, time.process_time() - cpu, time.perf_counter() - wall


async def _timed(work: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    await work()
    return time.process_time() - cpu, time.perf_counter() - wall


async def measure(database_url: str, notifications: int, batch_size: int, profile: str | None):
    from bench import db, load
    from bench.run import TENANT_FILE
    from services.common.broker.base import Delivery, group_by_type
    from services.common.db.engine import make_engine
    from services.common.messages import (
        SF_RECORD_CREATED,
        SF_RECORD_REASSIGNED,
        SfRecordEvent,
        SfRecordEventType,
        dump_events,
        event_id_for,
    )
    from services.common.worker import _apply
    from services.receiver.soap import parse_outbound_message
    from services.syncer.worker import apply_sf_events

    await db.prepare_database(database_url)
    env = {**os.environ, "OWNERSYNC_DATABASE_URL": db.sqlalchemy_url(database_url)}
    db.ownersync(["migrate"], env)
    db.ownersync(["tenant", "load", str(TENANT_FILE)], env)
    fixture = load.Fixture.read(TENANT_FILE)
    messages = load.Workload(fixture).mixed(notifications)
    posted = sum(m.size for m in messages)

    def receive() -> list[bytes]:
        bodies: list[bytes] = []
        for m in messages:
            kind: SfRecordEventType = (
                SF_RECORD_CREATED if m.kind == "created" else SF_RECORD_REASSIGNED
            )
            parsed = parse_outbound_message(m.body)
            now = datetime.now(UTC)
            events = [
                SfRecordEvent(
                    type=kind,
                    tenant=fixture.tenant,
                    event_id=event_id_for(fixture.tenant, "sf", n.id),
                    source_id=n.id,
                    occurred_at=n.record.system_modstamp,
                    received_at=now,
                    payload=n.record,
                )
                for n in parsed.notifications
            ]
            bodies.extend(dump_events(same) for same in group_by_type(events).values())
        return bodies

    async def settle(*_: Any) -> None:
        return None

    bodies, receive_cpu, _ = _cpu_and_wall(receive)
    deliveries, decode_cpu, _ = _cpu_and_wall(
        lambda: [Delivery.decode(b, 0, settle) for b in bodies]
    )
    events = [e for d in deliveries for e in d.events]
    assert len(events) == posted, "every notification decoded"
    batches: list[list[Any]] = [[]]
    for d in deliveries:  # as a worker fills its batches: whole messages up to the size
        if batches[-1] and len(batches[-1]) + len(d.events) > batch_size:
            batches.append([])
        batches[-1].extend(d.events)
    engine = make_engine(db.sqlalchemy_url(database_url))
    profiler = cProfile.Profile() if profile else None

    async def apply_all() -> None:
        for batch in batches:
            await _apply(engine, batch, apply_sf_events)

    # As the bench does: ANALYZE as autovacuum would, when the server's autovacuum is off.
    analyzer = None if await db.autovacuum_enabled(database_url) else db.Analyzer(database_url, 5)
    if analyzer:
        analyzer.start()
    try:
        await _apply(engine, batches[0][:1], apply_sf_events)  # connect, warm the caches
        if profiler:
            profiler.enable()
        apply_cpu, apply_wall = await _timed(apply_all)
        if profiler and profile:
            profiler.disable()
            profiler.dump_stats(profile)
    finally:
        if analyzer:
            await analyzer.stop()
        await engine.dispose()
    per = 1e6 / posted
    return {
        "notifications": posted,
        "batches": len(batches),
        "receive_us": receive_cpu * per,
        "decode_us": decode_cpu * per,
        "apply_cpu_us": apply_cpu * per,
        "apply_wall_us": apply_wall * per,
        "apply_rate": posted / apply_wall,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.hotpath", description=__doc__.split("\n")[0])
    p.add_argument(
        "--database-url", default=os.environ.get("OWNERSYNC_HOT_DATABASE_URL", DEFAULT_DB)
    )
    p.add_argument("--notifications", type=int, default=20_000)
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--profile", help="write a cProfile of the apply step to this file")
    p.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = p.parse_args(argv)
    work = measure(args.database_url, args.notifications, args.batch_size, args.profile)
    if args.uvloop:
        import uvloop

        result = uvloop.run(work)
    else:
        result = asyncio.run(work)
    result["tree"] = str(Path(sys.modules["services"].__file__ or "?").parent.parent)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
