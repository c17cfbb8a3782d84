"""One chaos run: a fresh database and queue prefix, the simulators, three fault proxies and the
seven roles as processes; the traffic and the fault schedule at once; a settle wait; the check.

    receiver ──┐                       ┌── pg-proxy ──> Postgres (database chaos_<run>)
    syncer x2  ├── every role talks ───┼── amqp-proxy ─> RabbitMQ (exchange/queues chaos-<run>)
    assigner x2│   through the proxies └── ae-proxy ──> AE simulator     (SF simulator: direct)
    relay x2 ──┘

A role that exits on its own (not killed by the schedule) is started again, as an orchestrator
would, and counted. The harness reads the database and the broker directly, not through the
proxies.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench import db
from bench.procs import REPO, Services, free_port
from bench.run import OWN_SETTINGS
from chaos import traffic
from chaos.model import Figures
from chaos.schedule import ROLES, Plan, Step

TENANT_FILE = REPO / "services" / "demo" / "fixtures" / "salesforce" / "tenant.json"
SF_CLIENT = {
    "OWNERSYNC_SF_CLIENT_ID": "ownersync-sim",
    "OWNERSYNC_SF_CLIENT_SECRET": "ownersync-sim-secret",
}
PROXIES = ("pg-proxy", "amqp-proxy", "ae-proxy")
SLA_SECONDS = 2  # the follow-up SLA of group 7: it runs out several times during a run


@dataclass
class Options:
    plan: Plan
    shape: traffic.Shape
    seed: int
    database_url: str  # the server: the run's own database `chaos_<run>` is made on it
    amqp_url: str
    keep: bool = False  # keep the database and the logs
    quiet: bool = False


@dataclass
class Result:
    figures: Figures
    info: dict[str, Any] = field(default_factory=dict)


def _say(options: Options, text: str) -> None:
    if not options.quiet:
        print(f"[chaos {time.strftime('%H:%M:%S')}] {text}", flush=True)


def _host_port(url: str, default: int) -> tuple[str, int]:
    from urllib.parse import urlsplit

    parts = urlsplit(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    return parts.hostname or "127.0.0.1", parts.port or default


def _via(url: str, port: int) -> str:
    """The same URL with its host and port replaced by the proxy's."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


