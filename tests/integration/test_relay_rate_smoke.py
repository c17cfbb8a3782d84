"""`bench.relay_rate`, small: the relay's rate phase and reassign phase run against the AE
simulator process and their figures add up (no speed is judged here)."""

from __future__ import annotations

import pytest

from bench.relay_rate import relay_phase, render
from tests.integration.conftest import AMQP_URL, PG_URL

pytestmark = pytest.mark.integration

# Its own database (reset by the phase), beside this run's.
RATE_DB = PG_URL + "_relay_rate"


async def test_relay_rate_phase_reports_every_figure_and_one_write_per_changed_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("bench.relay_rate.IMPORT_SECONDS", 0.3)
    figures = await relay_phase(
        database_url=RATE_DB,
        amqp_url=AMQP_URL,
        effects=30,
        latency_ms="20-40",
        reassign_records=20,
        reassign_times=3,
        settle_timeout=60,
        quiet=True,
        bulk_burst=1500,  # above the relays' default bulk threshold (1000)
        # At 20-40 ms a call the relay sends 1,500 one by one in seconds: it looks for a
        # backlog every 0.5 s, not every 5 s (AE_BULK_CHECK_MS), or the burst may drain first.
        bulk_check_ms=500,
    )

    rate = figures["rate"]
    assert (rate["writes"], rate["refused"]) == (30, 0)
    assert 20 <= rate["mean_latency_ms"] <= 200
    assert 0 < rate["rate"] <= rate["ceiling"] * 1.2
    assert rate["ceiling_configured"] == pytest.approx(5 / 0.030)
    reassign = figures["reassign"]
    assert reassign["final_owner_correct"] == 20
    assert reassign["writes"] <= 20 and reassign["most_writes_of_a_record"] <= 1
    assert reassign["receipt_to_ae_p99_ms"] >= reassign["receipt_to_ae_p50_ms"] >= 0
    burst = figures["burst"]
    assert burst["final_owner_correct"] == 1500 and burst["refused"] == 0
    assert burst["imports"] >= 1  # most of the burst went by import: far fewer calls
    assert burst["ae_calls"] == burst["import_calls"] + burst["one_by_one_writes"] < 1500 / 2
    assert burst["drain_seconds"] >= burst["decide_seconds"] > 0
    text = render(figures)
    assert "sustained AE rate" in text and "per distinct changed record" in text
    assert "per 1,000 changed records" in text
