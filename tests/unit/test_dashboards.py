"""The Grafana dashboard and the Prometheus alert rules in deploy/ query only series ownersync
exports (services/common/metrics.py), in PromQL that Prometheus's own `promtool` accepts, and
cover what an operator watches: flow per rule, lag, waiting effects, AE quota, dead letters."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.registry import REGISTRY

import services.common.metrics  # noqa: F401  (registers ownersync's series)

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy/grafana/ownersync-dashboard.json"
ALERTS = ROOT / "deploy/prometheus/ownersync-alerts.yml"
SERIES = re.compile(r"\bownersync_[a-z0-9_]+\b")
# The samples each kind of metric family exposes.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
}


def exported_series() -> set[str]:
    """Every sample name ownersync's metrics expose (with or without a labelled child yet)."""
    names = set()
    for family in REGISTRY.collect():
        if family.name.startswith("ownersync_"):
            names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
    return names


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_queries() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def promtool_check(rules_file: Path) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is missing: scripts/ensure-tools.sh installs it"
    return subprocess.run(
        [promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60
    )


def test_the_dashboard_is_grafana_json_with_unique_panel_ids_and_a_query_per_panel() -> None:
    board = dashboard()
    assert board["uid"] == "ownersync" and board["schemaVersion"] >= 36
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"])


@pytest.mark.parametrize(
    ("what", "queried"),
    [
        ("every dashboard query", dashboard_queries),
        ("every alert rule", lambda: [r["expr"] for r in alert_rules()]),
    ],
)
def test_every_series_named_is_one_ownersync_exports(what: str, queried: Any) -> None:
    exported = exported_series()
    named = {name for expr in queried() for name in SERIES.findall(expr)}
    assert named, f"{what} names no ownersync series"
    assert named <= exported, f"{what}: not exported: {sorted(named - exported)}"


def test_the_dashboard_covers_flow_per_rule_lag_waiting_effects_quota_and_dead_letters() -> None:
    queries = "\n".join(dashboard_queries())
    assert "sum by (rule) (rate(ownersync_events_applied_total" in queries
    assert "ownersync_receipt_to_decision_seconds_bucket" in queries
    for series in (
        "ownersync_effects_waiting",
        "ownersync_effects_oldest_waiting_age_seconds",
        "ownersync_relay_tenant_held",
        "ownersync_ae_quota_remaining",
        "ownersync_events_dead_lettered_total",
        "ownersync_effects_dead",
        "ownersync_worker_heartbeat_age_seconds",
    ):
        assert series in queries, series


def test_alert_rules_pass_promtool_and_cover_stuck_consumer_backlog_dead_letters_quota() -> None:
    checked = promtool_check(ALERTS)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    by_name = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    assert "ownersync_worker_heartbeat_age_seconds" in by_name["OwnersyncConsumerStuck"]
    assert "ownersync_events_published_total" in by_name["OwnersyncNoDecisionsWhileEventsArrive"]
    assert "deriv(ownersync_effects_waiting" in by_name["OwnersyncEffectsBacklogGrowing"]
    assert "ownersync_events_dead_lettered_total" in by_name["OwnersyncDeadLetterRateHigh"]
    assert "ownersync_ae_quota_remaining) == 0" in by_name["OwnersyncAeQuotaSpent"]
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]


def test_every_dashboard_query_is_promql_that_promtool_accepts(tmp_path: Path) -> None:
    # promtool checks expressions inside rule files: each query becomes a recording rule.
    rules = [
        {"record": f"ownersync_dashboard:query_{i}", "expr": expr}
        for i, expr in enumerate(dashboard_queries())
    ]
    rules_file = tmp_path / "dashboard-queries.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = promtool_check(rules_file)
    assert checked.returncode == 0, checked.stdout + checked.stderr
