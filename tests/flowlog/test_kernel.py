"""SEMANTICS section 9 with real packets in namespaces: flow records, rate limits and their
suppressed counts, audit rules -- in both renderings.  Each test checks both sides: what must
pass passes, what must be refused is refused, and the records and counters say so."""

from __future__ import annotations

import json
import os
import secrets
import time

import pytest

from sgagent.compiler import compile_document
from sgagent.flowlog.reader import FlowLogReader
from sgagent.flowlog.sink import FILE_NAME, FileSink
from sgagent.nft.logcounters import SuppressedReader
from sgagent.ir import NFLOG_GROUP
from sgagent.load import parse_data
from sgagent.nft.backend import NftBackend
from sgagent.sandbox import Outcome, Probe, Sandbox

pytestmark = pytest.mark.kernel

DOC = {
    "version": 1,
    "host": {"instance": "i-flow", "account": "1",
             "nics": [{"name": "eth0", "security_groups": ["sg-a"]}]},
    "security_groups": {"sg-a": {"rules": [
        {"id": "no-telnet", "direction": "inbound", "protocol": "tcp", "ports": 23,
         "source": "198.51.100.0/24", "policy": "drop", "log": True,
         "log_rate": "1/minute burst 3"},
        {"id": "web", "direction": "inbound", "protocol": "tcp", "ports": 80,
         "source": "198.51.100.0/24", "log": True},
        {"id": "app", "direction": "inbound", "protocol": "tcp", "ports": "8080-8081",
         "source": "198.51.100.0/24", "priority": 2},
        {"id": "trial-deny", "direction": "inbound", "protocol": "tcp", "ports": 8080,
         "source": "0.0.0.0/0", "policy": "drop", "mode": "audit"},
        {"id": "quiet", "direction": "inbound", "protocol": "tcp", "ports": 8081,
         "source": "198.51.100.0/24"},
    ]}},
}


@pytest.fixture
def sandbox():
    if os.geteuid() != 0:
        pytest.skip("kernel tests need root (network namespaces, nftables)")
    with Sandbox([("eth0", "vpc")], prefix=f"sgf{secrets.token_hex(3)}") as sb:
        for port in (23, 80, 8080, 8081):
            sb.ensure_tcp_listener("host", port)
        yield sb


def records(path) -> list[dict]:
    f = path / FILE_NAME
    return [json.loads(x) for x in f.read_text().splitlines()] if f.exists() else []


def counts(be: NftBackend, ns: str) -> tuple[dict, dict]:
    """(packets per rule, suppressed records per rule) from the kernel."""
    rules = {r.key.rule: r.packets for r in be.counters() if r.key.group}
    with SuppressedReader(ns) as read:
        return rules, {r.key.rule: r.packets for r in read()}


@pytest.mark.parametrize("rendering", ["sets", "linear"])
def test_records_limits_and_audit(sandbox, rendering, tmp_path):
    sb = sandbox
    host = sb.nic_address("eth0")
    reader = FlowLogReader(FileSink(tmp_path), NFLOG_GROUP, "i-flow", sb.host_ns).start()
    try:
        with NftBackend(sb.host_ns, rendering) as be:
            be.apply(compile_document(parse_data(DOC)))
            peers = [f"198.51.100.{10 + i}" for i in range(8)]
            web = sb.probe_many([Probe("eth0", "inbound", p, "tcp", 80) for p in peers[:4]])
            telnet = sb.probe_many([Probe("eth0", "inbound", p, "tcp", 23) for p in peers],
                                   timeout=0.5)
            app = sb.probe_many([Probe("eth0", "inbound", p, "tcp", 8080) for p in peers[:3]])
            quiet = sb.probe_many([Probe("eth0", "inbound", peers[0], "tcp", 8081)])
            # under TCP's first SYN retransmission (1 s), so a dropped probe is one packet
            outside = sb.probe_many([Probe("eth0", "inbound", "203.0.113.5", "tcp", 8080)],
                                    timeout=0.5)
            time.sleep(0.5)
            packets, suppressed = counts(be, sb.host_ns)
    finally:
        reader.stop()
    # both sides: the accepts pass, the drops are refused, the audit drop refuses nothing
    assert web == [Outcome.OPEN] * 4 and app == [Outcome.OPEN] * 3 and quiet == [Outcome.OPEN]
    assert telnet == [Outcome.DROPPED] * 8 and outside == [Outcome.DROPPED]
    recs = records(tmp_path)
    by_rule: dict[str, list[dict]] = {}
    for r in recs:
        by_rule.setdefault(r["rule"], []).append(r)

    # a logged accept: one record per new connection, with the packet's fields
    assert sorted(r["src"] for r in by_rule["web"]) == peers[:4]
    for r in by_rule["web"]:
        assert {k: r[k] for k in ("nic", "direction", "dst", "protocol", "dport", "verdict",
                                  "group", "instance")} == {
            "nic": "eth0", "direction": "inbound", "dst": host, "protocol": "tcp", "dport": 80,
            "verdict": "accept", "group": "sg-a", "instance": "i-flow"}
        assert isinstance(r["sport"], int) and r["time"].endswith("Z")
    assert packets["web"] == 4 and suppressed.get("web", 0) == 0

    # a logged drop under a limit of 3: one record per refused packet up to it, the rest
    # counted as suppressed -- every refused packet is one or the other
    telnet_recs = by_rule["no-telnet"]
    assert len(telnet_recs) == 3
    assert all(r["verdict"] == "drop" and r["dport"] == 23 for r in telnet_recs)
    assert packets["no-telnet"] >= 8
    assert len(telnet_recs) + suppressed["no-telnet"] == packets["no-telnet"]

    # the audit drop: traffic passes (app decides), counted on it and logged "would drop";
    # the packet from outside app's peers reaches it too, and the default drops it
    trial = by_rule["trial-deny"]
    assert packets["trial-deny"] == 4 and packets["app"] == 3
    assert sorted(r["src"] for r in trial) == sorted(peers[:3] + ["203.0.113.5"])
    assert {r["verdict"] for r in trial} == {"would drop"}
    # rules that do not log write nothing, and an audit rule does not see other ports
    assert "app" not in by_rule and "quiet" not in by_rule and packets["quiet"] == 1
