"""The printout: each figure beside its target (and the baseline), then where the CPU went."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.table import Table

TARGET_RATIO = 1.0  # end to end / the raw baseline of the same run
TARGET_P99 = 0.100  # seconds at TARGET_FRACTION of the capacity just measured
TARGET_FRACTION = 0.5
TARGET_MB = 150  # per process
TARGET_PRELOAD = 0.9  # throughput with the preload / on the empty database
ROLES = ("receiver", "assigner", "syncer", "relay")
CPU_ORDER = (
    "receiver",
    "assigner",
    "syncer",
    "relay",
    "sim",
    "postgres",
    "rabbitmq",
    "bench (load)",
    "baseline publisher",
    "baseline consumer",
)


def _verdict(ok: bool | None) -> str:
    if ok is None:
        return "[yellow]n/a[/yellow]"
    return "[green]pass[/green]" if ok else "[red]miss[/red]"


def _ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1000:.1f} ms"


def _rate(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}/s"


def _ms_value(ms: float | None) -> str:
    return "–" if ms is None else f"{ms:,.0f} ms"


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}x"


def _edge(value: float | None) -> str:
    return "+Inf" if value is None or math.isinf(value) else f"{value:g}"


def verdicts(r: dict[str, Any]) -> dict[str, bool | None]:
    """pass/miss per target, also put in the JSON."""
    t, lat, ae = r.get("throughput", {}), r.get("latency", {}), r.get("ae_calls", {})
    out: dict[str, bool | None] = {}
    rate, base = t.get("rate"), r.get("baseline", {}).get("rate")
    r["ratio_to_baseline"] = rate / base if rate and base else None
    out["throughput"] = None if not rate or not base else rate / base >= TARGET_RATIO
    share, exact = lat.get("share_le_100ms"), lat.get("share_le_100ms_exact")
    if share is not None and exact:
        out["p99"] = share >= 0.99
    else:
        p99 = lat.get("p99")
        out["p99"] = None if p99 is None else p99 <= TARGET_P99
    mem = r.get("memory_mb", {})
    out["memory"] = (
        all(mem.get(role, math.inf) <= TARGET_MB for role in ROLES)
        if all(role in mem for role in ROLES)
        else None
    )
    calls = ae.get("calls")
    out["ae_calls"] = None if calls is None else calls <= ae["distinct_records"]
    ratios = [p["ratio_to_empty"] for p in r.get("preload", [])]
    out["preload"] = None if not ratios or None in ratios else min(ratios) >= TARGET_PRELOAD
    return out


def render(r: dict[str, Any], console: Console) -> None:
    cfg = r["config"]
    t, lat, base, ae = r["throughput"], r["latency"], r["baseline"], r["ae_calls"]
    mem = r.get("memory_mb", {})
    v = verdicts(r)
    r["verdicts"] = v

    s = cfg["settings"]
    console.print(
        f"\n[bold]ownersync benchmark[/bold]  run {cfg['run']}, {cfg['cores']} cores, "
        f"{cfg['concurrency']} concurrent clients; syncer batch {s['batch_size']} / "
        f"wait {s['batch_wait_ms']} ms / prefetch {s['prefetch']}; relay coalesce "
        f"{s['relay_coalesce_ms']} ms, interval {s['relay_interval_ms']} ms, "
        f"AE concurrency {s['ae_max_concurrency']}; AE simulator answers "
        + (f"in {cfg['ae_latency_ms']} ms" if cfg.get("ae_latency_ms") else "at once")
    )
    if not cfg.get("autovacuum", True):
        every = cfg.get("analyze_every") or 0
        console.print(
            "Postgres autovacuum is OFF on this server: "
            + (
                f"every {every:g}s the bench ANALYZEd each busy table whose changed rows "
                "passed autovacuum's threshold (50 + 10% of its rows), as autovacuum would: "
                + (
                    ", ".join(f"{t} x{n}" for t, n in sorted(cfg["analyzed"].items()))
                    if cfg.get("analyzed")
                    else "none was due"
                )
                + "."
                if every
                else "nothing analyzes the tables (--analyze-every 0); plans cached while "
                "they were empty stay."
            )
        )

    table = Table(title="Figures and targets", title_justify="left", show_lines=False)
    table.add_column("figure")
    table.add_column("result", justify="right")
    table.add_column("target", justify="right")
    table.add_column("", justify="center")

    table.add_row(
        f"End to end, receipt -> decision committed ({t['posted']:,} notifications)",
        _rate(t["rate"]) if t["complete"] else f"incomplete ({t['applied_unique']:,} applied)",
        "",
        "",
    )
    table.add_row("  received (acked by the receiver)", _rate(t["received_rate"]), "", "")
    table.add_row(
        f"  raw baseline: aio-pika confirms + asyncpg 100-row txns ({base['notifications']:,})",
        _rate(base["rate"]),
        "",
        "",
    )
    ratio = r["ratio_to_baseline"]
    table.add_row(
        "  [bold]ownersync / baseline[/bold]",
        _ratio(ratio),
        f">= {TARGET_RATIO:.1f}x",
        _verdict(v["throughput"]),
    )
    again = [r[k] for k in ("latency_ae_like", "latency_without_relay") if r.get(k)]
    for run in [*r.get("latency_runs", [lat]), *again]:
        last = run is lat
        lo, hi = run["p99_bucket"]
        of = "" if run.get("fraction") is None else f"{run['fraction']:.0%} of capacity, "
        if run.get("ae_latency_ms"):
            of = f"{of}AE sim answering in {run['ae_latency_ms']} ms as AE does, "
        if run.get("relay_stopped"):
            of = f"{of}relay stopped (the decision path alone), "
        table.add_row(
            f"Receipt -> decision at {of}{run['offered_rate']:,.0f}/s offered "
            f"({run['achieved_rate'] or 0:,.0f}/s sent, {run['notifications']:,}): p50 / p95",
            f"{_ms(run['p50'])} / {_ms(run['p95'])}",
            "",
            "",
        )
        table.add_row(
            f"  p99 (bucket-interpolated; lies in ({_edge(lo)}, {_edge(hi)}] s)",
            _ms(run["p99"]),
            f"<= {TARGET_P99 * 1000:.0f} ms" if last else "",
            _verdict(v["p99"]) if last else "",
        )
        share = run["share_le_100ms"]
        table.add_row(
            "  decisions within 100 ms"
            + (" (exact: 0.1 s is a bucket edge)" if run["share_le_100ms_exact"] else " (interp.)"),
            "–" if share is None else f"{share * 100:.2f}%",
            ">= 99%" if last else "",
            "",
        )
        if to_ae := run.get("receipt_to_ae_ms"):
            table.add_row(
                f"  receipt -> AE call, p50 / p99 ({to_ae['records']:,} records' last change)",
                f"{_ms_value(to_ae['p50'])} / {_ms_value(to_ae['p99'])}",
                "",
                "",
            )
    for role in (*ROLES, "sim"):
        if role in mem:
            is_role = role in ROLES
            table.add_row(
                f"Peak memory (VmHWM), {role}" + ("" if is_role else " (simulator, not a role)"),
                f"{mem[role]:.0f} MB",
                f"<= {TARGET_MB} MB" if is_role else "",
                _verdict(mem[role] <= TARGET_MB) if is_role else "",
            )
    table.add_row(
        f"AE calls per 1,000 reassignment notifications ({ae['records']} records x "
        f"{ae['times']} within a minute)",
        f"{ae['calls_per_1000']:.0f}",
        f"<= {ae['distinct_per_1000']:.0f}",
        _verdict(v["ae_calls"]),
    )
    table.add_row(
        "  AE writes per distinct changed record",
        f"{ae['calls'] / ae['distinct_records']:.2f} ({ae['calls']} / {ae['distinct_records']})",
        "<= 1",
        "",
    )
    if to_ae := ae.get("receipt_to_ae_ms"):
        table.add_row(
            "  receipt of a record's last change -> the AE call, coalescing included: p50 / p99",
            f"{_ms_value(to_ae['p50'])} / {_ms_value(to_ae['p99'])}",
            "",
            "",
        )
    table.add_row(
        "Relay: AE effects settled per second during the throughput phase",
        _rate(t["relay_effects_per_s"]),
        "",
        "",
    )
    sustained = r.get("relay_rate", {}).get("rate")
    if sustained:
        table.add_row(
            "Relay: sustained AE writes/s with AE answering in 100-300 ms (bench.relay_rate)",
            f"{sustained['rate']:.1f}/s",
            f"5 / mean latency = {sustained['ceiling']:.1f}/s",
            "",
        )
    for level in r.get("preload", []):
        table.add_row(
            f"End to end with {level['rows']:,} rows in records, inbox, audit_log, outbox",
            _rate(level["rate"]),
            "",
            "",
        )
        ratio = level["ratio_to_empty"]
        table.add_row(
            "  / the same just before the preload (nearly empty database)",
            _ratio(ratio),
            f">= {TARGET_PRELOAD:.1f}x",
            _verdict(None if ratio is None else ratio >= TARGET_PRELOAD),
        )
    console.print(table)
    _ae_to_sf_table(r, console)
    _preload_table(r, console)
    _relay_rate(r, console)

    _cpu_table(r, console)
    _db_table(r, console)
    _notes(r, console)


def _ae_to_sf_table(r: dict[str, Any], console: Console) -> None:
    kinds = r.get("ae_to_sf")
    if not kinds:
        return
    table = Table(
        title="AE -> SF: signed AE webhooks until SF has the lead (receipt = the webhook's send; "
        "the SF call = the lead's CreatedDate in the SF simulator)",
        title_justify="left",
    )
    for col in (
        "assignment",
        "webhooks/s end to end",
        "p50 / p99 flat out",
        "paced at",
        "p50 / p95 / p99 paced",
    ):
        table.add_column(col, justify="left" if col == "assignment" else "right")
    for kind, row in kinds.items():
        fast, paced = row.get("fast_ms", {}), row.get("paced_ms", {})
        missing = row["webhooks"] - row["leads"]
        table.add_row(
            kind + (f" ({missing} leads missing)" if missing else ""),
            _rate(row["rate"]),
            f"{_ms_value(fast.get('p50'))} / {_ms_value(fast.get('p99'))}",
            _rate(row.get("paced_rate")),
            " / ".join(_ms_value(paced.get(q)) for q in ("p50", "p95", "p99")),
        )
    console.print(table)


def _preload_table(r: dict[str, Any], console: Console) -> None:
    levels = r.get("preload")
    if not levels:
        return
    table = Table(
        title="Cost as data grows: rows per table, the time to load them (generated in "
        "Postgres, indexes built after), sizes, and end-to-end throughput vs the same phase "
        "just before the first load, in this run",
        title_justify="left",
    )
    for col in (
        "rows each",
        "insert s",
        "indexes s",
        "VACUUM ANALYZE s",
        "MB (rec/inbox/audit/outbox)",
        "end to end",
        "/ empty",
    ):
        table.add_column(col, justify="right")
    empty = r.get("preload_reference", r["throughput"])["rate"]
    table.add_row("~0 (just before)", "", "", "", "", _rate(empty), "1.00x")
    for level in levels:
        sizes = level["tables"]
        mb = " / ".join(
            f"{sizes.get(t, {}).get('mb', 0):,.0f}"
            for t in ("records", "inbox", "audit_log", "outbox")
        )
        ratio = level["ratio_to_empty"]
        indexes = level.get("index_seconds")  # absent from runs before indexes were rebuilt
        table.add_row(
            f"{level['rows']:,}",
            f"{level['load_seconds']:.0f}",
            "" if indexes is None else f"{indexes:.0f}",
            f"{level['vacuum_analyze_seconds']:.0f}",
            mb,
            _rate(level["rate"]),
            _ratio(ratio),
        )
    console.print(table)


def _relay_rate(r: dict[str, Any], console: Console) -> None:
    """The relay phase's own printout (bench/relay_rate.py `render`)."""
    relay = r.get("relay_rate")
    if not relay:
        return
    if "error" in relay:
        console.print(f"Relay rate phase failed: {relay['error']}")
        return
    from bench.relay_rate import render

    console.print(render(relay))


