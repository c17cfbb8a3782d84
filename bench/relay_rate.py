"""`python -m bench.relay_rate`: the relay alone against an AE that answers like the real one.

The AE simulator runs as its own process with a per-call latency drawn from a range (AE answers
in 100-300 ms), the relay as one process or more (`--relays`). Two phases:

1. rate: the outbox is filled with N AE effects for N distinct records (each a prospect create),
   then the relays start; the sustained AE rate (writes over the span from the first call's
   arrival to the last answer) is printed beside the theoretical ceiling, AE's 5 concurrent calls
   per business unit over the mean latency observed (and configured).
2. reassign: R of those records are reassigned T times between bob and alice, decided by the
   syncer's own `apply_sf_events` in batches of 100 (a burst: every round decided back to back)
   while the relays run; printed: AE writes per distinct changed record, whether each prospect
   holds the final owner, and p50/p99 from receipt of a record's last change to the AE call
   that made AE hold it (0 when AE held it already when that change arrived).
3. burst (`--bulk-burst N`): N more records, their prospects in AE already, all reassigned at
   once (decided in batches of 100, as the syncer would) with the relays' bulk mode on (its
   default threshold, OWNERSYNC_AE_BULK_THRESHOLD): AE calls per 1,000 changed records (imports
   and one-by-one writes together), the time to drain the outbox from the burst's first
   decision, and whether each prospect holds the final owner. The simulator takes
   IMPORT_SECONDS over each import (the real AE: seconds to minutes, by its load).

`relay_phase(...)` runs both and returns the figures; `render(figures)` prints them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, insert, select

from bench import db
from bench.procs import REPO, Services, free_port
from services.common.db.engine import make_engine
from services.common.db.store import Cause, outbox_row
from services.common.db.tables import outbox, records
from services.common.domain import AeProspectUpsert
from services.common.messages import SF_RECORD_REASSIGNED, SfRecord, SfRecordEvent, event_id_for
from services.common.sfid import to18
from services.sim.ae import latency_range
from services.syncer.worker import apply_sf_events

TENANT_FILE = REPO / "services" / "demo" / "fixtures" / "salesforce" / "tenant.json"
TENANT = "acme"
ALICE_SF, BOB_SF = "0055g0000Zti3ElAQI", "0055g0000M6fuVCAQY"
AE_USER = {ALICE_SF: 101, BOB_SF: 102}
AE_CONCURRENCY = 5
PROSPECTS = "/api/v5/objects/prospects"
CREATED = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
BATCH = 100  # events per syncer transaction, as the syncer batches a message
DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/"


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(f"[relay-rate] {text}", flush=True)


def _lead(n: int) -> str:
    return to18(f"00Q5g{n:010d}")


async def relay_phase(
    *,
    database_url: str,
    amqp_url: str = DEFAULT_AMQP,
    effects: int = 2000,
    latency_ms: str = "100-300",
    relays: int = 1,
    reassign_records: int = 200,
    reassign_times: int = 5,
    coalesce_ms: int = 0,
    settle_timeout: float = 300.0,
    quiet: bool = False,
    bulk_burst: int = 0,
    bulk_check_ms: int | None = None,
) -> dict[str, Any]:
    """Both phases on `database_url` (reset: its schema is dropped and migrated). The figures
    as a dict (see `render`). `bulk_check_ms`: the relays' AE_BULK_CHECK_MS (None: their
    default), for a simulator answering so fast that a small burst drains between checks."""
    low, high = latency_range(latency_ms)
    configured_mean = (low + (high if high is not None else low)) / 2
    if reassign_records > effects:
        raise ValueError("--reassign-records must not exceed --effects")
    log_dir = Path(tempfile.mkdtemp(prefix="ownersync-relay-rate-"))
    run = uuid.uuid4().hex[:8]
    env = _env(database_url, amqp_url, run, coalesce_ms, bulk_check_ms)
    services = Services(log_dir, env)
    ok = False
    _say(quiet, f"database {db.asyncpg_url(database_url)}: reset and migrate")
    await db.prepare_database(database_url)
    db.ownersync(["migrate"], env)
    db.ownersync(["tenant", "load", str(TENANT_FILE)], env)
    engine = make_engine(db.sqlalchemy_url(database_url), pool_size=4)
    ae_port, sf_port = free_port(), free_port()
    ae_url = f"http://127.0.0.1:{ae_port}"
    figures: dict[str, Any] = {
        "config": {
            "effects": effects,
            "latency_ms": latency_ms,
            "relays": relays,
            "reassign_records": reassign_records,
            "reassign_times": reassign_times,
            "coalesce_ms": coalesce_ms,
            "bulk_burst": bulk_burst,
        }
    }
    try:
        services.start(
            "sim",
            [
                "sim",
                "--tenant",
                str(TENANT_FILE),
                "--port",
                str(ae_port),
                "--sf-port",
                str(sf_port),
                "--ae-latency-ms",
                latency_ms,
            ],
            health_url=f"{ae_url}/_sim/state",
        )
        await services.wait_ready()
        _say(quiet, f"rate: {effects:,} AE effects of distinct records in the outbox")
        await _fill(engine, effects)
        for n in range(relays):
            port = free_port()
            services.start(
                f"relay-{n + 1}",
                ["relay"],
                health_url=f"http://127.0.0.1:{port}/healthz",
                env={
                    "OWNERSYNC_METRICS_PORT": str(port),
                    "OWNERSYNC_AE_BASE_URL": ae_url,
                    "OWNERSYNC_SF_BASE_URL": f"http://127.0.0.1:{sf_port}",
                    "OWNERSYNC_RELAY_REPLICA_ID": f"relay-rate-{n + 1}",
                },
            )
        await services.wait_ready()
        _say(quiet, f"rate: {relays} relay process(es) sending, AE answers in {latency_ms} ms")
        await _until_sent(engine, services, settle_timeout, "rate")
        calls = _ae_calls(await _sim_state(ae_url))
        writes = [c for c in calls if c["write"]]
        span = max(c["end"] for c in writes) - min(c["start"] for c in writes)
        mean_latency = sum(c["end"] - c["start"] for c in writes) / len(writes)
        busy = sum(c["end"] - c["start"] for c in calls)
        figures["rate"] = {
            "writes": len(writes),
            "refused": sum(c["status"] >= 300 for c in calls),
            "seconds": span,
            "rate": len(writes) / span if span > 0 else None,
            "mean_latency_ms": mean_latency * 1000,
            "ceiling": AE_CONCURRENCY / mean_latency,
            "ceiling_configured": AE_CONCURRENCY / (configured_mean / 1000)
            if configured_mean
            else None,
            "mean_in_flight": busy / span if span > 0 else None,
        }

        count, times = reassign_records, reassign_times
        _say(quiet, f"reassign: {count} records reassigned {times} times, decided in a burst")
        before = len(calls)
        received, final = await _reassign(engine, count, times)
        await _until_sent(engine, services, settle_timeout, "reassign")
        state = await _sim_state(ae_url)
        calls, prospects = _ae_calls(state)[before:], _prospects(state)
        by_prospect = await _prospect_records(engine, count)
        figures["reassign"] = _reassign_figures(
            calls, prospects, by_prospect, received, final, count, times
        )
        if bulk_burst:
            _say(quiet, f"burst: {bulk_burst:,} records reassigned at once, bulk mode on")
            figures["burst"] = await _burst(engine, services, ae_url, bulk_burst, settle_timeout)
        services.check_alive()
        ok = True
    finally:
        services.stop()
        figures["memory_mb"] = {
            name: s.peak_mb for name, s in services.items.items() if s.peak_mb is not None
        }
        await engine.dispose()
        await _delete_topology(env)
        if ok:
            shutil.rmtree(log_dir, ignore_errors=True)
        else:
            print(f"[relay-rate] logs kept in {log_dir}", flush=True)
    return figures


# The burst's records: leads and prospect ids of their own, clear of the other phases'.
BURST_LEAD, BURST_PROSPECT = 5_000_000, 9_000_000
IMPORTS = "/api/v5/imports"
IMPORT_SECONDS = 5.0  # how long the simulator takes over an import, from Ready to Complete


async def _burst(
    engine: Any, services: Services, ae_url: str, count: int, within: float
) -> dict[str, Any]:
    """`count` records owned by alice whose prospects AE has, all reassigned to bob at once."""
    await _burst_records(engine, ae_url, count)
    async with httpx.AsyncClient(timeout=30.0) as client:
        # An import takes AE a while: the relay reads its status more than once.
        answer = await client.post(f"{ae_url}/_sim/faults", json={"import_seconds": IMPORT_SECONDS})
        answer.raise_for_status()
    before = len((await _sim_state(ae_url))["timedCalls"])
    leads = [_lead(BURST_LEAD + n) for n in range(count)]
    stamp = CREATED + timedelta(days=1)
    started = time.monotonic()
    for start in range(0, count, BATCH):
        now = datetime.now(UTC)
        batch = [_reassignment(lead, BOB_SF, stamp, now) for lead in leads[start : start + BATCH]]
        async with engine.begin() as conn:
            await apply_sf_events(conn, batch, now)
    decided = time.monotonic() - started
    await _until_sent(engine, services, within, "burst")
    drained = time.monotonic() - started
    state = await _sim_state(ae_url)
    calls, prospects = _ae_calls(state)[before:], _prospects(state)
    burst_ids = range(BURST_PROSPECT, BURST_PROSPECT + count)
    correct = sum(prospects[p]["assignedUserId"] == AE_USER[BOB_SF] for p in burst_ids)
    imports = [c for c in calls if c["path"].startswith(IMPORTS)]
    singles = [c for c in calls if c["write"] and c["method"] == "PATCH"]
    return {
        "records": count,
        "ae_calls": len(calls),
        "calls_per_1000": len(calls) * 1000 / count,
        "imports": sum(c["method"] == "POST" for c in imports),
        "import_calls": len(imports),
        "one_by_one_writes": len(singles),
        "refused": sum(c["status"] >= 300 for c in calls),
        "decide_seconds": decided,
        "drain_seconds": drained,
        "final_owner_correct": correct,
    }


async def _burst_records(engine: Any, ae_url: str, count: int) -> None:
    """The burst's records, owned by alice, each with its prospect (made in AE itself)."""
    now = datetime.now(UTC)
    async with httpx.AsyncClient(timeout=120.0) as client:
        for start in range(0, count, 5000):
            numbers = range(start, min(start + 5000, count))
            rows = [
                {
                    "tenant_id": TENANT,
                    "prospect_id": BURST_PROSPECT + n,
                    "sf_record_id": _lead(BURST_LEAD + n),
                    "sf_object": "Lead",
                    "email": f"burst{n}@example.com",
                    "ae_assigned_user_id": AE_USER[ALICE_SF],
                    "sf_owner_id": ALICE_SF,
                    "last_modstamp": CREATED,
                    "created_at": now,
                    "updated_at": now,
                }
                for n in numbers
            ]
            async with engine.begin() as conn:
                await conn.execute(insert(records), rows)
            seeds = [
                {
                    "id": row["prospect_id"],
                    "email": row["email"],
                    "assignedUserId": row["ae_assigned_user_id"],
                    "salesforceId": row["sf_record_id"],
                }
                for row in rows
            ]
            answer = await client.post(f"{ae_url}/_sim/prospects/many", json=seeds)
            answer.raise_for_status()


