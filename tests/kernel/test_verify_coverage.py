"""``sgagent verify`` says what it proved and what it did not (issue 13), with real packets in
its throw-away sandbox, through the installed command as a user runs it.

The issue's case: a document that refuses 203.0.113.0/24 (where verify used to take its far
peer from) with ``0.0.0.0/0`` rules: those rules are now probed from outside the refused
network, the kernel agrees with the evaluator on both sides (the refused network dropped, the
rest let in), and the summary states the coverage.  A rule no probe can reach (gre, a rule
shadowed by another) is listed with its reason; ``--strict`` fails on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SGAGENT = Path(sys.executable).with_name("sgagent")


def sgagent(*args) -> subprocess.CompletedProcess:
    if os.geteuid() != 0:
        pytest.skip("verify needs root (network namespaces, nftables)")
    if not SGAGENT.exists():
        pytest.skip(f"sgagent is not installed next to {sys.executable}")
    return subprocess.run([str(SGAGENT), *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


def document(*rules: dict) -> dict:
    return {"version": 1,
            "host": {"instance": "i-1", "nics": [{"name": "eth0", "security_groups": ["sg"]}]},
            "security_groups": {"sg": {"rules": list(rules)}}}


REFUSE_DOC3 = {"id": "no-doc3", "direction": "inbound", "policy": "drop", "protocol": "all",
               "source": "203.0.113.0/24", "priority": 1}
WEB = {"id": "web", "direction": "inbound", "protocol": "tcp", "ports": 80,
       "source": "0.0.0.0/0", "priority": 5}
PING = {"id": "ping", "direction": "inbound", "service": "ping", "source": "0.0.0.0/0",
        "priority": 5}


def write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "host.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def entries(out: dict) -> dict[str, dict]:
    return {e["rule"]: e for e in out["coverage"]["entries"] if e["direction"] == "inbound"}


def test_wide_rules_behind_a_refused_network_are_probed(tmp_path):
    f = write(tmp_path, document(REFUSE_DOC3, WEB, PING))
    r = sgagent("verify", "--json", "--strict", f)
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] and out["coverage"]["complete"]
    assert (out["coverage"]["probed"], out["coverage"]["rules"]) == (3, 3)
    cov = entries(out)
    assert cov["web"]["probed"] and cov["web"]["verdicts"].get("open", 0) >= 1
    assert cov["ping"]["probed"] and cov["ping"]["verdicts"] == {"open": cov["ping"]["probes"]}
    assert cov["no-doc3"]["verdicts"].get("dropped", 0) >= 1  # the refused side, refused
    rows = out["rows"]
    web_peers = {r["peer"] for r in rows if r["rule"] == "web" and r["observed"] == "open"}
    assert web_peers and not any(p.startswith("203.0.113.") for p in web_peers)
    # port 80 from inside the refused network is probed too, and dropped by the kernel
    assert any(r["peer"].startswith("203.0.113.") and r["port"] == 80
               and r["observed"] == "dropped" and r["rule"] == "no-doc3" for r in rows)
    assert out["summary"].endswith("0 mismatches; 3 of 3 rules probed")


def test_text_report_ends_with_the_coverage(tmp_path):
    f = write(tmp_path, document(REFUSE_DOC3, WEB))
    r = sgagent("verify", f)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[-1].endswith("0 mismatches; 2 of 2 rules probed")
    start = lines.index("coverage")
    assert lines[start + 1].split() == ["RULE", "NIC", "DIR", "POLICY", "PROBES", "KERNEL",
                                        "RESULT"]
    web = next(line for line in lines[start:] if line.startswith("sg/web "))
    assert web.split()[-1] == "." and "open" in web


def test_strict_fails_on_a_rule_that_cannot_be_probed(tmp_path):
    gre = {"id": "tunnel", "direction": "inbound", "protocol": "gre",
           "source": "198.51.100.0/24", "priority": 5}
    hidden = {"id": "hidden", "direction": "inbound", "protocol": "tcp", "ports": 80,
              "source": "10.0.0.0/8", "priority": 6}
    f = write(tmp_path, document(REFUSE_DOC3, WEB, gre, hidden))
    r = sgagent("verify", f)
    assert r.returncode == 0, r.stdout + r.stderr  # nothing disagrees: not --strict
    assert r.stdout.splitlines()[-1].endswith(
        "0 mismatches; 2 of 4 rules probed (2 not: see the coverage table)")
    r = sgagent("verify", "--strict", "--json", f)
    assert r.returncode == 1
    assert r.stderr.strip() == "--strict: 2 of 4 rules not probed"
    cov = entries(json.loads(r.stdout))
    assert not cov["tunnel"]["probed"] and "does not probe" in cov["tunnel"]["reason"]
    assert not cov["hidden"]["probed"] and cov["hidden"]["reason"].startswith(
        "shadowed: sg/web before it decides everything it matches")
    assert cov["web"]["probed"] and cov["no-doc3"]["probed"]


# --------------------------------------------------------------------------- the probe plan
# (pure: no kernel, no root; what verify will probe and why it will not probe the rest)


def plan(data: dict, **kw):
    from sgagent.load import parse_data
    from sgagent.verify import plan_probes, reserved_addresses
    doc = parse_data(data)
    return doc, plan_probes(doc, reserved_addresses(doc), **kw)


def decided_by(doc, probes) -> dict[str, list]:
    out: dict[str, list] = {}
    for e in probes.expectations:
        out.setdefault(e.rule, []).append(e)
    return out


def reasons(probes) -> dict[str, str]:
    return {k.rule: v for k, v in probes.unprobed.items()}


def test_each_rule_gets_a_probe_it_decides_outside_the_refused_network():
    doc, probes = plan(document(REFUSE_DOC3, WEB, PING))
    by = decided_by(doc, probes)
    assert set(by) >= {"no-doc3", "web", "ping"} and probes.unprobed == {}
    import ipaddress
    doc3 = ipaddress.ip_network("203.0.113.0/24")
    assert any(ipaddress.ip_address(e.peer) not in doc3 for e in by["web"])
    assert all(e.outcome == "open" for e in by["web"] + by["ping"])
    assert all(e.outcome == "dropped" for e in by["no-doc3"])


def test_reasons_for_rules_no_probe_can_reach():
    data = document(
        {"id": "ping", "direction": "inbound", "service": "ping", "source": "0.0.0.0/0"},
        {"id": "icmp-rest", "direction": "inbound", "protocol": "icmp", "source": "0.0.0.0/0",
         "priority": 2},
        {"id": "v6-icmp", "direction": "inbound", "protocol": "icmp", "source": "2001:db8::/32"},
        {"id": "empty", "direction": "inbound", "protocol": "tcp", "ports": 22,
         "source": {"group": "sg-none"}},
        {"id": "tunnel", "direction": "inbound", "protocol": "gre", "source": "192.0.2.0/24"})
    data["security_groups"]["sg-none"] = {"rules": []}
    _, probes = plan(data)
    why = reasons(probes)
    assert set(why) == {"icmp-rest", "v6-icmp", "empty", "tunnel"}
    assert why["icmp-rest"].startswith("decides only ICMP types other than echo request")
    assert why["v6-icmp"].startswith("can never match here")
    assert why["empty"] == "its peer group sg-none has no IPv4 members"
    assert why["tunnel"].startswith("decides only protocols the sandbox does not probe")


def test_the_budget_keeps_one_probe_per_rule_first_and_names_the_rest():
    rules = [{"id": f"r{i}", "direction": "inbound", "protocol": "tcp", "ports": 1000 + i,
              "source": "198.51.100.0/24"} for i in range(6)]
    doc, probes = plan(document(*rules), budget=4)
    assert len(probes.expectations) == 4
    assert [e.rule for e in probes.expectations] == ["r0", "r1", "r2", "r3"]
    assert reasons(probes) == {"r4": "over the probe budget of 4", "r5": "over the probe budget of 4"}
    _, whole = plan(document(*rules))
    assert whole.unprobed == {} and len(whole.expectations) > 6  # neighbours after the first


def test_generated_documents_every_rule_lint_does_not_call_shadowed_gets_a_probe():
    """Against lint (the same partition) and the evaluator (which fills the expectations): a
    rule either has a probe it decides, or a reason, and the reason is never made up."""
    import random

    from sgagent.lint import lint
    rnd = random.Random(1313)
    nets = ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.3", "0.0.0.0/0", "192.0.2.0/24",
            "203.0.113.0/24", "2001:db8::/32", "::/0"]
    for _ in range(60):
        rules = []
        for i in range(rnd.randint(1, 7)):
            r = {"id": f"r{i}", "direction": "inbound", "source": rnd.choice(nets),
                 "policy": rnd.choice(["accept", "drop"]), "priority": rnd.randint(1, 3),
                 "protocol": rnd.choice(["tcp", "udp", "all", "icmp"])}
            if r["protocol"] in ("tcp", "udp"):
                r["ports"] = rnd.choice([22, "20-30", "1-1024", 80])
            rules.append(r)
        data = document(*rules)
        doc, probes = plan(data)
        shadowed = {f.rule for f in lint(doc) if f.kind in ("shadowed", "duplicate")}
        by = decided_by(doc, probes)
        for r in rules:
            if r["id"] in shadowed:
                assert r["id"] not in by, (r["id"], data)
            elif r["id"] not in by:
                why = reasons(probes).get(r["id"], "")
                assert why.startswith(("decides only", "can never match")), (r["id"], why, data)


AUDIT = {"id": "trial", "direction": "inbound", "policy": "drop", "protocol": "tcp",
         "ports": 22, "source": "0.0.0.0/0", "mode": "audit"}
OFFICE = {"id": "office", "direction": "inbound", "protocol": "tcp", "ports": 22,
          "source": "198.51.100.0/24", "priority": 2}


def test_audit_counters_move_with_the_probes_that_reach_them(tmp_path):
    """An audit rule decides nothing, but it is a row of the coverage: the probes that reached
    it, their verdicts, and its counter, which must move for every one of them (real
    packets); nothing is taken for a stray counter.  An audit rule no probe can reach is a
    row too, not probed, with its reason."""
    hidden = {**AUDIT, "id": "hidden-trial", "ports": 80, "source": "203.0.113.0/24",
              "priority": 3}
    f = write(tmp_path, document(AUDIT, OFFICE, REFUSE_DOC3, hidden))
    r = sgagent("verify", "--json", f)
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] and out["stray"] == [] and out["unaudited"] == []
    cov = entries(out)
    assert set(cov) == {"office", "trial", "no-doc3", "hidden-trial"}
    trial = cov["trial"]
    assert trial["mode"] == "audit" and trial["probed"] and trial["mismatches"] == 0
    assert trial["counter_moved"] >= trial["probes"] >= 2
    # it counts what reaches it on both sides: the office's let in, the rest of the world not
    assert trial["verdicts"].get("open", 0) >= 1 and trial["verdicts"].get("dropped", 0) >= 1
    assert not cov["hidden-trial"]["probed"]
    assert cov["hidden-trial"]["reason"].startswith("reached by no probe it matches")
    assert out["summary"].endswith("3 of 4 rules probed (1 not: see the coverage table)")
    r = sgagent("verify", f)
    row = next(line for line in r.stdout.splitlines() if line.startswith("sg/trial "))
    assert "audit drop" in row and "counter moved" in row


def test_an_audit_counter_that_did_not_move_is_a_mismatch():
    from sgagent.ir import CounterKey
    from sgagent.load import parse_data
    from sgagent.verify import compare, plan_probes
    doc = parse_data(document(AUDIT, OFFICE))
    probes = plan_probes(doc)
    reaching = [e for e, v in zip(probes.expectations, probes.verdicts) if v.audits]
    assert reaching  # tcp 22 from anywhere reaches the audit rule first
    observed = [e.outcome for e in probes.expectations]
    key = CounterKey("eth0", "inbound", "sg", "trial", "drop", "audit")
    decided: dict = {}
    for e, v in zip(probes.expectations, probes.verdicts):
        k = CounterKey(e.nic, e.direction, v.group, v.rule, v.verdict)
        decided[k] = decided.get(k, 0) + 1
    moved = compare(doc, probes.expectations, observed, {}, {**decided, key: len(reaching)},
                    probes.verdicts)
    assert moved.ok, moved.table()
    still = compare(doc, probes.expectations, observed, {}, {**decided, key: 0}, probes.verdicts)
    assert not still.ok and still.unaudited == [(key, 0, len(reaching))]
    assert f"X counter eth0 inbound sg/trial (audit, would drop) moved by 0 but " \
           f"{len(reaching)} probes reached it" in still.table()


def test_audit_rules_are_rows_of_the_coverage_probed_or_with_their_reason():
    """Without the kernel: the plan finds, for each audit rule, a probe that reaches it and
    that it matches (the evaluator says so), or says why there is none; the coverage shows
    the counter moved, or a mismatch when it did not."""
    from sgagent.ir import CounterKey
    from sgagent.verify import coverage
    wide = {**AUDIT, "id": "wide", "ports": 80, "priority": 2}   # behind the refused network
    tunnel = {**{k: v for k, v in AUDIT.items() if k != "ports"}, "id": "tunnel",
              "protocol": "gre", "source": "10.0.0.0/8"}
    hidden = {**AUDIT, "id": "hidden", "ports": 80, "source": "203.0.113.0/24", "priority": 3}
    doc, probes = plan(document(REFUSE_DOC3, WEB, wide, tunnel, hidden))
    chain = dict(((n, d), k) for n, d, k in probes.chains)[("eth0", "inbound")]
    assert {k.rule for k in chain if k.mode == "audit"} == {"wide", "tunnel", "hidden"}
    why = reasons(probes)
    assert set(why) == {"tunnel", "hidden"}
    assert why["tunnel"] == "matches only protocols the sandbox does not probe (gre)"
    assert why["hidden"].startswith("reached by no probe it matches")
    reaching = [(e, v) for e, v in zip(probes.expectations, probes.verdicts)
                if any(a.rule == "wide" for a in v.audits)]
    assert reaching and all(e.port == 80 and not e.peer.startswith("203.0.113.")
                            for e, _ in reaching)
    key = CounterKey("eth0", "inbound", "sg", "wide", "drop", "audit")
    observed = [e.outcome for e in probes.expectations]
    decided: dict = {}
    for e, v in zip(probes.expectations, probes.verdicts):
        k = CounterKey(e.nic, e.direction, v.group, v.rule, v.verdict)
        decided[k] = decided.get(k, 0) + 1
    for moved, ok in ((len(reaching), True), (0, False)):
        from sgagent.verify import compare
        report = compare(doc, probes.expectations, observed, {}, {**decided, key: moved},
                         probes.verdicts)
        cov = coverage(doc, probes, report)
        by = {(e.key.rule, e.direction): e for e in cov.entries}
        w = by[("wide", "inbound")]
        assert (w.probed, w.probes, w.moved, w.mismatches == 0) == (True, len(reaching), moved, ok)
        row = next(r for r in cov.table_rows() if r[0] == "sg/wide")
        assert row[3] == "audit drop" and f"counter moved {moved}" in row[6]
        assert row[6].startswith("X") is not ok  # drawn in red on a terminal
        assert not by[("tunnel", "inbound")].probed and not by[("hidden", "inbound")].probed
        assert cov.line() == "3 of 5 rules probed (2 not: see the coverage table)"
        assert w.as_dict()["mode"] == "audit" and w.as_dict()["counter_moved"] == moved
