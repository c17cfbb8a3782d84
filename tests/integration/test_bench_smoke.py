"""`python -m bench --quick --json` runs the whole benchmark path, small, and its figures add up.

The benchmark is not a test of speed: nothing here looks at a rate or a latency, only that
every figure is there, that every unique notification posted was applied, and that the relay
made no more AE calls than there were records changed.
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
SMOKE_DB = PG_URL.rsplit("/", 1)[0] + "/ownersync_bench_smoke"
SERVICES = ["--database-url", SMOKE_DB, "--amqp-url", AMQP_URL, "--settle-timeout", "40"]


def test_quick_benchmark_completes_with_every_figure() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", *SERVICES],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
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

    latency = figures["latency"]
    for key in ("p50", "p95", "p99", "share_le_100ms", "achieved_rate"):
        assert latency[key] is not None, key
    assert latency["observations"] >= latency["notifications"] * 0.9
    assert latency["p50"] <= latency["p95"] <= latency["p99"]

    assert figures["baseline"]["rate"] > 0
    assert figures["ratio_to_baseline"] > 0
    for role in ("receiver", "syncer", "relay"):
        assert figures["memory_mb"][role] > 0, role

    ae = figures["ae_calls"]
    assert ae["calls_per_1000"] is not None
    assert ae["final_owner_correct"] == ae["records"]
    assert ae["calls"] <= ae["distinct_records"]
    assert set(figures["verdicts"]) == {"throughput", "p99", "memory", "ae_calls"}