async def _delete_topology(env: dict[str, str]) -> None:
    """This run's exchange and queues, if a role declared any."""
    from services.common.broker.rabbit import RabbitBroker

    broker = RabbitBroker(
        env["OWNERSYNC_AMQP_URL"],
        exchange=env["OWNERSYNC_EXCHANGE"],
        queue_prefix=env["OWNERSYNC_QUEUE_PREFIX"],
    )
    try:
        with contextlib.suppress(Exception):
            await broker.delete_topology()
    finally:
        with contextlib.suppress(Exception):
            await broker.close()


def _env(
    database_url: str, amqp_url: str, run: str, coalesce_ms: int, bulk_check_ms: int | None
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OWNERSYNC_")}
    env.update(
        {
            "OWNERSYNC_DATABASE_URL": db.sqlalchemy_url(database_url),
            # The relay needs no queue, but a role run on its own is told where the broker is.
            "OWNERSYNC_AMQP_URL": amqp_url,
            "OWNERSYNC_EXCHANGE": f"relay-rate-{run}.events",
            "OWNERSYNC_QUEUE_PREFIX": f"relay-rate-{run}",
            "OWNERSYNC_LOG_LEVEL": "WARNING",
            "OWNERSYNC_METRICS_PORT": "0",
            "OWNERSYNC_SF_CLIENT_ID": "ownersync-sim",
            "OWNERSYNC_SF_CLIENT_SECRET": "ownersync-sim-secret",
            "OWNERSYNC_RELAY_COALESCE_MS": str(coalesce_ms),
            "PYTHONUNBUFFERED": "1",
        }
    )
    if bulk_check_ms is not None:
        env["OWNERSYNC_AE_BULK_CHECK_MS"] = str(bulk_check_ms)
    return env


async def _fill(engine: Any, count: int) -> None:
    """`count` leads owned by alice with no prospect yet, and the AE effect of each."""
    now = datetime.now(UTC)
    cause = Cause(None, "bench", "bench")
    async with engine.begin() as conn:
        for start in range(0, count, 1000):
            rows: list[dict[str, Any]] = [
                {
                    "tenant_id": TENANT,
                    "sf_record_id": _lead(n),
                    "sf_object": "Lead",
                    "email": f"rate{n}@example.com",
                    "ae_assigned_user_id": AE_USER[ALICE_SF],
                    "sf_owner_id": ALICE_SF,
                    "last_modstamp": CREATED,
                    "created_at": now,
                    "updated_at": now,
                }
                for n in range(start, min(start + 1000, count))
            ]
            made = await conn.execute(
                insert(records).returning(records.c.id, records.c.sf_record_id), rows
            )
            ids = {r.sf_record_id: r.id for r in made}
            effects = [
                outbox_row(
                    TENANT,
                    ids[row["sf_record_id"]],
                    cause,
                    AeProspectUpsert(
                        assigned_user_id=AE_USER[ALICE_SF],
                        assigned_queue_id=None,
                        email=str(row["email"]),
                        salesforce_id=str(row["sf_record_id"]),
                    ),
                    now,
                )
                for row in rows
            ]
            await conn.execute(insert(outbox), effects)


async def _reassign(engine: Any, count: int, times: int) -> tuple[dict[str, float], dict[str, str]]:
    """Round by round, every record moves between bob and alice, decided by the syncer's own
    code in batches of 100. Returns when each record's last change was received (epoch
    seconds) and its final SF owner."""
    owner = dict.fromkeys((_lead(n) for n in range(count)), ALICE_SF)
    received: dict[str, float] = {}
    events: list[SfRecordEvent] = []
    for round_no in range(1, times + 1):
        stamp = CREATED + timedelta(minutes=round_no)
        for lead in owner:
            owner[lead] = BOB_SF if owner[lead] == ALICE_SF else ALICE_SF
            # received_at is set as each batch is received, below
            events.append(_reassignment(lead, owner[lead], stamp, stamp))
    for start in range(0, len(events), BATCH):
        now = datetime.now(UTC)
        batch = [e.model_copy(update={"received_at": now}) for e in events[start : start + BATCH]]
        async with engine.begin() as conn:
            await apply_sf_events(conn, batch, now)
        for event in batch:
            received[event.payload.record_id] = now.timestamp()
    return received, owner


def _reassignment(lead: str, owner: str, stamp: datetime, received: datetime) -> SfRecordEvent:
    """SF's notification that `lead` now belongs to `owner`, as of `stamp`."""
    source = uuid.uuid4().hex
    return SfRecordEvent(
        type=SF_RECORD_REASSIGNED,
        tenant=TENANT,
        event_id=event_id_for(TENANT, "sf", source),
        source_id=source,
        occurred_at=stamp,
        received_at=received,
        payload=SfRecord(object="Lead", record_id=lead, owner_id=owner, system_modstamp=stamp),
    )


async def _until_sent(engine: Any, services: Services, within: float, phase: str) -> None:
    deadline = time.monotonic() + within
    query = select(func.count()).where(outbox.c.status.in_(("pending", "sending")))
    while True:
        async with engine.connect() as conn:
            left = int((await conn.execute(query)).scalar_one())
        if left == 0:
            return
        services.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{phase}: {left} effects still unsent after {within:.0f}s")
        await asyncio.sleep(0.2)


async def _sim_state(ae_url: str) -> dict[str, Any]:
    """The AE simulator's state: its timed calls and its prospects, read once per measurement
    (with tens of thousands of prospects it is megabytes of JSON)."""
    async with httpx.AsyncClient(timeout=120.0) as client:
        state: dict[str, Any] = (await client.get(f"{ae_url}/_sim/state")).json()
    return state


def _ae_calls(state: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "start": start,
            "end": end,
            "method": method,
            "path": path,
            "status": status,
            "write": method in ("POST", "PATCH") and path.startswith(PROSPECTS) and status < 300,
        }
        for start, end, method, path, status in state["timedCalls"]
    ]


