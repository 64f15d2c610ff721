"""The daemon with ``backend: iptables`` and flow logs: real refused and accepted packets
become records in its file, and its metrics report the records a rate limit suppressed (read
from ``iptables-save -c``)."""

from __future__ import annotations

import json
import secrets
import urllib.request

import pytest
import yaml

from sgagent.sandbox import Outcome, Probe, Sandbox

from ..daemon.support import Daemon, free_port, wait_until

pytestmark = pytest.mark.kernel

DOC = {"version": 1,
       "host": {"instance": "i-ipt-flow", "account": "1",
                "nics": [{"name": "eth0", "security_groups": ["sg-a"]}]},
       "security_groups": {"sg-a": {"rules": [
           {"id": "no-telnet", "direction": "inbound", "protocol": "tcp", "ports": 23,
            "source": "198.51.100.0/24", "policy": "drop", "log": True,
            "log_rate": "1/minute burst 1"},
           {"id": "web", "direction": "inbound", "protocol": "tcp", "ports": 80,
            "source": "198.51.100.0/24", "log": True}]}}}


@pytest.fixture
def sandbox(root):
    with Sandbox([("eth0", "vpc")], prefix=f"sgil{secrets.token_hex(3)}") as sb:
        sb.ensure_tcp_listener("host", 80)
        sb.ensure_tcp_listener("host", 23)
        yield sb


def test_daemon_writes_records_and_reports_suppressed(sandbox, tmp_path):
    doc = tmp_path / "host.yaml"
    doc.write_text(yaml.safe_dump(DOC))
    logs = tmp_path / "flows"
    port = free_port()
    d = Daemon({"source": {"file": {"path": str(doc)}}, "netns": sandbox.host_ns,
                "state_dir": str(tmp_path / "state"), "resync_interval": 60.0,
                "backend": "iptables",
                "flow_logs": {"enabled": True, "directory": str(logs)},
                "metrics": {"enabled": True, "address": "127.0.0.1", "port": port}},
               tmp_path)
    d.start()
    try:
        d.wait_log("ready:")
        assert "backend iptables" in d.log()
        assert sandbox.probe(Probe("eth0", "inbound", "198.51.100.7", "tcp", 80)) == Outcome.OPEN
        assert sandbox.probe_many([Probe("eth0", "inbound", f"198.51.100.{9 + i}", "tcp", 23)
                                   for i in range(3)], timeout=0.3) == [Outcome.DROPPED] * 3

        def records():
            f = logs / "flows.log"
            recs = [json.loads(x) for x in f.read_text().splitlines()] if f.exists() else []
            return recs if len(recs) >= 2 else None
        recs = wait_until(records, 10, what="two flow records")
        got = sorted((r["dport"], r["verdict"], r["rule"]) for r in recs)
        assert got == [(23, "drop", "no-telnet"), (80, "accept", "web")], recs
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        suppressed = {x.split("{")[1].split("}")[0]: float(x.split()[-1])
                      for x in text.splitlines() if x.startswith("sgagent_log_suppressed_total{")}
        telnet = [v for k, v in suppressed.items() if 'rule="no-telnet"' in k]
        web = [v for k, v in suppressed.items() if 'rule="web"' in k]
        # the limit lets one record through; the other refused SYNs (and retransmissions)
        # are suppressed
        assert telnet and telnet[0] >= 2 and web == [0.0], text
        assert d.stop() == 0
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.kill()
