"""Flow-log and audit figures in the metrics, and the daemon's flow_logs section."""

from __future__ import annotations

import pytest
from prometheus_client.exposition import generate_latest

from sgagent.backend.kernel import CounterReading
from sgagent.daemon.config import parse_config
from sgagent.load import DocumentError
from sgagent.ir import CounterKey
from sgagent.metrics.collector import FlowLogCollector, KernelCollector, MetricsRegistry

ENFORCED = CounterKey("eth0", "inbound", "sg-a", "web", "accept")
AUDIT = CounterKey("eth0", "inbound", "sg-a", "trial-deny", "drop", "audit")
DEFAULT = CounterKey("eth0", "inbound", None, "default", "drop")


def lines(text: str, name: str) -> list[str]:
    return [x for x in text.splitlines() if x.startswith(name + "{")]


def test_audit_rules_have_their_own_family():
    c = KernelCollector(lambda: [CounterReading(ENFORCED, 5, 500), CounterReading(AUDIT, 7, 700)])
    text = c.exposition_text()
    assert lines(text, "sgagent_rule_packets_total") == [
        'sgagent_rule_packets_total{group="sg-a",rule="web",nic="eth0",direction="inbound",'
        'policy="accept"} 5']
    assert lines(text, "sgagent_audit_packets_total") == [
        'sgagent_audit_packets_total{group="sg-a",rule="trial-deny",nic="eth0",'
        'direction="inbound",policy="drop"} 7']
    # the standard interface says the same
    reg = MetricsRegistry()
    reg.register(KernelCollector(lambda: [CounterReading(AUDIT, 7, 700)]))
    std = generate_latest(reg).decode()
    assert 'sgagent_audit_packets_total{direction="inbound",group="sg-a",nic="eth0",' \
           'policy="drop",rule="trial-deny"} 7.0' in std


class Reader:
    records = 12
    lost = 1


def test_flow_log_figures_and_suppressed_records_never_go_back():
    reads = [[CounterReading(ENFORCED, 4, 0), CounterReading(DEFAULT, 9, 0)],
             [CounterReading(ENFORCED, 1, 0), CounterReading(DEFAULT, 10, 0)]]
    reg = MetricsRegistry()
    reg.register(FlowLogCollector(Reader(), lambda: reads.pop(0)))
    text = generate_latest(reg).decode()
    assert "sgagent_log_records_total 12.0" in text and "sgagent_log_lost_total 1.0" in text
    assert 'sgagent_log_suppressed_total{direction="inbound",group="sg-a",nic="eth0",' \
           'policy="accept",rule="web"} 4.0' in text
    assert 'sgagent_log_suppressed_total{direction="inbound",group="",nic="eth0",' \
           'policy="drop",rule="default"} 9.0' in text
    text = generate_latest(reg).decode()  # the kernel's counter was made again: 4 + 1
    assert 'policy="accept",rule="web"} 5.0' in text


def test_flow_logs_config():
    cfg = parse_config({"flow_logs": {"enabled": True, "output": "journal"}})
    assert cfg.flow_logs.enabled and cfg.flow_logs.output == "journal"
    assert cfg.flow_logs.directory == "/var/log/sgagent"
    assert parse_config({}).flow_logs.enabled is False
    with pytest.raises(DocumentError) as exc:
        parse_config({"flow_logs": {"enabled": True, "directory": "logs", "output": "syslog"}})
    text = "\n".join(exc.value.errors)
    assert "flow_logs.directory" in text and "flow_logs.output" in text