def _cpu_table(r: dict[str, Any], console: Console) -> None:
    latencies = [
        (name, r[key]["cpu"])
        for key, name in (
            ("latency", "latency"),
            ("latency_ae_like", "latency, AE-like"),
            ("latency_without_relay", "latency, no relay"),
        )
        if r.get(key)
    ]
    phases = [
        ("baseline", r["baseline"]["cpu"]),
        ("ae-calls", r["ae_calls"]["cpu"]),
        *latencies,
        ("throughput: receiving", r["throughput"]["cpu_receiving"]),
        ("throughput: to last decision", r["throughput"]["cpu"]),
    ]
    table = Table(
        title=f"CPU by process, % of one core ({r['config']['cores']} cores = "
        f"{r['config']['cores'] * 100}%); a Python role tops out at 100%",
        title_justify="left",
    )
    table.add_column("process")
    for name, _ in phases:
        table.add_column(name, justify="right")
    names = [n for n in CPU_ORDER if any(n in cpu for _, cpu in phases)]
    for name in names:
        table.add_row(name, *(f"{cpu[name]:.0f}" if name in cpu else "" for _, cpu in phases))
    table.add_row(
        "[bold]total[/bold]", *(f"{sum(c.get(n, 0.0) for n in names):.0f}" for _, c in phases)
    )
    console.print(table)