class Chaos:
    def __init__(self, options: Options) -> None:
        self.o = options
        self.run_id = uuid.uuid4().hex[:8]
        base = db.sqlalchemy_url(options.database_url).rsplit("/", 1)[0]
        self.database_url = f"{base}/chaos_{self.run_id}"
        self.prefix = f"chaos-{self.run_id}"
        self.log_dir = Path(tempfile.mkdtemp(prefix=f"ownersync-chaos-{self.run_id}-"))
        self.ports: dict[str, int] = {}
        self.env = self._base_env()
        self.services = Services(self.log_dir, self.env)
        self.traffic = traffic.build(TENANT_FILE, options.shape, options.seed)
        self.killing: set[str] = set()  # roles the schedule holds down
        self.unplanned_exits: dict[str, int] = {}
        self.faults_played: list[str] = []
        self.http = httpx.AsyncClient(timeout=10.0)

    # ---- set-up

    def _base_env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not (k.startswith("OWNERSYNC_") and k.removeprefix("OWNERSYNC_") in OWN_SETTINGS)
        }
        env.update(
            {
                "OWNERSYNC_DATABASE_URL": self.database_url,
                "OWNERSYNC_AMQP_URL": self.o.amqp_url,
                "OWNERSYNC_EXCHANGE": f"{self.prefix}.events",
                "OWNERSYNC_QUEUE_PREFIX": self.prefix,
                "OWNERSYNC_LOG_LEVEL": "WARNING",
                "OWNERSYNC_METRICS_PORT": "0",
                "OWNERSYNC_SLA_INTERVAL_MS": "200",
                # Bulk mode from a backlog of 10 owner updates, its imports read every 200 ms:
                # the AE outages and lost answers below then hit imports too, not only the
                # one-by-one path.
                "OWNERSYNC_AE_BULK_THRESHOLD": "10",
                "OWNERSYNC_AE_BULK_POLL_MS": "200",
                "PYTHONUNBUFFERED": "1",
            }
        )
        return env

    def _control(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name + '-control']}"

    async def setup(self) -> None:
        _say(self.o, f"database chaos_{self.run_id}, queues {self.prefix}.*, logs {self.log_dir}")
        await db.prepare_database(self.database_url)
        db.ownersync(["migrate"], self.env)
        db.ownersync(["tenant", "load", str(TENANT_FILE)], self.env)
        if self.o.shape.sla_prospects:
            sla = ["groups", "sla", str(traffic.SLA_GROUP), "--sla", f"{SLA_SECONDS}s"]
            db.ownersync([*sla, "--tenant", "acme"], self.env)
        for name in ("ae", "sf", "receiver", *PROXIES, *(p + "-control" for p in PROXIES)):
            self.ports[name] = free_port()
        for role in ROLES[1:]:
            self.ports[role] = free_port()
        receiver_url = f"http://127.0.0.1:{self.ports['receiver']}"
        self.services.start(
            "sim",
            [
                "sim",
                "--tenant",
                str(TENANT_FILE),
                "--port",
                str(self.ports["ae"]),
                "--sf-port",
                str(self.ports["sf"]),
                "--receiver-url",
                receiver_url,
            ],
            health_url=f"http://127.0.0.1:{self.ports['ae']}/_sim/state",
        )
        targets = {
            "pg-proxy": _host_port(self.database_url, 5432),
            "amqp-proxy": _host_port(self.o.amqp_url, 5672),
            "ae-proxy": ("127.0.0.1", self.ports["ae"]),
        }
        for name, (host, port) in targets.items():
            self.services.start(
                name,
                [
                    "--listen",
                    f"127.0.0.1:{self.ports[name]}",
                    "--target",
                    f"{host}:{port}",
                    "--control-port",
                    str(self.ports[name + "-control"]),
                ],
                module="services.sim.netfault",
                health_url=f"{self._control(name)}/state",
            )
        _say(self.o, "starting the simulators and the fault proxies")
        await self.services.wait_ready()
        await self._seed_ae()
        role_env = {
            "OWNERSYNC_DATABASE_URL": _via(self.database_url, self.ports["pg-proxy"]),
            "OWNERSYNC_AMQP_URL": _via(self.o.amqp_url, self.ports["amqp-proxy"]),
            "OWNERSYNC_AE_BASE_URL": f"http://127.0.0.1:{self.ports['ae-proxy']}",
            "OWNERSYNC_SF_BASE_URL": f"http://127.0.0.1:{self.ports['sf']}",
            **SF_CLIENT,
        }
        _say(self.o, "starting receiver, syncer x2, assigner x2, relay x2")
        self.services.start(
            "receiver",
            ["receiver", "--port", str(self.ports["receiver"])],
            health_url=f"{receiver_url}/readyz",
            env=role_env,
        )
        for role in ROLES[1:]:
            command = role.split("-")[0]
            self.services.start(
                role,
                [command],
                health_url=f"http://127.0.0.1:{self.ports[role]}/healthz",
                env={**role_env, "OWNERSYNC_METRICS_PORT": str(self.ports[role])},
            )
        await self.services.wait_ready(within=120.0)

    async def _seed_ae(self) -> None:
        url = f"http://127.0.0.1:{self.ports['ae']}/_sim/prospects"
        for prospect in self.traffic.seeded_prospects:
            answer = await self.http.post(url, json=prospect)
            answer.raise_for_status()

    # ---- the schedule

    async def _sim_faults(self, system: str, settings: dict[str, Any]) -> None:
        port = self.ports["ae" if system == "ae" else "sf"]
        answer = await self.http.post(f"http://127.0.0.1:{port}/_sim/faults", json=settings)
        answer.raise_for_status()

    async def _proxy(self, name: str, verb: str) -> None:
        (await self.http.post(f"{self._control(name)}/{verb}")).raise_for_status()

    async def _outage(self, proxy: str, seconds: float) -> None:
        await self._proxy(proxy, "cut")
        await asyncio.sleep(seconds)
        await self._proxy(proxy, "restore")

    async def _kill(self, role: str) -> None:
        self.killing.add(role)
        try:
            self.services.kill(role)
            await asyncio.sleep(1.0)
            self.services.restart(role)
        finally:
            self.killing.discard(role)

    async def _slow(self, ms: int, seconds: float) -> None:
        await self._sim_faults("ae", {"latency_ms": ms})
        await asyncio.sleep(seconds)
        await self._sim_faults("ae", {"latency_ms": 0})

    async def play_step(self, step: Step) -> None:
        a = step.action
        if a == "kill":
            await self._kill(step.target)
        elif a in ("pg_drop", "amqp_drop"):
            await self._proxy("pg-proxy" if a == "pg_drop" else "amqp-proxy", "drop")
        elif a in ("pg_cut", "amqp_cut", "ae_down"):
            proxy = {"pg_cut": "pg-proxy", "amqp_cut": "amqp-proxy", "ae_down": "ae-proxy"}[a]
            await self._outage(proxy, step.seconds)
        elif a in ("ae_lose", "sf_lose"):
            lose = {"lose_answers_after_apply": step.count, "lost_answer": "disconnect"}
            await self._sim_faults(a[:2], lose)
        elif a == "ae_429":
            await self._sim_faults(
                "ae",
                {
                    "fail_next": step.count,
                    "fail_status": 429,
                    "retry_after": str(int(step.seconds)),
                },
            )
        elif a == "ae_5xx":
            await self._sim_faults("ae", {"fail_next": step.count, "fail_status": 503})
        elif a == "sf_5xx":
            await self._sim_faults("sf", {"server_errors": step.count})
        elif a == "ae_slow":
            await self._slow(step.count, step.seconds)

    async def run_schedule(self, start: float) -> None:
        tasks = []
        for step in sorted(self.o.plan.steps, key=lambda s: s.at):
            delay = start + step.at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            _say(self.o, step.describe())
            self.faults_played.append(step.describe())
            tasks.append(asyncio.create_task(self.play_step(step)))
        await asyncio.gather(*tasks)

    async def supervise(self) -> None:
        """Start again any role that exited without being killed by the schedule."""
        while True:
            await asyncio.sleep(0.5)
            for role in ROLES:
                service = self.services.items[role]
                if role not in self.killing and not service.alive():
                    code = service.proc.returncode
                    self.unplanned_exits[role] = self.unplanned_exits.get(role, 0) + 1
                    _say(self.o, f"{role} exited on its own ({code}): started again")
                    self.services.restart(role)

    # ---- settle and check

    async def _broker_depths(self) -> dict[str, int]:
        from services.common.broker.rabbit import RabbitBroker

        broker = RabbitBroker(
            self.o.amqp_url, exchange=self.env["OWNERSYNC_EXCHANGE"], queue_prefix=self.prefix
        )
        try:
            return await broker.queue_depths()
        finally:
            await broker.close()

    async def _parked_reasons(self) -> dict[str, int]:
        """The parked messages by their reason's first words (peeked: they stay parked)."""
        from services.common.broker.dead_letters import dead_letter_store
        from services.common.broker.rabbit import RabbitBroker

        broker = RabbitBroker(
            self.o.amqp_url, exchange=self.env["OWNERSYNC_EXCHANGE"], queue_prefix=self.prefix
        )
        try:
            parked = await dead_letter_store(broker).peek(1000)
        finally:
            await broker.close()
        reasons: dict[str, int] = {}
        for message in parked:
            key = f"{message.queue}: {message.reason[:70]}"
            reasons[key] = reasons.get(key, 0) + 1
        return dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:5])

    async def _outbox(self, conn: asyncpg.Connection) -> dict[str, int]:
        rows = await conn.fetch("select status, count(*) from outbox group by status")
        return {r[0]: int(r[1]) for r in rows}

    async def _quiet(self, conn: asyncpg.Connection) -> bool:
        depths = await self._broker_depths()
        outbox = await self._outbox(conn)
        sf = (await self.http.get(f"http://127.0.0.1:{self.ports['sf']}/_sim/state")).json()
        clocks = await conn.fetchval(
            "select count(*) from sla_timers where state in ('pending', 'running', 'waiting')"
        )
        return (
            _unsettled(depths, outbox) == 0
            and sf.get("outbound_pending", 0) == 0
            and int(clocks) == 0
        )

    async def settle(self, conn: asyncpg.Connection) -> float:
        """Until the queues, the outbox and the SF outbound queue are empty twice in a row, or
        the plan's settle time is up."""
        start = time.monotonic()
        quiet = 0
        while quiet < 2 and time.monotonic() - start < self.o.plan.settle_seconds:
            await asyncio.sleep(1.0)
            with contextlib.suppress(Exception):
                quiet = quiet + 1 if await self._quiet(conn) else 0
        return time.monotonic() - start

    async def check(self, conn: asyncpg.Connection) -> Result:
        ae = (await self.http.get(f"http://127.0.0.1:{self.ports['ae']}/_sim/state")).json()
        sf = (await self.http.get(f"http://127.0.0.1:{self.ports['sf']}/_sim/state")).json()
        figures = self.traffic.model.check(ae["prospects"], sf["leads"].values())
        depths = await self._broker_depths()
        outbox = await self._outbox(conn)
        figures.dead_lettered = depths.get("dead-letters", 0) + outbox.get("dead", 0)
        figures.stuck = _unsettled(depths, outbox)
        self.traffic.model.check_sla_clocks(await self._sla_chains(conn), figures)
        fired_twice = await conn.fetchval(
            "select count(*) from (select source_id from audit_log where rule = 'A9' "
            "group by source_id having count(*) > 1) twice"
        )
        for _ in range(int(fired_twice)):
            figures.count("duplicated", "an SLA clock fired twice (A9)")
        expected = sorted(self.traffic.unique_event_ids)
        seen = await conn.fetchval(
            "select count(*) from inbox where event_id::text = any($1::text[])", expected
        )
        info: dict[str, Any] = {
            "run": self.run_id,
            "seed": self.o.seed,
            "plan": self.o.plan.name,
            "sf_records": len(self.traffic.model.sf_records),
            "ae_prospects": len(self.traffic.model.ae_prospects),
            "sla_prospects": len(self.traffic.model.sla_prospects),
            "sends": self.traffic.send_count,
            "events": len(expected),
            "events_in_inbox": int(seen),
            "broker": depths,
            "outbox": outbox,
            "ae_imports": dict(Counter(str(i.get("status")) for i in ae.get("imports", []))),
            "dead_effect_reasons": await self._dead_reasons(conn),
            "parked_reasons": await self._parked_reasons() if depths.get("dead-letters") else {},
            "unplanned_exits": dict(self.unplanned_exits),
            "restarts": {n: s.restarts for n, s in self.services.items.items() if s.restarts},
        }
        return Result(figures, info)

    async def _sla_chains(self, conn: asyncpg.Connection) -> dict[int, list[str]]:
        """Each prospect's SLA clock states, oldest first."""
        rows = await conn.fetch(
            "select r.prospect_id, array_agg(t.state order by t.id) from sla_timers t "
            "join records r on r.id = t.record_id group by r.prospect_id"
        )
        return {int(r[0]): list(r[1]) for r in rows if r[0] is not None}

    async def _dead_reasons(self, conn: asyncpg.Connection) -> dict[str, int]:
        """The outbox's dead effects by their error's first words."""
        rows = await conn.fetch(
            "select left(coalesce(last_error, ''), 60), count(*) from outbox "
            "where status = 'dead' group by 1 order by 2 desc limit 5"
        )
        return {r[0]: int(r[1]) for r in rows}

    # ---- the run

    async def run(self) -> Result:
        began = time.monotonic()
        ok = False
        supervisor: asyncio.Task[None] | None = None
        try:
            await self.setup()
            supervisor = asyncio.create_task(self.supervise())
            plan = self.o.plan
            _say(
                self.o,
                f"{plan.name}: {self.traffic.send_count} sends over {plan.traffic_seconds:g}s, "
                f"{len(plan.steps)} faults (seed {self.o.seed})",
            )
            start = time.monotonic()
            receiver_url = f"http://127.0.0.1:{self.ports['receiver']}"
            schedule = asyncio.create_task(self.run_schedule(start))
            stats = await traffic.play(
                receiver_url, self.traffic, plan.traffic_seconds, bursts=plan.bursts
            )
            await schedule
            _say(
                self.o,
                f"traffic done: {stats.acked}/{stats.sent} acked, {stats.retries} retries; "
                f"settling (at most {plan.settle_seconds:g}s)",
            )
            conn = await asyncpg.connect(db.asyncpg_url(self.database_url))
            try:
                waited = await self.settle(conn)
                result = await self.check(conn)
            finally:
                await conn.close()
            result.info.update(
                {
                    "settle_seconds": round(waited, 1),
                    "acked": stats.acked,
                    "unacked": len(stats.unacked),
                    "post_retries": stats.retries,
                    "faults": self.faults_played,
                    "wall_seconds": round(time.monotonic() - began),  # teardown not included
                }
            )
            ok = result.figures.ok
            return result
        finally:
            if supervisor is not None:
                supervisor.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await supervisor
            await self.teardown(ok)

    async def teardown(self, ok: bool) -> None:
        self.services.stop(timeout=15.0)
        await self.http.aclose()
        with contextlib.suppress(Exception):
            await self._delete_topology()
        if not self.o.keep:
            with contextlib.suppress(Exception):
                await _drop_database(self.database_url)
        if ok and not self.o.keep:
            shutil.rmtree(self.log_dir, ignore_errors=True)
        else:
            _say(self.o, f"role logs kept in {self.log_dir}")

    async def _delete_topology(self) -> None:
        from services.common.broker.rabbit import RabbitBroker

        broker = RabbitBroker(
            self.o.amqp_url, exchange=self.env["OWNERSYNC_EXCHANGE"], queue_prefix=self.prefix
        )
        try:
            await broker.delete_topology()
        finally:
            await broker.close()


SETTLED = {"done", "superseded", "dead"}  # outbox statuses that end an effect


def _unsettled(depths: dict[str, int], outbox: dict[str, int]) -> int:
    """Messages still queued for work (the work queues and the delayed-retry queue, when
    there is one; not the parked ones) plus effects not yet settled (pending, sending, ...)."""
    queued = sum(n for queue, n in depths.items() if queue != "dead-letters")
    return queued + sum(n for status, n in outbox.items() if status not in SETTLED)


async def _drop_database(url: str) -> None:
    """Drop this run's own database (its name starts with chaos_; only our sessions use it)."""
    name = db.asyncpg_url(url).rsplit("/", 1)[1]
    if not name.startswith("chaos_"):
        raise ValueError(f"not a chaos database: {name!r}")
    maintenance = db.asyncpg_url(url).rsplit("/", 1)[0] + "/postgres"
    conn = await asyncpg.connect(maintenance)
    try:
        await conn.execute(f'drop database if exists "{name}" with (force)')
    finally:
        await conn.close()


def main_loop(options: Options) -> Result:
    return asyncio.run(Chaos(options).run())
