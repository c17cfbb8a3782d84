"""One benchmark run: set up, start the roles, measure the phases, stop, and collect figures.

Phases, in this order (the figures are printed in the issue's order):
  1. baseline   raw aio-pika + asyncpg, while the roles sit idle on the same services
  2. ae-calls   records reassigned several times within a minute: AE calls vs records changed
  3. latency    a fixed offered load (default 1,000 notifications/s): receipt-to-decision
  4. throughput as fast as the receiver acks: notifications/s received and applied end to end
Between phases the system is left to settle (inbox complete, outbox empty), so a phase does not
pay for the relay's backlog of the previous one; after the last phase it is not (the relay's
progress is reported instead).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench import baseline, db, load
from bench.dbwait import DbSampler
from bench.histogram import Buckets, exact_quantile, scrape
from bench.procs import REPO, CpuMeter, Services, free_port

TENANT_FILE = REPO / "services" / "demo" / "fixtures" / "salesforce" / "tenant.json"
LATENCY_TYPES = ("sf.record.created", "sf.record.reassigned")
# What the bench sets for the roles; every other OWNERSYNC_* of the caller passes through.
OWN_SETTINGS = {
    "DATABASE_URL",
    "AMQP_URL",
    "EXCHANGE",
    "QUEUE_PREFIX",
    "HOST",
    "PORT",
    "METRICS_PORT",
    "AE_BASE_URL",
    "SF_BASE_URL",
    "SF_CLIENT_ID",
    "SF_CLIENT_SECRET",
    "LOG_LEVEL",
}


@dataclass
class Options:
    notifications: int
    latency_seconds: float
    rate: float
    reassign_records: int
    reassign_times: int
    database_url: str
    amqp_url: str
    concurrency: int
    baseline_notifications: int
    settle_timeout: float
    analyze_every: float | None = None  # None: every 10 s when the server's autovacuum is off
    quiet: bool = False


def _say(options: Options, text: str) -> None:
    if not options.quiet:
        print(f"[bench] {text}", flush=True)


def _tuning() -> dict[str, Any]:
    from services.common.settings import Settings

    s = Settings()
    return {
        "batch_size": s.batch_size,
        "batch_wait_ms": s.batch_wait_ms,
        "prefetch": s.prefetch,
        "delivery_limit": s.delivery_limit,
        "relay_coalesce_ms": s.relay_coalesce_ms,
        "relay_interval_ms": s.relay_interval_ms,
        "relay_batch_size": s.relay_batch_size,
        "ae_max_concurrency": s.ae_max_concurrency,
    }


def _base_env(options: Options, run: str) -> dict[str, str]:
    import os

    env = {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith("OWNERSYNC_") and k.removeprefix("OWNERSYNC_") in OWN_SETTINGS)
    }
    env.update(
        {
            "OWNERSYNC_DATABASE_URL": db.sqlalchemy_url(options.database_url),
            "OWNERSYNC_AMQP_URL": options.amqp_url,
            "OWNERSYNC_EXCHANGE": f"bench-{run}.events",
            "OWNERSYNC_QUEUE_PREFIX": f"bench-{run}",
            "OWNERSYNC_LOG_LEVEL": "WARNING",
            "OWNERSYNC_METRICS_PORT": "0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


class Bench:
    def __init__(self, options: Options) -> None:
        self.o = options
        self.run_id = uuid.uuid4().hex[:8]
        self.env = _base_env(options, self.run_id)
        self.fixture = load.Fixture.read(TENANT_FILE)
        self.workload = load.Workload(self.fixture)
        self.log_dir = Path(tempfile.mkdtemp(prefix=f"ownersync-bench-{self.run_id}-"))
        self.services = Services(self.log_dir, self.env)
        self.meter = CpuMeter(self.services)
        self.ports: dict[str, int] = {}
        self.store: db.Store | None = None
        self.analyzer: db.Analyzer | None = None
        self.results: dict[str, Any] = {
            "config": {
                "notifications": options.notifications,
                "latency_seconds": options.latency_seconds,
                "rate": options.rate,
                "reassign_records": options.reassign_records,
                "reassign_times": options.reassign_times,
                "concurrency": options.concurrency,
                "baseline_notifications": options.baseline_notifications,
                "cores": _cores(),
                "settings": _tuning(),
                "run": self.run_id,
            }
        }

    # ---- setup and teardown

    async def setup(self) -> None:
        _say(self.o, f"database {db.asyncpg_url(self.o.database_url)}: reset and migrate")
        await db.prepare_database(self.o.database_url)
        db.ownersync(["migrate"], self.env)
        db.ownersync(["tenant", "load", str(TENANT_FILE)], self.env)
        self.store = await db.Store.connect(self.o.database_url)
        autovacuum = await db.autovacuum_enabled(self.o.database_url)
        every = self.o.analyze_every
        if every is None:
            every = 0.0 if autovacuum else 10.0
        self.results["config"]["autovacuum"] = autovacuum
        self.results["config"]["analyze_every"] = every
        if every > 0:
            _say(
                self.o,
                f"autovacuum is {'on' if autovacuum else 'off'} on this server: ANALYZE "
                f"{', '.join(db.BUSY_TABLES)} every {every:g}s (--analyze-every 0: never)",
            )
            self.analyzer = db.Analyzer(self.o.database_url, every)
            self.analyzer.start()
        for name in ("ae", "sf", "receiver", "syncer", "relay"):
            self.ports[name] = free_port()
        ae, sf = self.ports["ae"], self.ports["sf"]
        _say(self.o, f"starting sim, receiver, syncer, relay (queues bench-{self.run_id}.*)")
        self.services.start(
            "sim",
            ["sim", "--tenant", str(TENANT_FILE), "--port", str(ae), "--sf-port", str(sf)],
            health_url=f"http://127.0.0.1:{ae}/_sim/state",
        )
        self.services.start(
            "receiver",
            ["receiver", "--port", str(self.ports["receiver"])],
            health_url=f"{self.receiver_url}/readyz",
        )
        self.services.start(
            "syncer",
            ["syncer"],
            health_url=f"{self.syncer_metrics}".replace("/metrics", "/healthz"),
            env={"OWNERSYNC_METRICS_PORT": str(self.ports["syncer"])},
        )
        self.services.start(
            "relay",
            ["relay"],
            health_url=f"http://127.0.0.1:{self.ports['relay']}/healthz",
            env={
                "OWNERSYNC_METRICS_PORT": str(self.ports["relay"]),
                "OWNERSYNC_AE_BASE_URL": f"http://127.0.0.1:{ae}",
                "OWNERSYNC_SF_BASE_URL": f"http://127.0.0.1:{sf}",
                "OWNERSYNC_SF_CLIENT_ID": "ownersync-sim",
                "OWNERSYNC_SF_CLIENT_SECRET": "ownersync-sim-secret",
            },
        )
        await self.services.wait_ready()

    @property
    def receiver_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['receiver']}"

    @property
    def syncer_metrics(self) -> str:
        return f"http://127.0.0.1:{self.ports['syncer']}/metrics"

    @property
    def ae_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['ae']}"

    async def teardown(self, ok: bool) -> None:
        if self.analyzer is not None:
            await self.analyzer.stop()
            self.results["config"]["analyze_runs"] = self.analyzer.runs
        self.services.stop()
        self.results["memory_mb"] = {
            name: s.peak_mb for name, s in self.services.items.items() if s.peak_mb is not None
        }
        if self.store is not None:
            with contextlib.suppress(Exception):
                await self.store.close()
        with contextlib.suppress(Exception):
            await self._delete_topology()
        if ok:
            shutil.rmtree(self.log_dir, ignore_errors=True)
        else:
            print(f"[bench] role logs kept in {self.log_dir}", flush=True)

    async def _delete_topology(self) -> None:
        from services.common.broker.rabbit import RabbitBroker

        broker = RabbitBroker(
            self.o.amqp_url,
            exchange=self.env["OWNERSYNC_EXCHANGE"],
            queue_prefix=self.env["OWNERSYNC_QUEUE_PREFIX"],
        )
        try:
            await broker.delete_topology()  # if_unused=False, if_empty=False (quorum queues)
        finally:
            await broker.close()

    # ---- helpers

    def _sampler(self) -> DbSampler:
        pids = {n: self.services.items[n].pid for n in ("receiver", "syncer", "relay")}
        sampler = DbSampler(self.o.database_url, pids)
        sampler.start()
        return sampler

    @property
    def db(self) -> db.Store:
        assert self.store is not None
        return self.store

    async def _ae_calls(self) -> tuple[int, int, dict[int, dict[str, Any]]]:
        """AE prospect writes (POST/PATCH) so far, how many were refused, and the prospects."""
        async with httpx.AsyncClient(timeout=60.0) as client:
            state = (await client.get(f"{self.ae_url}/_sim/state")).json()
        writes = refused = 0
        for method, path, status in state["callLog"]:
            if method in ("POST", "PATCH") and path.startswith("/api/v5/objects/prospects"):
                writes += 1
                refused += status >= 300
        return writes, refused, {p["id"]: p for p in state["prospects"]}

    async def _settle(self, target: int, phase: str) -> float:
        ok, waited = await self.db.wait_settled(
            target, within=self.o.settle_timeout, check=self.services.check_alive
        )
        if not ok:
            pending = await self.db.pending_effects()
            inbox = await self.db.inbox_count()
            raise RuntimeError(
                f"{phase}: not settled after {waited:.0f}s (inbox {inbox}/{target}, "
                f"{pending} effects pending)"
            )
        return waited

    # ---- phases

    async def phase_baseline(self) -> None:
        count = self.o.baseline_notifications
        _say(self.o, f"baseline: {count:,} messages through aio-pika + asyncpg")
        body = baseline.sample_event_body(
            self.fixture.tenant, "00Q5g0000ZWHszxEQD", self.fixture.alice
        )
        result = await baseline.run_baseline(
            amqp_url=self.o.amqp_url,
            database_url=self.o.database_url,
            queue=f"bench-{self.run_id}.baseline",
            count=count,
            body=body,
            concurrency=self.o.concurrency,
            meter=self.meter,
            within=self.o.settle_timeout,
        )
        self.results["baseline"] = {
            "notifications": result.count,
            "body_bytes": result.body_bytes,
            "seconds": result.seconds,
            "rate": result.rate,
            "publish_rate": result.publish_rate,
            "cpu": _only(
                result.cpu,
                (
                    "baseline publisher",
                    "baseline consumer",
                    "postgres",
                    "rabbitmq",
                    "receiver",
                    "syncer",
                    "relay",
                    "sim",
                ),
            ),
            "peak_mb": result.peak_mb,
        }

    async def phase_ae_calls(self) -> None:
        records, times = self.o.reassign_records, self.o.reassign_times
        _say(self.o, f"ae-calls: {records} records reassigned {times} times within a minute")
        creates, reassigns, final_owner = self.workload.reassign_rounds(records, times)
        inbox = await self.db.inbox_count()
        await load.post_fast(self.receiver_url, creates, self.o.concurrency)
        inbox += load.unique_notifications(creates)
        await self._settle(inbox, "ae-calls (creating the records)")
        calls_before, refused_before, _ = await self._ae_calls()
        audit = await self.db.last_audit_id()
        before = self.meter.sample()
        started = time.monotonic()
        run = await load.post_fast(self.receiver_url, reassigns, self.o.concurrency)
        inbox += load.unique_notifications(reassigns)
        waited = await self._settle(inbox, "ae-calls")
        after = self.meter.sample()
        calls_after, refused_after, prospects = await self._ae_calls()
        calls = calls_after - calls_before
        notifications = records * times
        ae_user_of = self.fixture.ae_user_of
        by_sf = {p["salesforceId"]: p for p in prospects.values() if p.get("salesforceId")}
        correct = sum(
            1
            for record, owner in final_owner.items()
            if record in by_sf and by_sf[record]["assignedUserId"] == ae_user_of[owner]
        )
        self.results["ae_calls"] = {
            "records": records,
            "times": times,
            "notifications": notifications,
            "messages": len(reassigns),
            "calls": calls,
            "refused_calls": refused_after - refused_before,
            "calls_per_1000": calls / notifications * 1000 if notifications else None,
            "distinct_records": records,
            "distinct_per_1000": records / notifications * 1000 if notifications else None,
            "final_owner_correct": correct,
            "rules": await self.db.rule_counts(audit),
            "post_seconds": run.last_acked - run.first_sent,
            "settle_seconds": time.monotonic() - started,
            "waited_after_post": waited,
            "failed_posts": run.failed,
            "cpu": CpuMeter.share(before, after),
        }

    async def phase_latency(self) -> None:
        rate, seconds = self.o.rate, self.o.latency_seconds
        count = max(1, round(rate * seconds))
        messages = self.workload.mixed(count)
        per_second = rate / load.NOTIFICATIONS_PER_MESSAGE
        _say(
            self.o,
            f"latency: {len(messages)} messages of 100 at {per_second:g}/s "
            f"({rate:,.0f} notifications/s for {seconds:g}s)",
        )
        inbox = await self.db.inbox_count() + load.unique_notifications(messages)
        hist_before = await scrape(self.syncer_metrics)
        cpu_before = self.meter.sample()
        sampler = self._sampler()
        run = await load.post_paced(self.receiver_url, messages, per_second)
        seen, count_now = await self.db.wait_inbox(
            inbox, within=self.o.settle_timeout, check=self.services.check_alive
        )
        cpu_after = self.meter.sample()
        db_time = await sampler.stop()
        if seen is None:
            raise RuntimeError(f"latency: inbox has {count_now}/{inbox} after the phase")
        hist_after = await scrape(self.syncer_metrics)
        buckets = Buckets.difference(hist_before, hist_after, LATENCY_TYPES)
        share, exact = buckets.share_at_most(0.1)
        sent = [p.sent_at for p in run.posted]
        # Notifications sent before the last message, over the time to the last send.
        achieved = (
            sum(p.message.size for p in run.posted[:-1]) / (sent[-1] - sent[0])
            if len(sent) > 1
            else None
        )
        # Our own, exact, measurement of a slightly shorter span: from the client's send to
        # the start of the batch that applied the notification (inbox.processed_at).
        ids = load.event_ids(self.fixture.tenant, messages)
        processed = await self.db.processed_at(list(ids.values()))
        sent_wall = {
            n: p.sent_wall
            for p in run.posted
            if not p.message.duplicate
            for n in p.message.notification_ids
        }
        to_batch = [processed[ids[n]] - t for n, t in sent_wall.items() if ids[n] in processed]
        acks = [p.acked_at - p.sent_at for p in run.posted if p.acked_at is not None]
        lo, hi = buckets.bucket_of(0.99)
        self.results["latency"] = {
            "offered_rate": rate,
            "achieved_rate": achieved,
            "messages": len(messages),
            "notifications": sum(m.size for m in messages),
            "observations": buckets.total,
            "p50": buckets.quantile(0.50),
            "p95": buckets.quantile(0.95),
            "p99": buckets.quantile(0.99),
            "p99_bucket": [lo, None if hi == float("inf") else hi],
            "bucket_edges": [b for b in buckets.bounds if b != float("inf")],
            "share_le_100ms": share,
            "share_le_100ms_exact": exact,
            "max_send_late_ms": max(p.late for p in run.posted) * 1000,
            "ack_ms": _quantiles_ms(acks),
            "send_to_batch_start_ms": _quantiles_ms(to_batch),
            "failed_posts": run.failed,
            "retries": run.retries,
            "cpu": CpuMeter.share(cpu_before, cpu_after),
            "db_time": db_time,
        }
        _say(self.o, "latency: letting the relay drain the effects of the phase")
        self.results["latency"]["drain_seconds"] = await self._settle(inbox, "latency (drain)")

    async def phase_throughput(self) -> None:
        messages = self.workload.mixed(self.o.notifications)
        posted = sum(m.size for m in messages)
        unique = load.unique_notifications(messages)
        _say(
            self.o,
            f"throughput: {len(messages)} messages, {posted:,} notifications "
            f"({unique:,} unique) with {self.o.concurrency} concurrent clients",
        )
        inbox_start = await self.db.inbox_count()
        audit = await self.db.last_audit_id()
        effects_start = await self.db.settled_effects()
        cpu_before = self.meter.sample()
        sampler = self._sampler()
        run = await load.post_fast(self.receiver_url, messages, self.o.concurrency)
        received = self.meter.sample()
        seen, count = await self.db.wait_inbox(
            inbox_start + unique,
            within=max(self.o.settle_timeout, posted / 200),
            check=self.services.check_alive,
        )
        cpu_after = self.meter.sample()
        db_time = await sampler.stop()
        applied = count - inbox_start
        end = seen if seen is not None else time.monotonic()
        effects = await self.db.settled_effects() - effects_start
        self.results["throughput"] = {
            "messages": len(messages),
            "posted": posted,
            "posted_unique": unique,
            "duplicates": posted - unique,
            "stale_sent": sum(m.stale for m in messages if not m.duplicate),
            "applied_unique": applied,
            "complete": seen is not None,
            "received_seconds": run.last_acked - run.first_sent,
            "received_rate": posted / (run.last_acked - run.first_sent),
            "seconds": end - run.first_sent,
            "rate": posted / (end - run.first_sent) if seen is not None else None,
            "applied_rate": applied / (end - run.first_sent),
            "failed_posts": run.failed,
            "retries": run.retries,
            "rules": await self.db.rule_counts(audit),
            "relay_effects_settled": effects,
            "relay_effects_per_s": effects / (end - run.first_sent),
            "outbox_pending_at_end": await self.db.pending_effects(),
            "cpu": CpuMeter.share(cpu_before, cpu_after),
            "cpu_receiving": CpuMeter.share(cpu_before, received),
            "db_time": db_time,
        }

    async def run(self) -> dict[str, Any]:
        ok = False
        try:
            await self.setup()
            await self.phase_baseline()
            await self.phase_ae_calls()
            await self.phase_latency()
            await self.phase_throughput()
            ok = True
        finally:
            await self.teardown(ok)
        return self.results


def _only(cpu: dict[str, float], names: tuple[str, ...]) -> dict[str, float]:
    return {k: v for k, v in cpu.items() if k in names}


def _quantiles_ms(values: list[float]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("max", 1.0)):
        v = exact_quantile(values, q)
        out[name] = v * 1000 if v is not None else None
    return out


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


async def run_bench(options: Options) -> dict[str, Any]:
    return await Bench(options).run()


def main_loop(options: Options) -> dict[str, Any]:
    try:
        import uvloop  # the load generator should cost as little CPU as it can
    except ImportError:
        return asyncio.run(run_bench(options))
    return uvloop.run(run_bench(options))