def _db_table(r: dict[str, Any], console: Console, top: int = 5) -> None:
    phases = [
        ("latency", r["latency"].get("db_time", {})),
        ("throughput", r["throughput"].get("db_time", {})),
    ]
    table = Table(
        title="Inside Postgres transactions, % of wall time (pg_stat_activity every 50 ms; "
        "'in Python' = Postgres waits for the role between statements, after the one named; "
        "'waiting for a lock' = blocked by a row another transaction holds)",
        title_justify="left",
    )
    table.add_column("role")
    table.add_column("where: statement")
    for name, _ in phases:
        table.add_column(name, justify="right")
    for role in ("syncer", "relay", "receiver"):
        shares = [d.get(role, {}) for _, d in phases]
        keys = sorted(
            {k for d in shares for k in d if k != "in a transaction"},
            key=lambda k: -max(d.get(k, 0.0) for d in shares),
        )[:top]
        if not keys:
            continue
        for i, key in enumerate(["in a transaction", *keys]):
            label = f"[bold]{key}[/bold]" if i == 0 else f"  {key}"
            table.add_row(
                role if i == 0 else "", label, *(f"{d.get(key, 0.0) * 100:.0f}" for d in shares)
            )
    console.print(table)


def limits(cpu: dict[str, float], cores: int) -> str:
    """A plain reading of one phase's CPU figures."""
    python = {k: v for k, v in cpu.items() if k in (*ROLES, "sim")}
    top, top_cpu = max(python.items(), key=lambda kv: kv[1], default=("?", 0.0))
    total = sum(cpu.values())
    parts = []
    if top_cpu >= 85:
        parts.append(f"{top} is CPU-bound ({top_cpu:.0f}% of its one core: one event loop)")
    if total >= cores * 100 * 0.85:
        parts.append(f"the machine is saturated ({total:.0f}% of {cores * 100}%)")
    if not parts:
        parts.append(
            f"no process is CPU-bound (busiest: {top} {top_cpu:.0f}%, total {total:.0f}%): "
            "waits (I/O, batching, confirms) dominate"
        )
    return "; ".join(parts)


