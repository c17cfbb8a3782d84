"""`python -m bench --quick --json` runs the whole benchmark path, small, and its figures add up.

The benchmark is not a test of speed: nothing here looks at a rate or a latency, only that
every figure is there, that every unique notification posted was applied, that the relay made
no more AE calls than there were records changed, that the latency phases ran at the fractions
of the capacity just measured, that every signed AE webhook became an SF lead, and that the
preload filled the tables before its throughput phase.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import AMQP_URL, PG_URL

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
# Its own database, so that a full `make bench` running meanwhile is not disturbed.
SMOKE_DB = PG_URL.rsplit("/", 1)[0] + "/" + PG_URL.rsplit("/", 1)[1].split("?")[0] + "_bench_smoke"
SERVICES = ["--database-url", SMOKE_DB, "--amqp-url", AMQP_URL, "--settle-timeout", "40"]
PRELOAD = 2000


def test_quick_benchmark_completes_with_every_figure() -> None:
    done = subprocess.run(
        # --no-relay-rate: bench.relay_rate's phases (rate, reassign, bulk burst) have their own
        # smoke test, tests/integration/test_relay_rate_smoke.py; here they would cost ~30 s.
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--json",
            "--no-relay-rate",
            "--preload",
            str(PRELOAD),
            *SERVICES,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,  # ~75 s on the shared 2-core machine; room for a busy hour
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])

    throughput = figures["throughput"]
    for key in ("rate", "received_rate", "posted", "posted_unique", "applied_unique"):
        assert throughput[key] is not None, key
    assert throughput["complete"]
    assert throughput["applied_unique"] == throughput["posted_unique"]
    assert throughput["posted"] > throughput["posted_unique"]  # duplicates were re-posted
    assert throughput["rules"].get("S7", 0) > 0  # and stale notifications refused as stale
    assert throughput["failed_posts"] == 0

    runs = figures["latency_runs"]
    assert [run["fraction"] for run in runs] == [0.25, 0.5]
    for run in runs:
        for key in ("p50", "p95", "p99", "share_le_100ms", "achieved_rate"):
            assert run[key] is not None, key
        assert run["offered_rate"] == pytest.approx(run["fraction"] * throughput["rate"])
        assert run["observations"] >= run["notifications"] * 0.9
        assert run["p50"] <= run["p95"] <= run["p99"]
        for role in ("syncer", "receiver"):  # their garbage collections during the phase
            pauses = run["gc_pauses"][role]
            assert pauses["collections"] >= 1 and pauses["longest_at_most_ms"] is not None
        to_ae = run["receipt_to_ae_ms"]  # the relay may still be sending: not_in_ae
        assert to_ae["records"] + to_ae["not_in_ae"] + to_ae["no_call_needed"] > 0
    assert figures["latency"] == runs[-1]
    again = figures["latency_ae_like"]  # 50% again, the AE sim answering as AE does
    assert again["fraction"] == 0.5 and again["ae_latency_ms"] == "100-300"
    assert again["ae_sim_latency"] == [100, 300]
    assert again["p50"] <= again["p95"] <= again["p99"]
    alone = figures["latency_without_relay"]  # 50% again with the relay stopped
    assert alone["fraction"] == 0.5 and alone["relay_stopped"] is True
    assert alone["p50"] <= alone["p95"] <= alone["p99"]
    assert alone["observations"] >= alone["notifications"] * 0.9
    assert alone["cpu"].get("relay", 0.0) == 0.0  # no relay process ran in the phase
    assert alone["cpu"]["syncer"] > 0
    assert "receipt_to_ae_ms" not in alone  # its AE calls waited for the relay's restart

    assert figures["baseline"]["rate"] > 0
    assert figures["ratio_to_baseline"] > 0
    for role in ("receiver", "assigner", "syncer", "relay"):
        assert figures["memory_mb"][role] > 0, role

    ae = figures["ae_calls"]
    assert ae["calls_per_1000"] is not None
    assert ae["final_owner_correct"] == ae["records"]
    assert ae["calls"] <= ae["distinct_records"]
    to_ae = ae["receipt_to_ae_ms"]
    assert to_ae["records"] + to_ae["no_call_needed"] == ae["records"]
    assert to_ae["p99"] > 0

    assert set(figures["ae_to_sf"]) == {"assign_to_user", "round_robin", "active_rule"}
    for kind, row in figures["ae_to_sf"].items():
        assert row["refused"] == 0, kind
        assert row["leads"] == row["webhooks"] == row["paced_leads"] == 10, kind
        assert row["rate"] > 0 and row["paced_ms"]["p99"] > 0, kind

    (level,) = figures["preload"]
    assert level["rows"] == PRELOAD
    for table in ("records", "inbox", "audit_log", "outbox"):
        assert level["tables"][table]["rows"] >= PRELOAD, table
    assert level["complete"] and level["rate"] > 0
    reference = figures["preload_reference"]
    assert reference["complete"]
    assert level["ratio_to_empty"] == pytest.approx(level["rate"] / reference["rate"])
    assert "relay_rate" not in figures  # skipped as asked
    assert set(figures["verdicts"]) == {"throughput", "p99", "memory", "ae_calls", "preload"}
