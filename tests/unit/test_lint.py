"""``sgagent lint``: each kind of finding, found where it is and not where it is not, and the
shadowing it reports held against the evaluator (the oracle): a shadowed rule never decides a
packet, a rule not reported decides at least one."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sgagent.evaluator import Packet, evaluate
from sgagent.lint import (ALIBABA_GROUP_REFERENCES, ALIBABA_GROUPS_PER_NIC,
                          ALIBABA_RULES_PER_NIC, TENCENT_GROUPS_PER_NIC,
                          TENCENT_RULES_PER_DIRECTION, lint)

from ._docs import load, raw, rule

ROOT = Path(__file__).resolve().parents[2]
SGAGENT = Path(sys.executable).with_name("sgagent")


def kinds(data: dict) -> list[tuple[str, str]]:
    return [(f.kind, f.path) for f in lint(load(data))]


def one(data: dict, kind: str):
    found = [f for f in lint(load(data)) if f.kind == kind]
    assert len(found) == 1, found
    return found[0]


# --------------------------------------------------------------------------- clean


CLEAN = raw({"sg-web": {"members": ["10.0.0.5"], "rules": [
    rule(id="office-ssh", ports=22, source="198.51.100.0/24", priority=1),
    rule(id="no-ssh", policy="drop", ports=22, priority=5),
    rule(id="web", ports="80,443", source=["0.0.0.0/0", "::/0"], priority=10),
    rule(id="to-db", direction="outbound", ports=5432, destination={"group": "sg-db"}),
]}, "sg-db": {"members": ["10.0.1.5"], "rules": [
    rule(id="db", ports=5432, source={"group": "sg-web"})]}},
    nics=[{"name": "eth0", "security_groups": ["sg-web"]}])


def test_a_clean_document_has_no_finding():
    assert kinds(CLEAN) == []


def test_the_examples_lint_without_a_traceback():
    for path in sorted((ROOT / "examples").rglob("*.yaml")):
        from sgagent.load import load_file
        lint(load_file(path))  # findings or not, never an exception


# --------------------------------------------------------------------------- shadowed


def test_a_rule_covered_by_a_better_one_is_shadowed():
    data = raw({"sg": {"rules": [
        rule(id="wide", ports="1-1024", source="10.0.0.0/8", priority=1),
        rule(id="narrow", policy="drop", ports=22, source="10.1.0.0/16", priority=2),
    ]}})
    f = one(data, "shadowed")
    assert f.path == "security_groups.sg.rules[1]" and f.rule == "narrow"
    assert f.related == ("sg/wide",) and f.nics == ("eth0",)
    assert "never decides a packet on eth0" in f.message


def test_a_rule_only_partly_covered_is_not_shadowed():
    data = raw({"sg": {"rules": [
        rule(id="wide", ports="1-1024", source="10.0.0.0/8", priority=1),
        rule(id="wider", policy="drop", ports=22, source="10.0.0.0/7", priority=2),
    ]}})
    assert kinds(data) == []


def test_shadowed_by_several_rules_together():
    data = raw({"sg": {"rules": [
        rule(id="low", ports="1-100", source="10.0.0.0/8"),
        rule(id="high", ports="101-200", source="10.0.0.0/8"),
        rule(id="both", policy="drop", ports="50-150", source="10.2.0.0/16", priority=2),
    ]}})
    f = one(data, "shadowed")
    assert f.rule == "both" and f.related == ("sg/high", "sg/low")


def test_a_failsafe_entry_can_shadow_a_rule():
    data = raw({"sg": {"rules": [rule(id="ssh", ports=22, source="10.0.0.9")]}},
               failsafe=[{"direction": "inbound", "service": "ssh", "source": "10.0.0.0/8"}])
    f = one(data, "shadowed")
    assert f.related == ("failsafe/0",)


def test_an_icmp_rule_with_ipv6_peers_can_never_match():
    data = raw({"sg": {"rules": [rule(id="p", protocol="icmp", source="2001:db8::/32")]}})
    f = one(data, "shadowed")
    assert "can never match" in f.message


def test_a_group_peer_with_no_members_is_no_finding():
    data = raw({"sg": {"rules": [rule(id="g", source={"group": "sg-empty"})]},
                "sg-empty": {"rules": []}}, nics=[{"name": "eth0", "security_groups": ["sg"]}])
    assert kinds(data) == []


def test_a_group_peer_shadowed_with_its_current_members():
    data = raw({"sg": {"rules": [rule(id="net", ports=22, source="10.0.0.0/8"),
                                 rule(id="g", ports=22, source={"group": "sg-p"}, priority=2)]},
                "sg-p": {"members": ["10.0.0.7"], "rules": []}},
               nics=[{"name": "eth0", "security_groups": ["sg"]}])
    assert one(data, "shadowed").rule == "g"
    data["security_groups"]["sg-p"]["members"].append("192.0.2.7")  # one member outside
    assert kinds(data) == []


def test_audit_rules_neither_shadow_nor_are_shadowed():
    data = raw({"sg": {"rules": [
        rule(id="trial", policy="drop", mode="audit", ports=22),
        rule(id="ssh", ports=22, source="198.51.100.0/24", priority=2)]}})
    assert kinds(data) == []


# --------------------------------------------------------------------------- duplicate


def test_a_duplicate_is_reported_once_as_a_duplicate():
    data = raw({"sg": {"rules": [
        rule(id="a", ports=8080, source=["198.51.100.0/24", "192.0.2.0/24"]),
        rule(id="b", ports="8080", source=["192.0.2.0/24", "198.51.100.0/24"],
             description="the same, written otherwise"),
    ]}})
    assert kinds(data) == [("duplicate", "security_groups.sg.rules[1]")]
    assert one(data, "duplicate").related == ("sg/a",)


def test_a_duplicate_across_two_groups_of_one_nic():
    data = raw({"a": {"rules": [rule(id="x", ports=8080, source="192.0.2.0/24")]},
                "b": {"rules": [rule(id="y", ports=8080, source="192.0.2.0/24")]}})
    assert kinds(data) == [("duplicate", "security_groups.b.rules[0]")]


def test_a_rule_with_another_policy_is_no_duplicate():
    data = raw({"sg": {"rules": [rule(id="a", ports=8080, source="192.0.2.0/24"),
                                 rule(id="b", policy="drop", ports=8080, source="192.0.2.0/24")]}})
    # the drop wins at equal priority: the accept is shadowed, but no duplicate
    assert kinds(data) == [("shadowed", "security_groups.sg.rules[0]")]


# --------------------------------------------------------------------------- ordering


def tencent(rules: list[dict]) -> dict:
    return raw({"sg": {"rules": rules}}, ordering="sequential")


def test_a_later_allow_hidden_by_an_earlier_drop():
    data = tencent([rule(id="deny-all", policy="drop", protocol="all"),
                    rule(id="office", ports=22, source="198.51.100.7")])
    f = one(data, "ordering")
    assert f.path == "security_groups.sg.rules[1]" and f.related == ("sg/deny-all",)
    assert "list it before sg/deny-all" in f.message
    assert kinds(data) == [("ordering", "security_groups.sg.rules[1]")]  # not also shadowed


def test_the_allow_listed_first_is_fine():
    assert kinds(tencent([rule(id="office", ports=22, source="198.51.100.7"),
                          rule(id="deny-all", policy="drop", protocol="all")])) == []


def test_the_same_order_under_priority_is_no_ordering_pitfall():
    data = raw({"sg": {"rules": [rule(id="deny-all", policy="drop", protocol="all", priority=1),
                                 rule(id="office", ports=22, source="198.51.100.7", priority=1)]}})
    assert kinds(data) == [("shadowed", "security_groups.sg.rules[1]")]


def test_a_partly_hidden_allow_whose_priority_says_it_should_win():
    data = tencent([rule(id="no-ten", policy="drop", protocol="all", source="10.0.0.0/8",
                         priority=50),
                    rule(id="web", ports=80, source="0.0.0.0/0", priority=1)])
    f = one(data, "ordering")
    assert f.rule == "web" and "priority 1 plays no part" in f.message
    # without priorities the same rules say what they mean: deny 10/8, let the rest in
    assert kinds(tencent([rule(id="no-ten", policy="drop", protocol="all", source="10.0.0.0/8"),
                          rule(id="web", ports=80, source="0.0.0.0/0")])) == []


# --------------------------------------------------------------------------- admin ports


@pytest.mark.parametrize("port,name", [(22, "ssh"), (3389, "rdp"), (3306, "mysql"),
                                       (5432, "postgresql"), (6379, "redis"), (1433, "mssql"),
                                       (1521, "oracle"), (23, "telnet")])
def test_an_admin_port_open_to_the_world(port, name):
    f = one(raw({"sg": {"rules": [rule(id="r", ports=port)]}}), "open-admin-port")
    assert f"{name} (tcp {port})" in f.message and "0.0.0.0/0" in f.message


def test_admin_ports_inside_a_range_and_ipv6_and_services():
    f = one(raw({"sg": {"rules": [rule(id="r", ports="1-3400", source="::/0")]}}),
            "open-admin-port")
    assert "::/0" in f.message and "ssh (tcp 22)" in f.message and "rdp (tcp 3389)" in f.message
    f = one(raw({"sg": {"rules": [{"direction": "inbound", "service": "rdp",
                                   "source": "0.0.0.0/0"}]}}), "open-admin-port")
    assert "rdp (tcp 3389)" in f.message


@pytest.mark.parametrize("over", [
    {"source": "198.51.100.0/24"},                     # not the world
    {"ports": 443},                                    # not an admin port
    {"policy": "drop"},                                # refuses it
    {"direction": "outbound", "destination": "0.0.0.0/0"},  # outbound
    {"protocol": "udp"},                               # not tcp
])
def test_no_admin_port_finding(over):
    assert kinds(raw({"sg": {"rules": [rule(id="r", **{"ports": 22, **over})]}})) == []


def test_an_admin_port_closed_by_an_earlier_drop_is_not_open():
    data = raw({"sg": {"rules": [rule(id="no-ssh", policy="drop", ports=22, priority=1),
                                 rule(id="ssh", ports=22, priority=2)]}})
    assert kinds(data) == [("shadowed", "security_groups.sg.rules[1]")]
    f = one(raw({"sg": {"rules": [rule(id="no-ssh", policy="drop", ports=22, priority=1),
                                  rule(id="low", ports="22-23", priority=2)]}}), "open-admin-port")
    assert "telnet (tcp 23)" in f.message and "ssh" not in f.message


# --------------------------------------------------------------------------- vendor limits


def many(n: int, direction: str = "inbound", net: str = "192.0.2.0/24") -> list[dict]:
    peer = {"source" if direction == "inbound" else "destination": net}
    return [rule(id=f"r{i}{direction[0]}", direction=direction, ports=1000 + i, **peer)
            for i in range(n)]


def test_alibaba_rules_per_nic():
    half = ALIBABA_RULES_PER_NIC // 2
    b = "198.51.100.0/24"
    ok = raw({"a": {"rules": many(half)}, "b": {"rules": many(half, net=b)}})
    assert kinds(ok) == []
    over = raw({"a": {"rules": many(half)}, "b": {"rules": many(half + 1, net=b)}})
    f = one(over, "vendor-limit")
    assert f.path == "host.nics[0]" and "1,001 rules" in f.message and "1,000" in f.message


def test_alibaba_groups_per_nic():
    groups = {f"g{i}": {"rules": []} for i in range(ALIBABA_GROUPS_PER_NIC)}
    assert kinds(raw(groups)) == []
    groups["one-more"] = {"rules": []}
    f = one(raw(groups), "vendor-limit")
    assert f.path == "host.nics[0].security_groups" and "11 groups" in f.message


def test_alibaba_group_references_of_a_basic_group():
    peers = {f"p{i}": {"members": [f"10.9.0.{i + 1}"], "rules": []}
             for i in range(ALIBABA_GROUP_REFERENCES + 1)}
    rules = [rule(id=f"r{i}", ports=8000 + i, source={"group": f"p{i}"})
             for i in range(ALIBABA_GROUP_REFERENCES)]
    data = raw({"sg": {"rules": rules}, **peers}, nics=[{"name": "eth0", "security_groups": ["sg"]}])
    assert kinds(data) == []
    rules.append(rule(id="more", ports=9000, source={"group": f"p{ALIBABA_GROUP_REFERENCES}"}))
    f = one(data, "vendor-limit")
    assert f.path == "security_groups.sg.rules" and "21 groups" in f.message


def test_tencent_rules_per_direction():
    ok = raw({"sg": {"rules": many(TENCENT_RULES_PER_DIRECTION)
                     + many(TENCENT_RULES_PER_DIRECTION, "outbound")}}, ordering="sequential")
    assert kinds(ok) == []
    over = raw({"sg": {"rules": many(TENCENT_RULES_PER_DIRECTION + 1)}}, ordering="sequential")
    f = one(over, "vendor-limit")
    assert "101 inbound rules" in f.message and "Tencent" in f.message


def test_tencent_groups_per_nic():
    groups = {f"g{i}": {"rules": []} for i in range(TENCENT_GROUPS_PER_NIC)}
    assert kinds(raw(groups, ordering="sequential")) == []
    groups["one-more"] = {"rules": []}
    f = one(raw(groups, ordering="sequential"), "vendor-limit")
    assert "6 groups" in f.message and "Tencent allows 5" in f.message


# --------------------------------------------------------------------------- against the oracle


ADDRS = st.sampled_from(["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.3", "0.0.0.0/0",
                         "192.0.2.0/24", "192.0.2.128/25"])
PORTS = st.sampled_from([22, 80, "20-30", "1-1024", "80,443", None])


@st.composite
def documents(draw):
    rules = []
    for i in range(draw(st.integers(1, 6))):
        proto = draw(st.sampled_from(["tcp", "tcp", "udp", "all"]))
        r = rule(id=f"r{i}", protocol=proto, source=draw(ADDRS),
                 policy=draw(st.sampled_from(["accept", "drop"])),
                 priority=draw(st.integers(1, 3)))
        if proto != "all":
            r["ports"] = draw(PORTS)
        rules.append({k: v for k, v in r.items() if v is not None})
    ordering = draw(st.sampled_from(["priority", "sequential"]))
    return raw({"sg": {"rules": rules}}, ordering=ordering)


PROBE_PEERS = ["10.0.0.1", "10.1.0.1", "10.1.2.3", "10.1.2.4", "192.0.2.1", "192.0.2.200",
               "198.51.100.1", "11.0.0.1"]
PROBE_PORTS = [1, 20, 22, 25, 30, 50, 80, 100, 443, 1024, 1025, 8080]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_shadowed_rules_never_decide_and_the_others_do(data):
    doc = load(data)
    shadowed = {f.rule for f in lint(doc) if f.kind in ("shadowed", "duplicate")
                or f.kind == "ordering" and "every packet it matches" in f.message}
    decided = set()
    for peer in PROBE_PEERS:
        for proto in ("tcp", "udp"):
            for port in PROBE_PORTS:
                v = evaluate(doc, Packet("eth0", "inbound", ipaddress.ip_address(peer), proto,
                                         port))
                decided.add(v.rule)
        for proto, icmp_type in (("icmp", 8), ("gre", None)):
            decided.add(evaluate(doc, Packet("eth0", "inbound", ipaddress.ip_address(peer),
                                             proto, None, icmp_type)).rule)
    assert not shadowed & decided, (shadowed & decided, data)
    # the probes above cover every boundary these documents can draw, so a rule that decides
    # somewhere decides at one of them
    ids = {r["id"] for r in data["security_groups"]["sg"]["rules"]}
    assert ids - shadowed <= decided, (ids - shadowed - decided, data)


# --------------------------------------------------------------------------- the command


def sgagent(*args) -> subprocess.CompletedProcess:
    if not SGAGENT.exists():
        pytest.skip(f"sgagent is not installed next to {sys.executable}")
    return subprocess.run([str(SGAGENT), *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env={**os.environ, "COLUMNS": "100"})


def test_lint_command_exit_codes_and_output(tmp_path):
    clean = tmp_path / "clean.yaml"
    clean.write_text(yaml.safe_dump(CLEAN))
    r = sgagent("lint", clean)
    assert (r.returncode, r.stdout, r.stderr) == (0, f"{clean}: no findings\n", "")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(tencent([rule(id="deny-all", policy="drop", protocol="all"),
                                           rule(id="office", ports=22, source="198.51.100.7"),
                                           rule(id="ssh", ports=22, source="::/0")])))
    r = sgagent("lint", bad)
    assert r.returncode == 2 and r.stderr == ""
    lines = r.stdout.splitlines()
    assert lines[0].startswith("security_groups.sg.rules[1]: ordering: sg/office accepts")
    assert lines[1].startswith("security_groups.sg.rules[2]: open-admin-port: sg/ssh lets ::/0")
    assert lines[2] == f"{bad}: 2 findings (1 ordering, 1 open-admin-port)"
    r = sgagent("lint", "--json", bad)
    out = json.loads(r.stdout)
    assert r.returncode == 2 and out["counts"]["ordering"] == 1
    assert [f["kind"] for f in out["findings"]] == ["ordering", "open-admin-port"]
    assert out["findings"][0]["related"] == ["sg/deny-all"]
    r = sgagent("lint", "--json", clean)
    assert r.returncode == 0 and json.loads(r.stdout)["findings"] == []


def test_lint_refuses_a_bad_document_with_exit_1(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(raw({"sg": {"rules": [rule(ports=70000)]}})))
    r = sgagent("lint", p)
    assert r.returncode == 1 and r.stdout == "" and "70000 is not a port" in r.stderr
