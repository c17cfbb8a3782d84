"""Prometheus metrics: what flowed, how fast, and what is waiting. Served at /metrics."""

from __future__ import annotations

import bisect
import gc
import itertools
import math
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable
from typing import Protocol

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import REGISTRY, Collector

from services.common.domain import Rule

EVENTS_RECEIVED = Counter(
    "ownersync_events_received_total", "Notifications and webhooks received", ["type"]
)
EVENTS_REFUSED = Counter(
    "ownersync_events_refused_total",
    "Inbound calls refused by a receiver: unauthenticated, timestamps from the future, …",
    ["source", "reason"],
)
EVENTS_PUBLISHED = Counter(
    "ownersync_events_published_total", "Events confirmed by the broker", ["type"]
)
EVENTS_APPLIED = Counter(
    "ownersync_events_applied_total", "Decisions committed, by rule", ["type", "rule"]
)
EVENTS_SKIPPED = Counter(
    "ownersync_events_skipped_total",
    "Events that changed nothing: duplicates (S8/DUP), stale (S7), refusals and no-ops",
    ["type", "rule"],
)
SLA_TOTAL = Counter(
    "ownersync_sla_total",
    "Follow-up SLAs ended: met (worked in time) or missed (expired), per group and member",
    ["group", "member", "outcome"],
)
EVENTS_DEAD_LETTERED = Counter(
    "ownersync_events_dead_lettered_total", "Events parked in the dead-letter queue", ["queue"]
)
RECEIPT_TO_DECISION = Histogram(
    "ownersync_receipt_to_decision_seconds",
    "From the receiver's receipt to the committed decision",
    ["type"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
BATCH_SIZE = Histogram(
    "ownersync_consumer_batch_size",
    "Events per consumed batch",
    ["queue"],
    buckets=(1, 2, 5, 10, 25, 50, 100, 200, 500),
)
OUTBOX_DEPTH = Gauge("ownersync_outbox_depth", "Effects waiting to be sent", ["target"])
RELAY_TENANT_HELD = Gauge(
    "ownersync_relay_tenant_held",
    "1 while a tenant's effects are held because its connection cannot be used",
    ["tenant"],
)
AE_BULK_IMPORTS = Counter(
    "ownersync_ae_bulk_imports_total",
    "AE imports (bulk mode) by how they ended: complete, put_back (not processed: sent again), "
    "failed (its rows go one by one), abandoned (left to their leases)",
    ["tenant", "outcome"],
)
AE_BULK_RECORDS = Counter(
    "ownersync_ae_bulk_records_total",
    "Records claimed by bulk mode by outcome: imported, failed (then one by one), unchanged "
    "(no call: AE holds that owner), not_bulk (no longer an owner update: one by one)",
    ["tenant", "outcome"],
)
OUTBOX_AGE = Gauge(
    "ownersync_outbox_oldest_age_seconds", "Age of the oldest effect waiting", ["target"]
)
EFFECTS_WAITING = Gauge(
    "ownersync_effects_waiting",
    "Effects not sent yet (pending: due, backing off after a failure, or waiting for AE's quota)",
    ["tenant"],
)
EFFECTS_OLDEST_AGE = Gauge(
    "ownersync_effects_oldest_waiting_age_seconds",
    "Age of the tenant's oldest effect not sent yet",
    ["tenant"],
)
EFFECTS_DEAD = Gauge("ownersync_effects_dead", "Effects refused for good, by tenant", ["tenant"])

# Decisions that change nothing anywhere.
NO_CHANGE_RULES = frozenset({Rule.S3, Rule.S7, Rule.S8, Rule.A0, Rule.A3, Rule.STALE, Rule.DUP})


class CountsCalls(Protocol):
    @property
    def outcomes(self) -> Tally[str]: ...


class ApiCallCollector(Collector):
    """Reads the SF/AE clients' outcome tallies (and AE's quota) at scrape time."""

    def __init__(self) -> None:
        self.clients: dict[tuple[str, str], CountsCalls] = {}

    def track(self, system: str, client: CountsCalls, tenant: str = "") -> None:
        """Count `client`'s calls under `system`; `tenant` names a tenant's own client
        (its calls are added to the system's, its quota is shown under its name)."""
        self.clients[(system, tenant)] = client

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        calls = CounterMetricFamily(
            "ownersync_api_calls", "Calls to SF and AE by outcome", labels=["system", "outcome"]
        )
        quota = GaugeMetricFamily(
            "ownersync_ae_quota_remaining",
            "AE daily API calls left (when a quota is set), by tenant ('' for the default)",
            labels=["tenant"],
        )
        totals: Tally[tuple[str, str]] = Tally()
        for (system, tenant), client in self.clients.items():
            for outcome, count in client.outcomes.items():
                totals[(system, outcome)] += count
            remaining = getattr(client, "quota_remaining", None)
            if system == "ae" and remaining is not None:
                quota.add_metric([tenant], remaining)
        for (system, outcome), count in totals.items():
            calls.add_metric([system, outcome], count)
        yield calls
        yield quota


API_CALLS = ApiCallCollector()
REGISTRY.register(API_CALLS)


class HeartbeatCollector(Collector):
    """How long each worker's consume loop has been silent, read at scrape time: the loop
    beats while it is alive, idle or holding a batch, so a growing age is a stuck consumer."""

    def __init__(self) -> None:
        self.silent_for: dict[str, Callable[[], float]] = {}

    def track(self, role: str, silent_for: Callable[[], float]) -> None:
        self.silent_for[role] = silent_for

    def collect(self) -> Iterable[GaugeMetricFamily]:
        age = GaugeMetricFamily(
            "ownersync_worker_heartbeat_age_seconds",
            "Seconds since the worker's consume loop last beat",
            labels=["role"],
        )
        for role, silent_for in self.silent_for.items():
            age.add_metric([role], silent_for())
        yield age


HEARTBEATS = HeartbeatCollector()
REGISTRY.register(HEARTBEATS)


class GcPauseCollector(Collector):
    """How long each garbage collection stopped this process, per generation (2 = full): the
    stalls a latency tail is made of. Counted in plain lists by a `gc` callback (no lock that
    a collection could meet half-taken), read at scrape time."""

    BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, math.inf)

    def __init__(self) -> None:
        self.counts = [[0] * len(self.BOUNDS) for _ in range(3)]
        self.sums = [0.0, 0.0, 0.0]
        self._started = 0.0

    def watch(self) -> None:
        """Time this process's collections from now on (a role process calls it once)."""
        if self._observe not in gc.callbacks:
            gc.callbacks.append(self._observe)

    def _observe(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        generation = info["generation"]
        self.sums[generation] += took
        self.counts[generation][bisect.bisect_left(self.BOUNDS, took)] += 1

    def collect(self) -> Iterable[HistogramMetricFamily]:
        pauses = HistogramMetricFamily(
            "ownersync_gc_pause_seconds",
            "How long each garbage collection stopped the process (generation 2: full)",
            labels=["generation"],
        )
        for generation, counts in enumerate(self.counts):
            cumulative = list(itertools.accumulate(counts))
            buckets = [
                ("+Inf" if math.isinf(bound) else repr(bound), float(count))
                for bound, count in zip(self.BOUNDS, cumulative, strict=True)
            ]
            pauses.add_metric([str(generation)], buckets, self.sums[generation])
        yield pauses


GC_PAUSES = GcPauseCollector()
REGISTRY.register(GC_PAUSES)


def record_decision(event_type: str, rule: str, refused: bool = False, count: int = 1) -> None:
    counter = EVENTS_SKIPPED if refused or rule in NO_CHANGE_RULES else EVENTS_APPLIED
    counter.labels(event_type, rule).inc(count)


def metrics_response() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def worker_app(health: Callable[[], dict[str, str]] | None = None) -> FastAPI:
    """The small HTTP face of a worker process: /healthz and /metrics.

    `health` names each role's state ("ok" or why not); /healthz answers 503 unless all are ok."""
    app = FastAPI(title="ownersync worker", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        roles = health() if health is not None else {}
        healthy = all(state == "ok" for state in roles.values())
        return JSONResponse(
            {"status": "ok" if healthy else "unhealthy", **roles},
            status_code=200 if healthy else 503,
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        return metrics_response()

    return app