def _prospects(state: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {p["id"]: p for p in state["prospects"]}


async def _prospect_records(engine: Any, count: int) -> dict[int, str]:
    """Prospect id -> SF lead id of the reassigned records."""
    leads = [_lead(n) for n in range(count)]
    async with engine.connect() as conn:
        found = await conn.execute(
            select(records.c.prospect_id, records.c.sf_record_id).where(
                records.c.sf_record_id.in_(leads)
            )
        )
        return {r.prospect_id: r.sf_record_id for r in found if r.prospect_id is not None}


def _reassign_figures(
    calls: list[dict[str, Any]],
    prospects: dict[int, dict[str, Any]],
    by_prospect: dict[int, str],
    received: dict[str, float],
    final: dict[str, str],
    count: int,
    times: int,
) -> dict[str, Any]:
    writes: dict[str, list[dict[str, Any]]] = {}
    for call in calls:
        if call["write"] and call["method"] == "PATCH":
            prospect_id = int(call["path"].rsplit("/", 1)[1])
            lead = by_prospect.get(prospect_id)
            if lead is not None:
                writes.setdefault(lead, []).append(call)
    correct = sum(
        1
        for prospect_id, lead in by_prospect.items()
        if prospects[prospect_id]["assignedUserId"] == AE_USER[final[lead]]
    )
    # From the receipt of a record's last change to the first AE write that started after it;
    # 0 when none did (AE held the final owner already when the change arrived).
    lags = []
    for lead, at in received.items():
        after = [c["start"] for c in writes.get(lead, []) if c["start"] >= at]
        lags.append(max(min(after) - at, 0.0) if after else 0.0)
    total = sum(len(w) for w in writes.values())
    return {
        "records": count,
        "times": times,
        "writes": total,
        "writes_per_record": total / count if count else None,
        "most_writes_of_a_record": max((len(w) for w in writes.values()), default=0),
        "final_owner_correct": correct,
        "receipt_to_ae_p50_ms": _quantile(lags, 0.50) * 1000,
        "receipt_to_ae_p99_ms": _quantile(lags, 0.99) * 1000,
        "receipt_to_ae_max_ms": max(lags, default=0.0) * 1000,
    }


def _quantile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def render(figures: dict[str, Any]) -> str:
    """The figures as the lines the bench prints."""
    c, r, a = figures["config"], figures["rate"], figures["reassign"]
    ceiling = f"{r['ceiling']:.1f}/s (5 / {r['mean_latency_ms']:.0f} ms observed)"
    if r.get("ceiling_configured"):
        ceiling += f", {r['ceiling_configured']:.1f}/s at the configured mean"
    lines = [
        f"relay vs AE answering in {c['latency_ms']} ms, {c['relays']} relay process(es), "
        f"coalescing window {c['coalesce_ms']} ms",
        f"  sustained AE rate      {r['rate']:.1f} writes/s over {r['seconds']:.1f}s "
        f"({r['writes']:,} writes, {r['refused']} refused); ceiling {ceiling}; "
        f"{r['rate'] / r['ceiling']:.0%} of it, {r['mean_in_flight']:.2f} calls in flight on "
        "average",
        f"  {a['records']} records reassigned {a['times']} times: {a['writes']} AE writes, "
        f"{a['writes_per_record']:.2f} per distinct changed record (most for one record: "
        f"{a['most_writes_of_a_record']}); final owner right for {a['final_owner_correct']}"
        f"/{a['records']}",
        f"  receipt of a record's last change -> the AE call: p50 "
        f"{a['receipt_to_ae_p50_ms']:.0f} ms, p99 {a['receipt_to_ae_p99_ms']:.0f} ms, max "
        f"{a['receipt_to_ae_max_ms']:.0f} ms",
    ]
    if b := figures.get("burst"):
        lines.append(
            f"  burst of {b['records']:,} reassignments, bulk mode on: {b['ae_calls']:,} AE calls "
            f"= {b['calls_per_1000']:.1f} per 1,000 changed records ({b['imports']} imports in "
            f"{b['import_calls']} calls, {b['one_by_one_writes']:,} one-by-one writes, "
            f"{b['refused']} refused); decided in {b['decide_seconds']:.1f}s, drained in "
            f"{b['drain_seconds']:.1f}s; final owner right for {b['final_owner_correct']:,}"
            f"/{b['records']:,}"
        )
    if figures.get("memory_mb"):
        peaks = ", ".join(f"{k} {v:.0f} MB" for k, v in sorted(figures["memory_mb"].items()))
        lines.append(f"  peak RSS: {peaks}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.relay_rate", description=__doc__)
    p.add_argument("--database-url", required=True, help="a database of its own: it is reset")
    p.add_argument(
        "--amqp-url",
        default=os.environ.get("OWNERSYNC_BENCH_AMQP_URL", DEFAULT_AMQP),
        help="RabbitMQ, for the relay's settings (it declares no queue of its own)",
    )
    p.add_argument("--effects", type=int, default=2000, help="AE effects of the rate phase")
    p.add_argument("--latency-ms", default="100-300", help="AE's answer time: 200 or 100-300")
    p.add_argument("--relays", type=int, default=1, help="relay processes [1]")
    p.add_argument("--reassign-records", type=int, default=200)
    p.add_argument("--reassign-times", type=int, default=5)
    p.add_argument("--coalesce-ms", type=int, default=0, help="the relay's window [0]")
    p.add_argument("--settle-timeout", type=float, default=300.0)
    p.add_argument(
        "--bulk-burst",
        type=int,
        default=0,
        help="then reassign N more records at once, bulk mode on (AE calls per 1,000) [0: no]",
    )
    p.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = p.parse_args(argv)
    try:
        latency_range(args.latency_ms)
    except ValueError as exc:
        p.error(str(exc))
    if min(args.effects, args.relays, args.reassign_records, args.reassign_times) < 1:
        p.error("--effects, --relays, --reassign-records and --reassign-times must be >= 1")
    figures = asyncio.run(
        relay_phase(
            database_url=args.database_url,
            amqp_url=args.amqp_url,
            effects=args.effects,
            latency_ms=args.latency_ms,
            relays=args.relays,
            reassign_records=args.reassign_records,
            reassign_times=args.reassign_times,
            coalesce_ms=args.coalesce_ms,
            settle_timeout=args.settle_timeout,
            bulk_burst=max(args.bulk_burst, 0),
        )
    )
    print(render(figures))
    if args.json:
        import json

        print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
