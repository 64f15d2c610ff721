"""Prometheus' own tool on what we ship: the exposition, the alerting rules, the example config."""

from __future__ import annotations

import json
import subprocess

from prometheus_client import generate_latest

from sgagent.metrics import AgentStats, build_registry

from .helpers import MONITORING, ROOT, FakeKernel, reading


def _check_metrics(promtool: str, text: bytes) -> None:
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                          timeout=60)
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode()


def _busy_registry():
    stats = AgentStats()
    stats.apply_finished(0.12, "success")
    stats.apply_finished(3.0, "failure")
    stats.source_up(True)
    stats.synced()
    stats.source_error("timeout")
    stats.source_error("http_status")
    stats.invalid_document()
    stats.drift_repaired()
    stats.connections_revoked(2)
    stats.state_saved(1_700_000_000.5)
    stats.state_save_failed()
    kernel = FakeKernel([
        reading(rule="http", packets=3, nbytes=180),
        reading(nic="eth1", direction="outbound", group="sg-b", rule="sg-b/0", policy="reject",
                packets=2**40, nbytes=2**50),
        reading(group=None, rule="failsafe/0", packets=1, nbytes=60),
        reading(group=None, rule="default", policy="drop", packets=7, nbytes=420),
        reading(group=None, rule="default", policy="accept", packets=1, nbytes=40),
        reading(group="sg-x", rule='id "quoted" \\ back', packets=1, nbytes=1),
    ])
    return build_registry(stats, kernel)


def test_promtool_check_metrics_passes_on_the_exposition(promtool):
    registry = _busy_registry()
    _check_metrics(promtool, registry.exposition())
    _check_metrics(promtool, generate_latest(registry))


def test_promtool_check_metrics_passes_with_no_ruleset(promtool):
    _check_metrics(promtool, build_registry(AgentStats(), FakeKernel()).exposition())
    failing = FakeKernel()
    failing.fail = OSError("no netlink")
    _check_metrics(promtool, build_registry(AgentStats(), failing).exposition())


def test_promtool_check_rules(promtool):
    proc = subprocess.run([promtool, "check", "rules", str(MONITORING / "sgagent-alerts.yml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 9 rules found" in proc.stdout


def test_promtool_test_rules(promtool):
    """Each alert fires when it should and stays quiet on a healthy agent."""
    proc = subprocess.run([promtool, "test", "rules", "alerts_test.yml"],
                          cwd=ROOT / "tests" / "metrics", capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_alerts_cover_the_issue():
    text = (MONITORING / "sgagent-alerts.yml").read_text()
    for metric in ("sgagent_source_up", "sgagent_invalid_documents_total",
                   "sgagent_drift_repairs_total", 'sgagent_applies_total{result="failure"}',
                   "sgagent_state_save_errors_total"):
        assert metric in text


def test_promtool_check_config(promtool):
    proc = subprocess.run([promtool, "check", "config", str(MONITORING / "prometheus.yml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dashboard_is_grafana_json():
    dash = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 30
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p.get("targets", []))
    for metric in ("sgagent_rule_packets_total", "sgagent_default_packets_total",
                   "sgagent_apply_duration_seconds_bucket", "sgagent_source_up",
                   "sgagent_last_sync_timestamp_seconds", "sgagent_source_errors_total"):
        assert metric in exprs, metric
    names = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "instance", "nic", "group"} <= names
