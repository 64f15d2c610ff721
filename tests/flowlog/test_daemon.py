"""The daemon with flow_logs enabled: real refused and accepted packets become records in its
file, tagged with the document's instance, and its metrics count them."""

from __future__ import annotations

import json
import os
import secrets
import urllib.request

import pytest
import yaml

from sgagent.sandbox import Outcome, Probe, Sandbox

from ..daemon.support import Daemon, free_port, wait_until

pytestmark = pytest.mark.kernel

DOC = {"version": 1,
       "host": {"instance": "i-daemon-flow", "account": "1",
                "nics": [{"name": "eth0", "security_groups": ["sg-a"]}]},
       "security_groups": {"sg-a": {"rules": [
           {"id": "no-telnet", "direction": "inbound", "protocol": "tcp", "ports": 23,
            "source": "198.51.100.0/24", "policy": "drop", "log": True},
           {"id": "web", "direction": "inbound", "protocol": "tcp", "ports": 80,
            "source": "198.51.100.0/24", "log": True}]}}}


@pytest.fixture
def sandbox():
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, nftables)")
    with Sandbox([("eth0", "vpc")], prefix=f"sgfd{secrets.token_hex(3)}") as sb:
        sb.ensure_tcp_listener("host", 80)
        sb.ensure_tcp_listener("host", 23)
        yield sb


def test_daemon_writes_flow_records(sandbox, tmp_path):
    doc = tmp_path / "host.yaml"
    doc.write_text(yaml.safe_dump(DOC))
    logs = tmp_path / "flows"
    port = free_port()
    d = Daemon({"source": {"file": {"path": str(doc)}}, "netns": sandbox.host_ns,
                "state_dir": str(tmp_path / "state"), "resync_interval": 1.0,
                "flow_logs": {"enabled": True, "directory": str(logs)},
                "metrics": {"enabled": True, "address": "127.0.0.1", "port": port}},
               tmp_path)
    d.start()
    try:
        d.wait_log("flow logs to")
        d.wait_log("ready:")
        assert sandbox.probe_many([Probe("eth0", "inbound", "198.51.100.7", "tcp", 80),
                                   Probe("eth0", "inbound", "198.51.100.8", "tcp", 80)]) \
            == [Outcome.OPEN] * 2
        assert sandbox.probe(Probe("eth0", "inbound", "198.51.100.9", "tcp", 23),
                             timeout=0.3) == Outcome.DROPPED

        def records():
            f = logs / "flows.log"
            recs = [json.loads(x) for x in f.read_text().splitlines()] if f.exists() else []
            return recs if len(recs) >= 3 else None
        recs = wait_until(records, 10, what="three flow records")
        assert {(r["src"], r["dport"], r["verdict"], r["rule"]) for r in recs} >= {
            ("198.51.100.7", 80, "accept", "web"), ("198.51.100.8", 80, "accept", "web"),
            ("198.51.100.9", 23, "drop", "no-telnet")}
        assert {r["instance"] for r in recs} == {"i-daemon-flow"}
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        written = [x for x in text.splitlines() if x.startswith("sgagent_log_records_total ")]
        assert written and float(written[0].split()[1]) >= 3
        suppressed = [x for x in text.splitlines() if x.startswith("sgagent_log_suppressed_total{")]
        assert any('group="sg-a"' in x and 'rule="no-telnet"' in x for x in suppressed), text
        assert d.stop() == 0
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.kill()
