"""Flow logs of the iptables backend (SEMANTICS section 9) with real packets in namespaces,
for both variants: a logged accept writes a record per new connection, a logged drop under a
rate limit writes records up to the limit and counts the rest as suppressed (read back from
``iptables-save -c``), rules that do not log write nothing -- and every packet is still
decided as the evaluator says (both sides)."""

from __future__ import annotations

import json
import secrets
import time

import pytest

from sgagent.compiler import compile_document
from sgagent.evaluator import evaluate
from sgagent.flowlog.reader import FlowLogReader
from sgagent.flowlog.sink import FILE_NAME, FileSink
from sgagent.ipt.backend import IptBackend
from sgagent.ir import NFLOG_GROUP
from sgagent.load import parse_data
from sgagent.sandbox import Outcome, Probe, Sandbox
from sgagent.verify import Expectation, outcome_of

from .test_kernel import VARIANTS

pytestmark = pytest.mark.kernel

DOC = {
    "version": 1,
    "host": {"instance": "i-iflow", "account": "1",
             "nics": [{"name": "eth0", "security_groups": ["sg-a"]}]},
    "security_groups": {"sg-a": {"rules": [
        {"id": "no-telnet", "direction": "inbound", "protocol": "tcp", "ports": 23,
         "source": "198.51.100.0/24", "policy": "drop", "log": True,
         "log_rate": "1/minute burst 3"},
        {"id": "web", "direction": "inbound", "protocol": "tcp", "ports": 80,
         "source": "198.51.100.0/24", "log": True},
        {"id": "no-smtp", "direction": "inbound", "protocol": "tcp", "ports": 25,
         "source": "198.51.100.0/24", "policy": "reject", "log": True},
        {"id": "quiet", "direction": "inbound", "protocol": "tcp", "ports": 8081,
         "source": "198.51.100.0/24"},
    ]}},
}


def records(path) -> list[dict]:
    f = path / FILE_NAME
    return [json.loads(x) for x in f.read_text().splitlines()] if f.exists() else []


@pytest.mark.parametrize("variant", VARIANTS)
def test_records_and_suppressed_counts(root, variant, tmp_path):
    doc = parse_data(DOC)
    peers = [f"198.51.100.{10 + i}" for i in range(8)]
    want = {port: outcome_of(evaluate(doc, Expectation("eth0", "inbound", peers[0], "tcp",
                                                       port).packet()).verdict, False)
            for port in (23, 80, 25, 8081, 9)}
    assert set(want.values()) >= {"open", "dropped", "rejected"}
    with Sandbox([("eth0", "vpc")], prefix=f"sgl{secrets.token_hex(3)}") as sb:
        for port in (23, 25, 80, 8081, 9):
            sb.ensure_tcp_listener("host", port)
        host = sb.nic_address("eth0")
        reader = FlowLogReader(FileSink(tmp_path), NFLOG_GROUP, "i-iflow", sb.host_ns).start()
        try:
            with IptBackend(sb.host_ns, variant=variant) as be:
                be.apply(compile_document(doc))
                web = sb.probe_many([Probe("eth0", "inbound", p, "tcp", 80) for p in peers[:4]])
                telnet = sb.probe_many([Probe("eth0", "inbound", p, "tcp", 23) for p in peers],
                                       timeout=0.5)
                smtp = sb.probe_many([Probe("eth0", "inbound", peers[0], "tcp", 25)])
                quiet = sb.probe_many([Probe("eth0", "inbound", peers[0], "tcp", 8081)])
                other = sb.probe_many([Probe("eth0", "inbound", peers[0], "tcp", 9)],
                                      timeout=0.5)
                time.sleep(0.5)
                packets = {r.key.rule: r.packets for r in be.counters() if r.key.group}
                suppressed = {r.key.rule: r.packets for r in be.suppressed()}
                assert be.diff(compile_document(doc)) == ""  # the live chains read back same
        finally:
            reader.stop()
    # both sides, as the evaluator says
    assert want[80] == want[8081] == "open" and want[23] == want[9] == "dropped"
    assert want[25] == "rejected"
    assert web == [Outcome.OPEN] * 4 and quiet == [Outcome.OPEN]
    assert telnet == [Outcome.DROPPED] * 8 and other == [Outcome.DROPPED]
    assert smtp == [Outcome.REJECTED]
    by_rule: dict[str, list[dict]] = {}
    for r in records(tmp_path):
        by_rule.setdefault(r["rule"], []).append(r)

    # a logged accept: one record per new connection, with the packet's fields
    assert sorted(r["src"] for r in by_rule["web"]) == peers[:4]
    for r in by_rule["web"]:
        assert {k: r[k] for k in ("nic", "direction", "dst", "protocol", "dport", "verdict",
                                  "group", "instance")} == {
            "nic": "eth0", "direction": "inbound", "dst": host, "protocol": "tcp", "dport": 80,
            "verdict": "accept", "group": "sg-a", "instance": "i-iflow"}
    assert packets["web"] == 4 and suppressed["web"] == 0

    # a logged drop under a limit of 3: records up to it, the rest counted as suppressed --
    # every refused packet (SYN retransmissions included) is one or the other
    assert len(by_rule["no-telnet"]) == 3
    assert all(r["verdict"] == "drop" and r["dport"] == 23 for r in by_rule["no-telnet"])
    assert packets["no-telnet"] >= 8 and suppressed["no-telnet"] >= 5
    assert len(by_rule["no-telnet"]) + suppressed["no-telnet"] == packets["no-telnet"]

    # a logged reject: recorded and still rejected
    assert [r["verdict"] for r in by_rule["no-smtp"]] == ["reject"]
    assert packets["no-smtp"] == 1 and suppressed["no-smtp"] == 0
    # rules that do not log write nothing, and the default (not logged) neither
    assert "quiet" not in by_rule and packets["quiet"] == 1
    assert set(by_rule) == {"web", "no-telnet", "no-smtp"}