def _db_note(role: str, shares: dict[str, dict[str, float]], cpu: dict[str, float]) -> str:
    mine = shares.get(role, {})
    parts = {k: v for k, v in mine.items() if k != "in a transaction"}
    if not parts:
        return ""
    top = max(parts, key=lambda k: parts[k])
    return (
        f"the {role} was inside a transaction {mine['in a transaction']:.0%} of the time, "
        f"{parts[top]:.0%} '{top}', on {cpu.get(role, 0.0):.0f}% CPU"
    )


def _notes(r: dict[str, Any], console: Console) -> None:
    t, lat, base, ae = r["throughput"], r["latency"], r["baseline"], r["ae_calls"]
    cores = r["config"]["cores"]
    rules = ", ".join(f"{k} x{v:,}" for k, v in sorted(t["rules"].items()))
    lines = [
        f"Throughput: {t['posted']:,} notifications posted in {t['messages']} messages "
        f"({t['duplicates']:,} duplicates re-posted, {t['stale_sent']:,} stale); "
        f"applied {t['applied_unique']:,} of {t['posted_unique']:,} unique in "
        f"{t['seconds']:.1f}s (received in {t['received_seconds']:.1f}s); decisions: {rules}.",
        f"  CPU: receiving: {limits(t['cpu_receiving'], cores)}; "
        f"to the last decision: {limits(t['cpu'], cores)}.",
    ]
    e2e, received = t["rate"], t["received_rate"]
    if e2e and received > 1.2 * e2e:
        lines.append(
            f"  What limits it: the receiver acked {received:,.0f}/s but decisions were "
            f"committed at {e2e:,.0f}/s, so the syncer queue grew: applying (the syncer) "
            "limits end to end"
            + (
                f"; {note}."
                if (note := _db_note("syncer", t.get("db_time", {}), t["cpu"]))
                else "."
            )
        )
    elif e2e:
        lines.append(
            f"  What limits it: decisions kept up with the receiver ({received:,.0f}/s acked): "
            "receiving limits end to end (receiver at "
            f"{t['cpu_receiving'].get('receiver', 0):.0f}% CPU)."
        )
    lines += [
        f"  Relay meanwhile: {t['relay_effects_settled']:,} AE effects settled "
        f"({t['relay_effects_per_s']:,.0f}/s), {t['outbox_pending_at_end']:,} still pending "
        "when the inbox was complete (not waited for).",
        f"Baseline: {base['notifications']:,} x {base['body_bytes']} B bodies, publish "
        f"{base['publish_rate']:,.0f}/s, end to end {base['rate']:,.0f}/s "
        f"({base['seconds']:.1f}s).",
        f"Latency: {lat['observations']:,.0f} decisions observed by the syncer histogram "
        f"(edges {', '.join(_edge(b) for b in lat['bucket_edges'][:8])} … s); the receiver's "
        f"ack of a 100-notification message took p50 {lat['ack_ms']['p50']:.0f} ms / "
        f"p99 {lat['ack_ms']['p99']:.0f} ms; our own exact measure, client send -> start of "
        f"the applying batch (no apply/commit), p50 "
        f"{lat['send_to_batch_start_ms']['p50']:.0f} / p99 "
        f"{lat['send_to_batch_start_ms']['p99']:.0f} ms; pacer at most "
        f"{lat['max_send_late_ms']:.1f} ms late; relay drain after the phase "
        f"{lat['drain_seconds']:.1f}s.",
        f"  CPU: {limits(lat['cpu'], cores)}.",
    ]
    if pauses := lat.get("gc_pauses"):
        lines.append(
            "  Garbage collection: "
            + "; ".join(
                f"{role} {p['collections']:,.0f} pauses ({p['full_collections']:,.0f} full), "
                f"{p['over_10ms']:,.0f} over 10 ms, the longest <= {p['longest_at_most_ms']:g} ms"
                for role, p in pauses.items()
                if p["longest_at_most_ms"] is not None
            )
            + "."
        )
    if e2e and lat["offered_rate"] >= 0.8 * e2e:
        lines.append(
            f"  What limits it: {lat['offered_rate']:,.0f}/s offered is "
            f"{lat['offered_rate'] / e2e:.0%} of what ownersync applied flat out ({e2e:,.0f}/s "
            "above): the syncer queue builds up during the phase, the latency is mostly queueing"
            + (
                f"; {note}."
                if (note := _db_note("syncer", lat.get("db_time", {}), lat["cpu"]))
                else "."
            )
        )
    lo, hi = lat["p99_bucket"]
    hi = math.inf if hi is None else hi
    if lo >= TARGET_P99 and lat["share_le_100ms_exact"]:
        lines.append(
            f"  p99 is in ({_edge(lo)}, {_edge(hi)}] s: the verdict against 100 ms is exact "
            "(0.1 s is a bucket edge); the value itself is only as fine as that bucket."
        )
    elif not math.isinf(hi) and hi - lo > 0.02:
        step = (hi - lo) / 4
        extra = ", ".join(f"{lo + step * k:g}" for k in (1, 2, 3))
        lines.append(
            f"  p99 sits in a {1000 * (hi - lo):.0f} ms wide bucket: edges such as {extra} "
            "(RECEIPT_TO_DECISION in services/common/metrics.py) would place it closer."
        )
    rules = ", ".join(f"{k} x{v:,}" for k, v in sorted(ae["rules"].items()))
    coalesce = r["config"]["settings"]["relay_coalesce_ms"]
    lines.append(
        f"AE calls: {ae['notifications']:,} reassignments in {ae['messages']} messages "
        f"({rules}); {ae['calls']} AE writes ({ae['refused_calls']} refused) for "
        f"{ae['distinct_records']} records; final AE owner right for "
        f"{ae['final_owner_correct']}/{ae['records']}; settled {ae['settle_seconds']:.1f}s "
        f"after the first post (coalesce window {coalesce} ms)."
    )
    if ae["calls"] > ae["distinct_records"]:
        lines.append(
            f"  Why: applying and sending the reassignments took {ae['settle_seconds']:.1f}s, "
            f"longer than the {coalesce} ms coalescing window: some records were sent an "
            "intermediate owner before their later reassignments were committed."
        )
    problems = [
        f"{name}: {p['failed_posts']} messages never acked, {p.get('retries', 0)} retries"
        for name, p in (("throughput", t), ("latency", lat))
        if p.get("failed_posts") or p.get("retries")
    ]
    if problems:
        lines.append("Posting problems: " + "; ".join(problems))
    for line in lines:
        console.print(line)
