"""`python -m chaos` (`make chaos`): every role as a process under a schedule of faults, then a
model checker. Exits 0 only when lost, duplicated, wrong-owner, dead-lettered and stuck are
all 0 after the settle wait; 1 when they are not; 2 when the run could not be made."""

from __future__ import annotations

import argparse
import json
import os
import sys

from chaos.run import Options, Result, main_loop
from chaos.schedule import full_plan, short_plan
from chaos.traffic import Shape

DEFAULT_DB = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/"

SHORT = Shape(
    sf_records=400,
    sf_reassign_messages=30,
    ae_prospects=120,
    bursts=3,
    burst_records=400,
    sla_prospects=20,
)
FULL = Shape(
    sf_records=2000,
    sf_reassign_messages=150,
    ae_prospects=500,
    bursts=9,
    burst_records=600,
    sla_prospects=60,
)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m chaos",
        description="ownersync under faults: receiver, 2 syncers, 2 assigners and 2 relays as "
        "processes on the real Postgres and RabbitMQ (through fault proxies) with the SF and AE "
        "simulators; SF and AE traffic with duplicates and reordering; a checker of the owners.",
    )
    p.add_argument("--short", action="store_true", help="every fault once: 3 minutes at most")
    p.add_argument("--seed", type=int, default=1, help="the traffic's seed [1]")
    p.add_argument(
        "--database-url",
        default=os.environ.get("OWNERSYNC_CHAOS_DATABASE_URL", DEFAULT_DB),
        help="the Postgres server: the run makes its own database chaos_<run> there and drops "
        f"it at the end [OWNERSYNC_CHAOS_DATABASE_URL or {DEFAULT_DB}]",
    )
    p.add_argument(
        "--amqp-url",
        default=os.environ.get("OWNERSYNC_CHAOS_AMQP_URL", DEFAULT_AMQP),
        help=f"RabbitMQ [OWNERSYNC_CHAOS_AMQP_URL or {DEFAULT_AMQP}]",
    )
    p.add_argument("--keep", action="store_true", help="keep the run's database and role logs")
    p.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    return p.parse_args(argv)


def render(result: Result) -> None:
    f, info = result.figures, result.info
    print()
    print(
        f"chaos {info['plan']} (run {info['run']}, seed {info['seed']}): "
        f"{info['sf_records']} SF records, {info['ae_prospects']} AE prospects, "
        f"{info['sends']} sends ({info['unacked']} never acked), "
        f"settled in {info['settle_seconds']}s, {info['wall_seconds']}s in all"
    )
    for name in (*f.FAILING, "unlinked"):
        value = getattr(f, name)
        mark = "" if name == "unlinked" else ("  ok" if value == 0 else "  FAIL")
        print(f"  {name.replace('_', '-'):<14}{value:>6}{mark}")
        for example in f.examples.get(name, []):
            print(f"      {example}")
    print(
        f"  inbox: {info['events_in_inbox']}/{info['events']} events played; "
        f"outbox {info['outbox']}; broker {info['broker']}; "
        f"AE imports (bulk mode) by status {info.get('ae_imports') or {}}"
    )
    if info["dead_effect_reasons"]:
        print(f"  dead effects by reason: {info['dead_effect_reasons']}")
    if info["parked_reasons"]:
        print(f"  parked messages by reason: {info['parked_reasons']}")
    if info["unplanned_exits"]:
        print(f"  roles that exited on their own (started again): {info['unplanned_exits']}")
    print("  result: " + ("ok" if f.ok else "FAILED (every count above must be 0)"))


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    options = Options(
        plan=short_plan() if args.short else full_plan(),
        shape=SHORT if args.short else FULL,
        seed=args.seed,
        database_url=args.database_url,
        amqp_url=args.amqp_url,
        keep=args.keep,
    )
    try:
        result = main_loop(options)
    except KeyboardInterrupt:
        print("[chaos] interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # could not run: say why
        print(f"[chaos] failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    render(result)
    if args.json:
        print(json.dumps({**result.figures.as_dict(), **result.info}, default=str), flush=True)
    return 0 if result.figures.ok else 1


if __name__ == "__main__":
    sys.exit(main())
