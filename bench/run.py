"""One benchmark run: set up, start the roles, measure the phases, stop, and collect figures.

Phases, in this order (the figures are printed in the issue's order):
  1. baseline   raw aio-pika + asyncpg, while the roles sit idle on the same services
  2. ae-calls   records reassigned several times within a minute: AE calls vs records changed,
                and receipt of each record's last change to the AE call carrying it
  3. ae-to-sf   signed AE webhooks (assign to a user, round robin, the active rule) until SF
                has the lead: webhooks/s end to end and receipt to the SF call; run while the
                outbox is empty, so that SF calls queue behind nothing
  4. throughput as fast as the receiver acks: notifications/s received and applied end to end
                (the capacity the next phase takes fractions of)
  5. latency    25% and 50% of that capacity (or --rate): receipt-to-decision, and receipt to
                the AE call; then 50% again with the AE simulator answering in 100-300 ms, as AE
                does (--again-with-ae-latency-ms), instead of at once; then 50% again with the
                relay stopped (--again-without-relay): the decision path alone, no effect sent
  6. preload    (--preload) the tables filled with N rows each, then throughput again
  7. relay      the relay's sustained AE rate (bench/relay_rate.py)
Between phases the relay is left to empty the outbox (for at most --drain-timeout), so a phase
does not pay for the backlog of the previous one; what it left is reported.
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

from bench import baseline, db, engagement, load, preload
from bench.dbwait import DbSampler
from bench.histogram import Buckets, exact_quantile, gc_pauses, pause_summary, scrape
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
    rate: float | None  # None: fractions of the measured capacity
    reassign_records: int
    reassign_times: int
    database_url: str
    amqp_url: str
    concurrency: int
    baseline_notifications: int
    settle_timeout: float
    analyze_every: float | None = None  # None: every 10 s when the server's autovacuum is off
    quiet: bool = False
    fractions: tuple[float, ...] = (0.25, 0.5)
    preload: tuple[int, ...] = ()  # rows per table, cumulative levels
    webhooks: int = 300  # per kind of assignment, in the AE-to-SF phase
    relay_rate: bool = True  # run bench/relay_rate.py's phase when it exists
    bulk_burst: int = 0  # reassignments of the relay phase's bulk-mode burst (0: none)
    drain_timeout: float | None = None  # None: settle_timeout
    ae_latency_ms: str | None = None  # the AE simulator's answer time ("100-300"); None: at once
    # The highest fraction again, the AE simulator answering in this many ms (None: not run).
    again_with_ae_latency_ms: str | None = None
    # The highest fraction again with the relay stopped for the phase.
    again_without_relay: bool = False


_STARTED = time.monotonic()


def _say(options: Options, text: str) -> None:
    if not options.quiet:
        print(f"[bench {time.monotonic() - _STARTED:6.1f}s] {text}", flush=True)


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
                "fractions": list(options.fractions),
                "preload": list(options.preload),
                "webhooks": options.webhooks,
                "reassign_records": options.reassign_records,
                "reassign_times": options.reassign_times,
                "concurrency": options.concurrency,
                "baseline_notifications": options.baseline_notifications,
                "ae_latency_ms": options.ae_latency_ms,
                "cores": _cores(),
                "settings": _tuning(),
                "run": self.run_id,
            }
        }

    # ---- setup and teardown

    async def setup(self) -> None:
        _say(self.o, f"database {db.asyncpg_url(self.o.database_url)}: reset and migrate")
        await db.prepare_database(self.o.database_url)
        if self.o.preload:  # before minutes of other phases: refused now if it cannot fit
            where = await preload.data_directory(self.o.database_url)
            _say(self.o, preload.check_disk(where, max(self.o.preload)))
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
                f"autovacuum is {'on' if autovacuum else 'off'} on this server: every {every:g}s "
                f"ANALYZE whichever of {', '.join(db.BUSY_TABLES)} autovacuum would "
                "(--analyze-every 0: never)",
            )
            self.analyzer = db.Analyzer(self.o.database_url, every)
            self.analyzer.start()
        for name in ("ae", "sf", "receiver", "assigner", "syncer", "relay"):
            self.ports[name] = free_port()
        ae, sf = self.ports["ae"], self.ports["sf"]
        _say(
            self.o,
            f"starting sim, receiver, assigner, syncer, relay (queues bench-{self.run_id}.*)",
        )
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
            "assigner",
            ["assigner"],
            health_url=f"http://127.0.0.1:{self.ports['assigner']}/healthz",
            env={"OWNERSYNC_METRICS_PORT": str(self.ports["assigner"])},
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
        if self.o.ae_latency_ms:  # the same setting the AE-like latency phase makes for itself
            await self._ae_latency(self.o.ae_latency_ms)

    @property
    def receiver_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['receiver']}"

    @property
    def syncer_metrics(self) -> str:
        return f"http://127.0.0.1:{self.ports['syncer']}/metrics"

    @property
    def sf_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['sf']}"

    @property
    def ae_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['ae']}"

    async def teardown(self, ok: bool) -> None:
        if self.analyzer is not None:
            await self.analyzer.stop()
            self.results["config"]["analyze_runs"] = self.analyzer.runs
            self.results["config"]["analyzed"] = dict(self.analyzer.tables)
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
        pids = {n: self.services.items[n].pid for n in ("receiver", "assigner", "syncer", "relay")}
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

    async def _drain(self, target: int, phase: str) -> dict[str, Any]:
        """Let the relay catch up (at most --drain-timeout); what still waited is reported,
        not fatal: a slow relay is a figure, not a failed run."""
        within = self.o.settle_timeout if self.o.drain_timeout is None else self.o.drain_timeout
        ok, waited = await self.db.wait_settled(
            target, within=within, check=self.services.check_alive
        )
        pending = 0 if ok else await self.db.pending_effects()
        if not ok:
            _say(self.o, f"{phase}: {pending:,} effects still pending after {waited:.0f}s")
        return {"drained": ok, "drain_seconds": waited, "pending_after_drain": pending}

    async def _receipt_to_ae(self, posted: list[load.Posted]) -> dict[str, Any]:
        """Per record: its last change's send time to the AE write that carries that owner
        (the prospect's updatedAt in the simulator): coalescing and the relay included."""
        _, _, prospects = await self._ae_calls()
        by_sf = {p["salesforceId"]: p for p in prospects.values() if p.get("salesforceId")}
        delays: list[float] = []
        no_call = not_in_ae = 0
        for record, (sent, owner) in load.last_moves(posted).items():
            user = self.fixture.ae_user_of.get(owner)
            if user is None:
                continue  # an unconnected owner: AE keeps its owner, no call (S4)
            prospect = by_sf.get(record)
            if prospect is None or prospect.get("assignedUserId") != user:
                not_in_ae += 1
                continue
            at = engagement.epoch(prospect["updatedAt"])
            if at < sent:
                no_call += 1  # AE already had the owner: nothing to send
                continue
            delays.append(at - sent)
        return {
            "records": len(delays),
            "no_call_needed": no_call,
            "not_in_ae": not_in_ae,
            **_quantiles_ms(delays),
        }

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
                    "assigner",
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
            "receipt_to_ae_ms": await self._receipt_to_ae(run.posted),
        }

    async def phase_latencies(self) -> None:
        """At fractions of the capacity the throughput phase just measured, or at --rate."""
        capacity = self.results["throughput"]["rate"]
        plan: list[tuple[float | None, float]]
        if self.o.rate is not None:
            plan = [(None, self.o.rate)]
        elif capacity:
            plan = [(f, f * capacity) for f in self.o.fractions]
        else:
            raise RuntimeError("latency: the throughput phase measured no capacity")
        runs = []
        for fraction, rate in plan:
            runs.append(await self.phase_latency(rate, fraction))
        self.results["latency_runs"] = runs
        self.results["latency"] = runs[-1]  # the highest fraction: the one the target is at
        again = self.o.again_with_ae_latency_ms
        if again and not self.o.ae_latency_ms:
            # The sim answering at once lets the relay send as fast as its CPU allows (a core
            # with the sim's, beside the roles); AE itself holds it to 5 calls of 100-300 ms.
            fraction, rate = plan[-1]
            sim = await self._ae_latency(again)
            try:
                run = await self.phase_latency(rate, fraction)
            finally:
                await self._ae_latency(None)
            run["ae_latency_ms"] = again
            run["ae_sim_latency"] = [sim["latency_ms"], sim["latency_max_ms"]]
            self.results["latency_ae_like"] = run
        if self.o.again_without_relay:
            # What the relay's draining costs the decision path: the same rate with no relay
            # (and so no AE or SF call) beside the roles; it starts again before the drain.
            fraction, rate = plan[-1]
            self.results["latency_without_relay"] = await self.phase_latency(
                rate, fraction, relay_stopped=True
            )

    async def _ae_latency(self, latency: str | None) -> dict[str, Any]:
        """Set how long the AE simulator takes to answer ("100-300"; None: at once); returns
        its fault settings as it took them."""
        from services.sim.ae import latency_range

        low, high = latency_range(latency) if latency else (0.0, None)
        async with httpx.AsyncClient(timeout=10) as client:
            answer = await client.post(
                f"{self.ae_url}/_sim/faults", json={"latency_ms": low, "latency_max_ms": high}
            )
            answer.raise_for_status()
            taken: dict[str, Any] = answer.json()
            return taken

    async def phase_latency(
        self, rate: float, fraction: float | None, *, relay_stopped: bool = False
    ) -> dict[str, Any]:
        """One paced phase, then the drain; `relay_stopped`: the relay is stopped (SIGTERM,
        graceful) before the phase and started again once every notification is decided."""
        if relay_stopped:
            self.services.pause("relay")
        try:
            result, posted, inbox = await self._measure_latency(rate, fraction, relay_stopped)
        finally:
            if relay_stopped:
                self.services.restart("relay")
                await self.services.wait_ready(names=["relay"])
        _say(self.o, "latency: letting the relay drain the effects of the phase")
        result.update(await self._drain(inbox, "latency"))
        # With the relay stopped the AE calls wait for the phase to end: not a figure of it.
        if not relay_stopped:
            result["receipt_to_ae_ms"] = await self._receipt_to_ae(posted)
        return result

    async def _measure_latency(
        self, rate: float, fraction: float | None, relay_stopped: bool
    ) -> tuple[dict[str, Any], list[load.Posted], int]:
        """The phase's figures, the messages as posted, and the inbox count it reached."""
        seconds = self.o.latency_seconds
        count = max(1, round(rate * seconds))
        messages = self.workload.mixed(count)
        per_second = rate / load.NOTIFICATIONS_PER_MESSAGE
        part = "" if fraction is None else f", {fraction:.0%} of capacity"
        if relay_stopped:
            part += ", the relay stopped,"
        _say(
            self.o,
            f"latency: {len(messages)} messages of 100 at {per_second:.2f}/s "
            f"({rate:,.0f} notifications/s{part} for {seconds:g}s)",
        )
        inbox = await self.db.inbox_count() + load.unique_notifications(messages)
        hist_before = await scrape(self.syncer_metrics)
        gc_metrics = {"syncer": self.syncer_metrics, "receiver": f"{self.receiver_url}/metrics"}
        gc_before = {role: await gc_pauses(url) for role, url in gc_metrics.items()}
        cpu_before = self.meter.sample()
        sampler = self._sampler()
        run = await load.post_paced(self.receiver_url, messages, per_second)
        stopped = ("relay",) if relay_stopped else ()
        seen, count_now = await self.db.wait_inbox(
            inbox,
            within=self.o.settle_timeout,
            check=lambda: self.services.check_alive(stopped),
        )
        cpu_after = self.meter.sample()
        db_time = await sampler.stop()
        if seen is None:
            raise RuntimeError(f"latency: inbox has {count_now}/{inbox} after the phase")
        hist_after = await scrape(self.syncer_metrics)
        pauses = {
            role: pause_summary(gc_before[role], await gc_pauses(url))
            for role, url in gc_metrics.items()
        }
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
        result: dict[str, Any] = {
            "fraction": fraction,
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
            "gc_pauses": pauses,
            "relay_stopped": relay_stopped,
        }
        return result, run.posted, inbox

    async def phase_throughput(self, label: str = "throughput") -> dict[str, Any]:
        messages = self.workload.mixed(self.o.notifications)
        posted = sum(m.size for m in messages)
        unique = load.unique_notifications(messages)
        _say(
            self.o,
            f"{label}: {len(messages)} messages, {posted:,} notifications "
            f"({unique:,} unique) with {self.o.concurrency} concurrent clients",
        )
        inbox_start = await self.db.inbox_count()
        audit = await self.db.last_audit_id()
        outbox_start = await self.db.last_outbox_id()
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
        effects = await self.db.settled_effects(outbox_start)
        return {
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

    async def phase_ae_to_sf(self) -> None:
        """Per kind of assignment: webhooks as fast as acked (webhooks/s until SF has every
        lead), then paced at half that rate (receipt to the SF call, p50/p95/p99)."""
        out: dict[str, Any] = {}
        secret = self.fixture.webhook_secret
        for kind in engagement.KINDS:
            row: dict[str, Any] = {}
            fast = engagement.webhooks(kind, self.o.webhooks, self.run_id)
            await engagement.seed_prospects(self.ae_url, fast)
            _say(self.o, f"ae-to-sf: {len(fast)} webhooks {kind}, as fast as acked")
            started = time.monotonic()
            await engagement.post(
                self.receiver_url, self.fixture.tenant, secret, fast, concurrency=self.o.concurrency
            )
            created = await engagement.wait_leads(
                self.sf_url, fast, self.o.settle_timeout, self.services.check_alive
            )
            first = min(h.sent_wall for h in fast)
            row["webhooks"] = len(fast)
            row["leads"] = len(created)
            row["refused"] = sum(1 for h in fast if h.status not in (200, 202))
            row["rate"] = len(created) / (max(created.values()) - first) if created else None
            row["fast_ms"] = _quantiles_ms(_to_sf(fast, created))
            row["fast_seconds"] = time.monotonic() - started
            if row["rate"]:
                paced = engagement.webhooks(kind, self.o.webhooks, self.run_id)
                await engagement.seed_prospects(self.ae_url, paced)
                rate = row["rate"] / 2
                _say(self.o, f"ae-to-sf: {len(paced)} webhooks {kind} at {rate:.0f}/s")
                await engagement.post(
                    self.receiver_url, self.fixture.tenant, secret, paced, per_second=rate
                )
                done = await engagement.wait_leads(
                    self.sf_url, paced, self.o.settle_timeout, self.services.check_alive
                )
                row["paced_rate"] = rate
                row["paced_leads"] = len(done)
                row["paced_ms"] = _quantiles_ms(_to_sf(paced, done))
            out[kind] = row
        self.results["ae_to_sf"] = out
        inbox = await self.db.inbox_count()
        self.results["ae_to_sf_drain"] = await self._drain(inbox, "ae-to-sf")

    async def phase_preload(self) -> None:
        """Each level: the tables filled up to N rows, then the throughput phase again, beside
        the empty database's figure."""
        f = self.fixture
        owners = preload.Owners(f.tenant, f.connected, tuple(f.ae_user_of[u] for u in f.connected))
        # The reference: the same phase again, just before the first load, so that warm-up (the
        # first phase pays for it) and the relay's backlog weigh the same on both sides.
        await self._drain(await self.db.inbox_count(), "preload")
        reference = await self.phase_throughput("throughput before the preload")
        empty = reference["rate"]
        self.results["preload_reference"] = {
            k: reference[k] for k in ("rate", "received_rate", "complete", "cpu", "db_time")
        }
        loaded, levels = 0, []
        for level in sorted(set(self.o.preload)):
            if level <= loaded:
                continue
            await self._drain(await self.db.inbox_count(), "preload")
            # The relay stops while the tables have no keys: what it still had to send would
            # deadlock with the dropping of keys, or be written unchecked; it goes on after.
            self.services.pause("relay")
            _say(self.o, f"preload: {level - loaded:,} more rows in each table (to {level:,})")
            took = await preload.preload(self.o.database_url, owners, loaded, level - loaded)
            self.services.restart("relay")
            await self.services.wait_ready(names=["relay"])
            loaded = level
            sizes = await preload.table_sizes(self.o.database_url)
            _say(
                self.o,
                f"preload: {level:,} rows each in {took['load_seconds']:.0f}s "
                f"(+{took['index_seconds']:.0f}s building the indexes, "
                f"+{took['vacuum_analyze_seconds']:.0f}s VACUUM ANALYZE, "
                + (
                    "no CHECKPOINT: not allowed)"
                    if took["checkpoint_seconds"] is None
                    else f"+{took['checkpoint_seconds']:.0f}s CHECKPOINT)"
                ),
            )
            t = await self.phase_throughput(f"throughput at {level:,} rows")
            levels.append(
                {
                    "rows": level,
                    **took,
                    "tables": sizes,
                    "rate": t["rate"],
                    "received_rate": t["received_rate"],
                    "ratio_to_empty": t["rate"] / empty if t["rate"] and empty else None,
                    "complete": t["complete"],
                    "cpu": t["cpu"],
                    "db_time": t["db_time"],
                }
            )
        self.results["preload"] = levels

    async def phase_relay(self) -> None:
        """The relay's sustained AE rate against a simulator answering in 100-300 ms, and its
        writes per record of a reassign-5-times burst (`bench.relay_rate`), on a database of
        its own. A quick run sends fewer effects."""
        from bench.relay_rate import relay_phase

        quick = self.o.notifications < 10_000
        effects, records, times = (250, 50, 3) if quick else (2000, 200, 5)
        database_url = (
            self.o.database_url.rsplit("/", 1)[0] + "/" + db.database_name(self.o.database_url)
        )
        _say(self.o, "relay: the sustained AE rate (bench.relay_rate)")
        try:
            self.results["relay_rate"] = await relay_phase(
                database_url=database_url + "_relay",
                amqp_url=self.o.amqp_url,
                quiet=self.o.quiet,
                effects=effects,
                reassign_records=records,
                reassign_times=times,
                bulk_burst=self.o.bulk_burst,
            )
        except Exception as exc:  # the phase failing is a finding, not a lost run
            self.results["relay_rate"] = {"error": f"{type(exc).__name__}: {exc}"}

    async def run(self) -> dict[str, Any]:
        ok = False
        try:
            await self.setup()
            await self.phase_baseline()
            await self.phase_ae_calls()
            if self.o.webhooks:  # while the outbox is empty: SF calls queue behind nothing
                await self.phase_ae_to_sf()
            self.results["throughput"] = await self.phase_throughput()
            self.results["throughput"].update(
                await self._drain(await self.db.inbox_count(), "throughput")
            )
            await self.phase_latencies()
            if self.o.preload:
                await self.phase_preload()
            ok = True
        finally:
            await self.teardown(ok)
        if self.o.relay_rate:  # after teardown: it starts processes of its own
            await self.phase_relay()
        return self.results


def _to_sf(hooks: list[engagement.Webhook], created: dict[str, float]) -> list[float]:
    return [created[h.email.lower()] - h.sent_wall for h in hooks if h.email.lower() in created]


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
