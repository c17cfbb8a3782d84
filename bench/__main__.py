"""`python -m bench` (`make bench`): ownersync end to end against the real Postgres and RabbitMQ.

Starts sim, receiver, assigner, syncer and relay as separate processes on a database of its
own and a queue prefix of its own, posts SF outbound messages of 100 notifications and signed AE
webhooks over HTTP and prints each figure beside its target and beside a raw aio-pika + asyncpg
baseline measured in the same run. Not a test: it exits 0 when targets are missed; 1 only when
it could not measure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from rich.console import Console

from bench.run import Options, main_loop

DEFAULT_DB = "postgresql+asyncpg://postgres@127.0.0.1:5432/ownersync_bench"
DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/"

QUICK = {
    "notifications": 3000,
    "latency_seconds": 3.0,
    "reassign_records": 20,
    "reassign_times": 3,
    "webhooks": 10,
    "drain_timeout": 3.0,
    "bulk_burst": 2000,
}


def _levels(text: str) -> tuple[int, ...]:
    """--preload 1000000,3000000 (or 1e6,3e6): rows per table at each level."""
    try:
        levels = tuple(int(float(part)) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of row counts: {text!r}") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("row counts are >= 1")
    return levels


def _fractions(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of fractions: {text!r}") from None
    if not values or not all(0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError("fractions lie in (0, 1]")
    return values


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="ownersync benchmark: throughput, latency, memory and AE calls, beside a "
        "raw aio-pika + asyncpg baseline, against the real Postgres and RabbitMQ.",
    )
    p.add_argument("--notifications", type=int, help="throughput phase size [100000]")
    p.add_argument(
        "--latency-seconds", type=float, help="length of the fixed-rate phase, seconds [20]"
    )
    p.add_argument(
        "--rate",
        type=float,
        help="offered notifications/s of the latency phase [fractions of the measured capacity]",
    )
    p.add_argument(
        "--fractions",
        type=_fractions,
        default=(0.25, 0.5),
        help="latency phases at these fractions of the throughput just measured [0.25,0.5]",
    )
    p.add_argument(
        "--preload",
        type=_levels,
        default=(),
        metavar="N[,N...]",
        help="after the phases, fill records, inbox, audit_log and outbox with N rows each "
        "(several levels: a trend) and measure the throughput again at each [none]",
    )
    p.add_argument(
        "--webhooks",
        type=int,
        help="AE webhooks per kind of assignment in the AE-to-SF phase [300]",
    )
    p.add_argument(
        "--no-relay-rate",
        action="store_true",
        help="skip the relay's sustained-rate phase (bench/relay_rate.py)",
    )
    p.add_argument(
        "--ae-latency-ms",
        metavar="MS[-MS]",
        help="the AE simulator of the phases answers in this many ms (a range: uniformly "
        "within it), as AE does (100-300); the relay is then held to AE's 5 calls at once "
        "and takes the CPU it would beside the roles in production [at once]",
    )
    p.add_argument(
        "--again-with-ae-latency-ms",
        metavar="MS[-MS]",
        default="100-300",
        help="after the latency phases, the highest fraction again with the AE simulator "
        "answering in this many ms, as AE does: the relay is then held to AE's pace instead of "
        "taking a core (with the simulator's) beside the roles; '' skips it [100-300]",
    )
    p.add_argument(
        "--again-without-relay",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="after those, the highest fraction again with the relay stopped for the phase "
        "(started again before the drain): the decision path's latency with nothing sent "
        "beside it, to tell its own share from the relay's [on]",
    )
    p.add_argument(
        "--bulk-burst",
        type=int,
        help="reassignments of the relay phase's burst, bulk mode on: AE calls per 1,000 "
        "changed records [50,000; --quick: 2,000; 0: no burst]",
    )
    p.add_argument("--reassign-records", type=int, help="records of the AE-calls phase [200]")
    p.add_argument("--reassign-times", type=int, help="reassignments of each record [5]")
    p.add_argument("--baseline-notifications", type=int, help="baseline size [= --notifications]")
    p.add_argument("--concurrency", type=int, default=8, help="concurrent HTTP clients [8]")
    p.add_argument(
        "--database-url",
        default=os.environ.get("OWNERSYNC_BENCH_DATABASE_URL", DEFAULT_DB),
        help="the benchmark's own database: created if missing, its schema dropped "
        f"[OWNERSYNC_BENCH_DATABASE_URL or {DEFAULT_DB}]",
    )
    p.add_argument(
        "--amqp-url",
        default=os.environ.get("OWNERSYNC_BENCH_AMQP_URL", DEFAULT_AMQP),
        help=f"RabbitMQ [OWNERSYNC_BENCH_AMQP_URL or {DEFAULT_AMQP}]",
    )
    p.add_argument(
        "--settle-timeout", type=float, default=300.0, help="longest wait for a phase, s [300]"
    )
    p.add_argument(
        "--analyze-every",
        type=float,
        help="ANALYZE inbox, records, outbox, audit_log every SECONDS during the run, as "
        "autovacuum would [10 when the server's autovacuum is off, else 0 = never]",
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        help="longest wait for the relay to empty the outbox between phases; what is left is "
        "reported (a 100,000-notification burst leaves AE tens of thousands of effects: the "
        "relay's rate is its own figure) [60; --quick: 3]",
    )
    p.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke-sized run: 3,000 notifications, 3 s per latency phase, 20 records x 3, "
        "10 webhooks per kind",
    )
    args = p.parse_args(argv)
    defaults = (
        QUICK
        if args.quick
        else {
            "notifications": 100_000,
            "latency_seconds": 20.0,
            "reassign_records": 200,
            "reassign_times": 5,
            "webhooks": 300,
            "drain_timeout": min(60.0, args.settle_timeout),
            "bulk_burst": 50_000,
        }
    )
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.baseline_notifications is None:
        args.baseline_notifications = args.notifications
    if args.reassign_times < 1 or args.reassign_records < 1 or args.notifications < 100:
        p.error("--notifications >= 100, --reassign-records and --reassign-times >= 1")
    if args.webhooks < 0:
        p.error("--webhooks >= 0")
    from services.sim.ae import latency_range

    for flag, value in (
        ("--ae-latency-ms", args.ae_latency_ms),
        ("--again-with-ae-latency-ms", args.again_with_ae_latency_ms),
    ):
        try:
            if value:
                latency_range(value)
        except ValueError as exc:
            p.error(f"{flag}: {exc}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    options = Options(
        notifications=args.notifications,
        latency_seconds=args.latency_seconds,
        rate=args.rate,
        reassign_records=args.reassign_records,
        reassign_times=args.reassign_times,
        database_url=args.database_url,
        amqp_url=args.amqp_url,
        concurrency=args.concurrency,
        baseline_notifications=args.baseline_notifications,
        settle_timeout=args.settle_timeout,
        analyze_every=args.analyze_every,
        fractions=args.fractions,
        preload=args.preload,
        webhooks=args.webhooks,
        relay_rate=not args.no_relay_rate,
        bulk_burst=max(args.bulk_burst, 0),
        drain_timeout=args.drain_timeout,
        ae_latency_ms=args.ae_latency_ms,
        again_with_ae_latency_ms=args.again_with_ae_latency_ms or None,
        again_without_relay=args.again_without_relay,
    )
    console = Console(emoji=False, highlight=False)
    if not console.is_terminal:
        console = Console(emoji=False, highlight=False, width=150)
    try:
        results = main_loop(options)
    except KeyboardInterrupt:
        print("[bench] interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # could not measure: say why, exit 1
        print(f"[bench] failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    from bench.report import render

    render(results, console)
    if args.json:
        print(json.dumps(results, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
