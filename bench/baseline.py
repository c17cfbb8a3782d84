"""The raw baseline: what RabbitMQ + Postgres cost through the same Python client libraries.

Two processes, like ownersync's receiver and syncer: a publisher (aio-pika, publisher
confirms, persistent messages to a fresh quorum queue, `concurrency` batches of 100 in flight)
and a consumer (manual per-message acks after each batch of up to 100 is inserted with asyncpg
in one transaction). No parsing, no decisions, no audit, no outbox: the floor ownersync is
compared with. The orchestrator side (`run_baseline`) creates the queue and the scratch table,
starts both processes, and drops both afterwards.

    python -m bench.baseline publish --amqp-url … --queue Q --count N --body-bytes B
    python -m bench.baseline consume --amqp-url … --queue Q --database-url … --count N
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import aio_pika
import asyncpg

from bench.db import asyncpg_url
from bench.procs import REPO, CpuMeter

TABLE = "bench.baseline_events"
BATCH = 100


def sample_event_body(tenant: str, org_record: str, owner: str) -> bytes:
    """The JSON of one event exactly as ownersync's receiver publishes it (~600 bytes)."""
    from services.common.messages import (
        SF_RECORD_REASSIGNED,
        SfRecord,
        SfRecordEvent,
        dump_event,
        event_id_for,
    )

    now = datetime.now(UTC)
    event = SfRecordEvent(
        type=SF_RECORD_REASSIGNED,
        tenant=tenant,
        event_id=event_id_for(tenant, "sf", "04l5g0000u45n6cAAA"),
        source_id="04l5g0000u45n6cAAA",
        occurred_at=now,
        received_at=now,
        payload=SfRecord(
            object="Lead",
            record_id=org_record,
            owner_id=owner,
            email="lead000000001@bench.example.com",
            system_modstamp=now,
            created_date=now,
            action_id="04k5g0000ECR19BAQT",
        ),
    )
    return dump_event(event)


# --- the two worker processes -------------------------------------------------------------


async def publish(amqp_url: str, queue: str, count: int, body: bytes, concurrency: int) -> None:
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel(publisher_confirms=True)
    exchange = channel.default_exchange
    template = body
    marker = b"04l5g0000u45n6cAAA"
    batches = [range(start, min(start + BATCH, count)) for start in range(0, count, BATCH)]
    work: asyncio.Queue[range] = asyncio.Queue()
    for batch in batches:
        work.put_nowait(batch)

    async def one_batch(batch: range) -> None:
        messages = []
        for n in batch:
            message_id = str(uuid.uuid4())
            messages.append(
                aio_pika.Message(
                    template.replace(marker, f"{n:018d}".encode()),
                    content_type="application/json",
                    message_id=message_id,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                )
            )
        await asyncio.gather(
            *(exchange.publish(m, routing_key=queue, mandatory=True) for m in messages)
        )

    async def publisher() -> None:
        while not work.empty():
            await one_batch(work.get_nowait())

    started = time.time()
    await asyncio.gather(*(publisher() for _ in range(concurrency)))
    published = time.time()
    await connection.close()
    print(json.dumps({"started_at": started, "published_at": published}), flush=True)


async def consume(amqp_url: str, queue_name: str, database_url: str, count: int) -> None:
    db = await asyncpg.connect(asyncpg_url(database_url))
    insert = await db.prepare(f"insert into {TABLE} (id, body) values ($1, $2)")
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=300)
    queue = await channel.get_queue(queue_name, ensure=False)
    inbox: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
    await queue.consume(inbox.put, no_ack=False)
    print(json.dumps({"ready": True}), flush=True)
    done = 0
    while done < count:
        batch = [await inbox.get()]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.02):  # ownersync's default batch wait
                while len(batch) < BATCH:
                    batch.append(await inbox.get())
        async with db.transaction():
            await insert.executemany([(m.message_id, m.body) for m in batch])
        for message in batch:
            await message.ack()
        done += len(batch)
    finished = time.time()
    await connection.close()
    await db.close()
    print(json.dumps({"done_at": finished, "count": done}), flush=True)


# --- the orchestrator side ----------------------------------------------------------------


@dataclass
class BaselineResult:
    count: int
    body_bytes: int
    seconds: float
    publish_seconds: float
    cpu: dict[str, float]
    peak_mb: dict[str, float | None]

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    @property
    def publish_rate(self) -> float:
        return self.count / self.publish_seconds