AUDIT = {
    "version": 1,
    "host": {"instance": "i-iaudit", "account": "1",
             "nics": [{"name": "eth0", "security_groups": ["sg-a"]}]},
    "security_groups": {"sg-a": {"rules": [
        {"id": "app", "direction": "inbound", "protocol": "tcp", "ports": "8080-8081",
         "source": "198.51.100.0/24", "priority": 2},
        {"id": "trial-deny", "direction": "inbound", "protocol": "tcp", "ports": 8080,
         "source": "0.0.0.0/0", "policy": "drop", "mode": "audit", "priority": 2},
        {"id": "early", "direction": "inbound", "protocol": "tcp", "ports": 8080,
         "source": "198.51.100.20", "priority": 1},
        {"id": "quiet", "direction": "inbound", "protocol": "tcp", "ports": 8081,
         "source": "198.51.100.0/24"},
    ]}},
}


@pytest.mark.parametrize("rendering", ["sets", "linear"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_audit_rule_counts_and_logs_what_reaches_it_and_decides_nothing(root, variant,
                                                                        rendering, tmp_path):
    doc = parse_data(AUDIT)
    peers = [f"198.51.100.{10 + i}" for i in range(3)]
    probes = [(p, 8080) for p in peers] + [("198.51.100.20", 8080), (peers[0], 8081),
                                             ("203.0.113.5", 8080)]
    verdicts = [evaluate(doc, Expectation("eth0", "inbound", p, "tcp", port).packet())
                for p, port in probes]
    # the oracle: trial-deny is reached by app's peers (at the same priority a drop comes
    # before an accept) and by the outsider (the default drops it), not by the packet "early"
    # (priority 1) decides first
    assert [bool(v.audits) for v in verdicts] == [True, True, True, False, False, True]
    with Sandbox([("eth0", "vpc")], prefix=f"sga{secrets.token_hex(3)}") as sb:
        for port in (8080, 8081):
            sb.ensure_tcp_listener("host", port)
        reader = FlowLogReader(FileSink(tmp_path), NFLOG_GROUP, "i-iaudit", sb.host_ns).start()
        try:
            with IptBackend(sb.host_ns, rendering, variant=variant) as be:
                be.apply(compile_document(doc))
                got = sb.probe_many([Probe("eth0", "inbound", p, "tcp", port)
                                     for p, port in probes], timeout=0.5)
                time.sleep(0.5)
                packets = {r.key.rule: r.packets for r in be.counters() if r.key.group}
                assert be.diff(compile_document(doc)) == ""
        finally:
            reader.stop()
    # both sides: decided as if the audit rule were not there
    assert got == [Outcome.OPEN] * 5 + [Outcome.DROPPED]
    assert [outcome_of(v.verdict, False) for v in verdicts] == ["open"] * 5 + ["dropped"]
    recs = records(tmp_path)
    assert {r["verdict"] for r in recs} == {"would drop"}
    assert sorted(r["src"] for r in recs if r["rule"] == "trial-deny") == \
        sorted(peers + ["203.0.113.5"])
    assert packets["trial-deny"] >= 4  # the outsider's SYN may be sent again
    decided = {r: sum(v.rule == r for v in verdicts) for r in ("app", "early", "quiet")}
    assert decided == {"app": 3, "early": 1, "quiet": 1}
    assert {r: packets[r] for r in decided} == decided
    assert len(recs) == packets["trial-deny"]