async def run_baseline(
    *,
    amqp_url: str,
    database_url: str,
    queue: str,
    count: int,
    body: bytes,
    concurrency: int,
    meter: CpuMeter,
    within: float,
) -> BaselineResult:
    from bench.procs import peak_rss_mb

    db = await asyncpg.connect(asyncpg_url(database_url))
    await db.execute(
        f"create schema if not exists bench; drop table if exists {TABLE}; "
        f"create table {TABLE} (id text primary key, body bytea not null)"
    )
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": "quorum"})
    base = [sys.executable, "-m", "bench.baseline"]
    consume_args = ["--database-url", database_url, "--count", str(count)]
    consumer = subprocess.Popen(  # noqa: ASYNC220 (spawning does not block)
        [*base, "consume", "--amqp-url", amqp_url, "--queue", queue, *consume_args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    publisher: subprocess.Popen[bytes] | None = None
    try:
        assert consumer.stdout is not None
        ready = await asyncio.to_thread(consumer.stdout.readline)
        if not ready:
            raise RuntimeError("the baseline consumer did not start")
        meter.extra["baseline consumer"] = consumer.pid
        publish_args = ["--count", str(count), "--body-hex", body.hex(), "--concurrency"]
        publisher = subprocess.Popen(  # noqa: ASYNC220 (spawning does not block)
            [
                *base,
                "publish",
                "--amqp-url",
                amqp_url,
                "--queue",
                queue,
                *publish_args,
                str(concurrency),
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        meter.extra["baseline publisher"] = publisher.pid
        before = meter.sample()
        assert publisher.stdout is not None
        published = json.loads(await asyncio.to_thread(publisher.stdout.readline) or "{}")
        publisher_peak = peak_rss_mb(publisher.pid)
        mid = meter.sample()
        consumed = json.loads(
            await asyncio.wait_for(asyncio.to_thread(consumer.stdout.readline), within) or "{}"
        )
        consumer_peak = peak_rss_mb(consumer.pid)
        after = meter.sample()
        if "started_at" not in published or "done_at" not in consumed:
            raise RuntimeError("the baseline processes did not report their times")
        cpu = CpuMeter.share(before, after)
        # The publisher exits before the consumer: its share over its own lifetime is the fair one.
        cpu["baseline publisher"] = CpuMeter.share(before, mid).get("baseline publisher", 0.0)
        rows = int(await db.fetchval(f"select count(*) from {TABLE}"))
        if rows != count:
            raise RuntimeError(f"baseline wrote {rows} rows, expected {count}")
        return BaselineResult(
            count=count,
            body_bytes=len(body),
            seconds=consumed["done_at"] - published["started_at"],
            publish_seconds=published["published_at"] - published["started_at"],
            cpu=cpu,
            peak_mb={"baseline publisher": publisher_peak, "baseline consumer": consumer_peak},
        )
    finally:
        meter.extra.pop("baseline consumer", None)
        meter.extra.pop("baseline publisher", None)
        for proc in (publisher, consumer):
            if proc is not None and proc.poll() is None:
                proc.kill()
            if proc is not None:
                proc.wait()
        with contextlib.suppress(Exception):
            await channel.queue_delete(queue, if_unused=False, if_empty=False)
        await connection.close()
        with contextlib.suppress(Exception):
            await db.execute(f"drop table if exists {TABLE}")
        await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline")
    sub = parser.add_subparsers(dest="role", required=True)
    pub = sub.add_parser("publish")
    con = sub.add_parser("consume")
    for p in (pub, con):
        p.add_argument("--amqp-url", required=True)
        p.add_argument("--queue", required=True)
        p.add_argument("--count", type=int, required=True)
    pub.add_argument("--body-hex", required=True)
    pub.add_argument("--concurrency", type=int, default=8)
    con.add_argument("--database-url", required=True)
    args = parser.parse_args()
    if args.role == "publish":
        body = bytes.fromhex(args.body_hex)
        asyncio.run(publish(args.amqp_url, args.queue, args.count, body, args.concurrency))
    else:
        asyncio.run(consume(args.amqp_url, args.queue, args.database_url, args.count))


if __name__ == "__main__":
    main()
