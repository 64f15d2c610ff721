"""The iptables rendering without root: its names fit iptables and ipset, it refuses what
iptables would read as a pattern, and -- through a model of the iptables and ipset syntax it
writes (tests/ipt/sim.py) -- every generated packet gets the evaluator's verdict and counts on
the evaluator's rule, for both renderings.  tests/ipt/test_kernel.py checks the same with
real packets."""

from __future__ import annotations

import ipaddress
import random
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sgagent.compiler import compile_document
from sgagent.evaluator import Packet as EvPacket
from sgagent.evaluator import evaluate
from sgagent.ipt.names import ROOTS, comment_of, key_of
from sgagent.flowlog.prefix import encode as log_prefix
from sgagent.ipt import render as render_module
from sgagent.ipt.render import RenderError, cidrs, logged, render
from sgagent.ipt.rules import Saved, counters_in, normal_rule, parse_save, restore_script
from sgagent.ir import CounterKey
from sgagent.load import load_file, parse_data

from ..strategies import documents, probes
from .sim import PROTO, Packet, run

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import docgen  # noqa: E402

HOST = {4: "192.0.2.1", 6: "2001:db8:ffff::1"}


def _verdict(t, nic: str, direction: str, peer: str, proto: str, port, over=False,
             events=None):
    addr = ipaddress.ip_address(peer)
    icmp = 8 if proto == "icmp" else 128 if proto == "icmpv6" else None
    dport = port if proto in ("tcp", "udp") else None
    me = HOST[addr.version]
    if direction == "inbound":
        p = Packet(nic, None, peer, me, PROTO[proto], dport, icmp)
        hook = "INPUT"
    else:
        p = Packet(None, nic, me, peer, PROTO[proto], dport, icmp)
        hook = "OUTPUT"
    p.over_limit = over
    out = run(t, hook, p)[0]
    if events is not None:
        events[:] = p.events
    return out


@pytest.mark.parametrize("rendering", ["sets", "linear", "sets, one rule a bucket"])
@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_rendering_agrees_with_oracle(rendering, data):
    raw = data.draw(documents())
    doc = parse_data(raw)
    rs = compile_document(doc)
    with pytest.MonkeyPatch.context() as mp:
        if rendering.endswith("bucket"):  # small documents: many buckets, a deep tree
            mp.setattr(render_module, "BUCKET_RULES", 1)
        t = render(rs, rendering.split(",")[0])
    logs = {k: log for c in rs.chains for k, log in logged(c)}
    for nic, direction, peer, proto, port in data.draw(probes(raw, 30)):
        v = evaluate(doc, EvPacket(nic, direction, ipaddress.ip_address(peer), proto,
                                   port if proto in ("tcp", "udp") else None,
                                   {"icmp": 8, "icmpv6": 128}.get(proto)))
        verdict, key = _verdict(t, nic, direction, peer, proto, port)
        assert verdict == v.verdict, (nic, direction, peer, proto, port, v)
        if v.reason != "allowance":
            assert key is not None and (key.group, key.rule, key.policy) == \
                (v.group, v.rule, v.verdict), (nic, direction, peer, proto, port, v, key)
        # a logged decision reports the packet under its limit, counts it as suppressed over
        # it, and decides the same either way; one that does not log does neither
        # audit rules reached (those no enforced rule before them decides) report "would ..."
        # first, in order, and decide nothing
        audits = [CounterKey(nic, direction, a.group, a.rule, a.policy, "audit")
                  for a in v.audits]
        for over in (False, True):
            events: list = []
            assert _verdict(t, nic, direction, peer, proto, port, over, events)[0] == verdict
            logged_keys = audits + ([key] if key in logs and v.reason != "allowance" else [])
            assert events == [("suppressed", k) if over else ("log", log_prefix(k))
                              for k in logged_keys], (key, v, events)


def test_names_fit_iptables_and_ipset():
    rs = compile_document(load_file("examples/alibaba/multi-group-priority.yaml"))
    for rendering in ("sets", "linear"):
        t = render(rs, rendering)
        for family in (4, 6):
            assert all(n.startswith("sgagent") and len(n) <= 28 for n in t.chains[family])
        assert all(n.startswith("sgagent") and len(n) <= 31 for n in t.sets)


def test_same_ruleset_renders_the_same():
    rs = compile_document(load_file("examples/tencent/multi-group-order.yaml"))
    assert render(rs).text() == render(rs).text()


def _one_nic(name: str) -> dict:
    return {"version": 1, "host": {"instance": "i", "account": "1", "network": "vpc",
                                   "nics": [{"name": name, "role": "vpc",
                                             "security_groups": ["sg"]}]},
            "security_groups": {"sg": {"rules": [
                {"id": "ssh", "direction": "inbound", "protocol": "tcp", "ports": 22,
                 "source": "192.0.2.0/24"},
                {"id": "out", "direction": "outbound", "policy": "drop", "protocol": "udp",
                 "ports": 9, "destination": "0.0.0.0/0"}]}}}


def test_interface_names_iptables_reads_otherwise_are_matched_exactly_or_refused():
    # ipset splits its elements at ',' (a '"', a quote to iptables-restore, the document
    # refuses already)
    with pytest.raises(RenderError, match=r"e,th\+.*ipset cannot hold"):
        render(compile_document(parse_data(_one_nic("e,th+"))))
    # a trailing '+' is a wildcard to -i/-o: the name goes into a hash:net,iface set
    for name in ("eth+", "+", "!x+"):
        t = render(compile_document(parse_data(_one_nic(name))))
        sets = {n: s for n, s in t.sets.items() if s.type == "hash:net,iface"}
        assert sorted(e for s in sets.values() for e in s.elements) == \
            [f"0.0.0.0/0,{name}", f"::/0,{name}"]
        dispatch = [r for f in (4, 6) for h in ROOTS.values() for r in t.chains[f][h]]
        assert dispatch and all("--match-set" in r and " -i " not in f" {r}" and
                                " -o " not in f" {r}" for r in dispatch)
        for p, sim_hook in ((Packet(name, None, "192.0.2.5", HOST[4], 6, 22), "INPUT"),
                            (Packet(name[:-1] or "x", None, "192.0.2.5", HOST[4], 6, 22),
                             "INPUT"),
                            (Packet(None, name, HOST[4], "198.51.100.1", 17, 9), "OUTPUT"),
                            (Packet(None, name + "x", HOST[4], "198.51.100.1", 17, 9),
                             "OUTPUT")):
            verdict, key = run(t, sim_hook, p)[0]
            mine = name in (p.iif, p.oif)
            assert (verdict, key is not None) == (("accept", True) if p.iif == name else
                                                  ("drop", True) if mine else ("accept", False))
    # a leading '!' is literal to iptables 1.8 (negation is '! -i')
    t = render(compile_document(parse_data(_one_nic("!x0"))))
    assert "-i !x0 -j sgagent-in-x" in " ".join(t.chains[4][ROOTS["INPUT"]])


def test_flow_logs_are_rendered():
    raw = {"version": 1, "host": {"instance": "i", "account": "1",
                                  "nics": [{"name": "eth0", "security_groups": ["sg"],
                                            "log_default": True}]},
           "security_groups": {"sg": {"rules": [
               {"id": "web", "direction": "inbound", "protocol": "tcp", "ports": 80,
                "source": "198.51.100.0/24", "log": True, "log_rate": "2/second burst 4"}]}}}
    t = render(compile_document(parse_data(raw)))
    rules = [r for c in t.chains[4].values() for r in c]
    assert "-m limit --limit 2/sec --limit-burst 4 -g" in " ".join(rules)
    assert sum("--nflog-prefix" in r for r in rules) == 3  # web, both defaults


@pytest.mark.parametrize("text", ["eth0|in|a|sg-1|ssh", "eth0|in|d||default",
                                  'eth0|in|a|sg 1|rule "x" \\ y', "eth0|out|r|grüppe|r/1"])
def test_counter_identity_travels_in_one_comment(text):
    from sgagent.nft.names import parse_comment
    key = parse_comment(text)
    comment = comment_of(key)
    assert " " not in comment and '"' not in comment and len(comment) < 256
    assert key_of(comment) == key


def test_ranges_become_networks_without_slash_zero():
    assert cidrs(0, 2**32 - 1, 4) == ["0.0.0.0/1", "128.0.0.0/1"]
    assert cidrs(int(ipaddress.ip_address("10.0.0.1")), int(ipaddress.ip_address("10.0.0.4")),
                 4) == ["10.0.0.1", "10.0.0.2/31", "10.0.0.4"]


def test_saved_rules_compare_equal_to_rendered():
    assert normal_rule('-p gre -m comment --comment "a|b" -j RETURN') == \
        normal_rule("-p 47 -m comment --comment a|b -j RETURN")


def saved(chains: dict, counts: dict | None = None,
          hooked=("INPUT", "FORWARD", "OUTPUT")) -> Saved:
    counts = counts or {}
    return Saved({n: list(r) for n, r in chains.items()},
                 {n: counts.get(n, [(0, 0)] * len(r)) for n, r in chains.items()}, set(hooked))


def test_restore_touches_only_what_changed():
    have = saved({"sgagent-t-1": ["-m comment --comment x -j RETURN"],
                  "sgagent-k-1": ["-g sgagent-t-1"], "sgagent-old": ["-j DROP"]})
    want = {"sgagent-t-1": ("-m comment --comment x -j RETURN",),
            "sgagent-k-2": ("-g sgagent-t-1",)}
    script = restore_script(have, want)
    assert ":sgagent-t-1 " not in script and "-A sgagent-t-1" not in script  # counters kept
    assert ":sgagent-k-2 - [0:0]" in script and "-X sgagent-k-1" in script
    assert "-X sgagent-old" in script and "-I " not in script
    assert restore_script(saved(want), want) == ""
    assert "-I INPUT 1 -j sgagent-INPUT" in restore_script(saved({}, hooked=()), want)


def test_counts_of_replaced_rules_are_carried_to_their_successors():
    a, b = comment_of(CounterKey("eth0", "inbound", "sg", "a", "accept")), \
        comment_of(CounterKey("eth0", "inbound", "sg", "b", "drop"))
    have = saved({"sgagent-k-1": [f"-p tcp -m comment --comment {a} -j RETURN",
                                  f"-m comment --comment {b} -j DROP"],
                  "sgagent-k-2": [f"-p udp -m comment --comment {a} -j RETURN"]},
                 {"sgagent-k-1": [(5, 500), (7, 700)], "sgagent-k-2": [(1, 100)]})
    # k-1 goes: a's 5 packets move to its rule in k-3; b's 7 to b's rule there
    want = {"sgagent-k-3": (f"-p tcp -m tcp --dport 80 -m comment --comment {a} -j RETURN",
                            f"-m comment --comment {b} -j DROP"),
            "sgagent-k-2": (f"-p udp -m comment --comment {a} -j RETURN",)}
    script = restore_script(have, want)
    assert f"[5:500] -A sgagent-k-3 -p tcp" in script and "[7:700] -A sgagent-k-3 -m" in script
    assert "sgagent-k-2" not in script  # kept as it is: its own count stays there
    # b's rule goes, a's stays only in kept k-2: k-2 is written again carrying a's 6
    want = {"sgagent-k-2": (f"-p udp -m comment --comment {a} -j RETURN",)}
    script = restore_script(have, want)
    assert "[6:600] -A sgagent-k-2 -p udp" in script and "-X sgagent-k-1" in script


def test_save_parsing_keeps_only_sgagent_and_reads_counters():
    key = CounterKey("eth0", "inbound", "sg", "r1", "accept")
    text = "\n".join([
        "*nat", ":DOCKER - [0:0]", "[1:2] -A DOCKER -j RETURN", "COMMIT", "*filter",
        ":INPUT ACCEPT [0:0]", ":sgagent-k-1 - [0:0]", ":sgagent-t-1 - [0:0]",
        "[5:500] -A INPUT -j sgagent-INPUT", "[3:300] -A INPUT -s 192.0.2.1/32 -j ACCEPT",
        f'[7:700] -A sgagent-k-1 -p tcp -m comment --comment "{comment_of(key)}" -j REJECT',
        f"[1:100] -A sgagent-t-1 -m comment --comment {comment_of(key)} -j REJECT", "COMMIT"])
    s = parse_save(text)
    assert s.hooked == {"INPUT"} and s.foreign == 1
    assert list(s.chains) == ["sgagent-k-1", "sgagent-t-1"]
    assert s.counters() == {key: (8, 800)} == counters_in(text)


@pytest.mark.parametrize("rendering", ["sets", "linear"])
def test_a_decision_painted_over_everywhere_still_has_its_counter(rendering):
    raw = {"version": 1, "host": {"instance": "i", "account": "1", "network": "vpc",
                                  "nics": [{"name": "eth0", "role": "vpc",
                                            "security_groups": ["sg"]}]},
           "security_groups": {"sg": {"rules": [
               {"id": "first", "direction": "inbound", "protocol": "tcp", "ports": 22,
                "source": "10.0.0.0/8", "priority": 1},
               {"id": "shadowed", "direction": "inbound", "protocol": "tcp", "ports": 22,
                "source": "10.1.0.0/16", "priority": 2}]}}}
    rs = compile_document(parse_data(raw))
    t = render(rs, rendering)
    assert set(t.counters.values()) == {k for c in rs.chains for k in c.counters}
    assert any(k.rule == "shadowed" for k in t.counters.values())


def test_chains_nest_no_deeper_than_nf_tables_allows():
    """nf_tables refuses a ruleset whose chains nest more than 16 deep (counting from the
    hook's chain): the lookup tree of thousands of classes must stay under it."""
    import re
    rules = [{"id": f"r{i}", "direction": "inbound", "protocol": "tcp", "ports": 1000 + i,
              "source": f"10.{i // 250}.{i % 250}.1/32"} for i in range(3000)]
    rules.append({"id": "wide", "direction": "inbound", "protocol": "tcp", "ports": 80,
                  "source": "10.0.0.0/8"})
    raw = {"version": 1, "host": {"instance": "i", "account": "1", "network": "vpc",
                                  "nics": [{"name": "eth0", "role": "vpc",
                                            "security_groups": ["sg"]}]},
           "security_groups": {"sg": {"rules": rules}}}
    t = render(compile_document(parse_data(raw)))
    chains = t.chains[4]
    depth: dict[str, int] = {}

    def deepest(name: str) -> int:
        if name not in depth:
            targets = {m for r in chains[name] for m in re.findall(r"-[gj] (sgagent\S*)", r)}
            depth[name] = 1 + max((deepest(c) for c in targets), default=0)
        return depth[name]
    assert len([n for n in chains if n.startswith(("sgagent-k-", "sgagent-b-"))]) > 100
    assert 1 + deepest("sgagent-INPUT") <= 16  # INPUT itself, then sgagent's


def test_a_large_document_agrees_with_oracle():
    """bench/docgen.py's mix at 1,000 rules: overlapping networks and addresses in many
    buckets, classes with chains of their own, single addresses inside networks (overlay
    classes going on to their network's bucket): probes at each peer's first, last and a
    middle address, on the ports the rules name and others."""
    raw = docgen.generate(1000, seed=3)
    doc = parse_data(raw)
    rs = compile_document(doc)
    t = render(rs)
    assert sum(n.startswith("sgagent-b-") for n in t.chains[4]) > 20
    assert any(n.startswith("sgagent-k-") for n in t.chains[4])
    r = random.Random(3)
    peers, ports = {docgen.CLIENT, "10.0.0.1", "2001:db8::1"}, {docgen.SERVER_PORT, 80, 1}
    for g in raw["security_groups"].values():
        peers.update(g["members"])
        for rule in g["rules"]:
            src = rule.get("source")
            for net in [src] if isinstance(src, str) else src if isinstance(src, list) else []:
                n = ipaddress.ip_network(net, strict=False)
                peers.update(str(a) for a in (n[0], n[-1], n[n.num_addresses // 2]))
            lo, _, hi = str(rule.get("ports", "")).partition("/")
            if lo.isdigit():
                ports.update({int(lo), int(hi), int(hi) + 1})
    peers, ports = sorted(peers), sorted(ports)
    checked = 0
    for peer in r.sample(peers, 600):
        for proto in ("tcp", "udp", "icmp"):
            port = r.choice(ports)
            if proto == "icmp" and ":" in peer:
                proto = "icmpv6"
            v = evaluate(doc, EvPacket("eth0", "inbound", ipaddress.ip_address(peer), proto,
                                       port if proto in ("tcp", "udp") else None,
                                       {"icmp": 8, "icmpv6": 128}.get(proto)))
            verdict, key = _verdict(t, "eth0", "inbound", peer, proto, port)
            assert verdict == v.verdict, (peer, proto, port, v)
            if v.reason != "allowance":
                assert (key.group, key.rule, key.policy) == (v.group, v.rule, v.verdict), \
                    (peer, proto, port, v, key)
            checked += 1
    assert checked == 1800


def test_neighbouring_addresses_and_networks_agree_with_oracle():
    """Peers the sweep joins into one piece (neighbouring /32s: no single-address piece) or
    cuts into many (a /24 with addresses and a /26 inside, next to a /25), looked up at every
    address around them."""
    sources = [["10.1.0.21/32", "10.1.0.22/32"], ["10.2.0.0/24"], ["10.2.0.5/32", "10.2.0.64/26"],
               ["10.2.1.0/25", "10.2.0.255/32"], ["0.0.0.0/0"]]
    rules = [{"id": f"r{i}", "direction": "inbound", "protocol": "tcp", "ports": 7000 + i,
              "source": src, "priority": 10 + i} for i, src in enumerate(sources)]
    raw = {"version": 1, "host": {"instance": "i", "account": "1",
                                  "nics": [{"name": "eth0", "security_groups": ["sg"]}]},
           "security_groups": {"sg": {"rules": rules}}}
    doc = parse_data(raw)
    t = render(compile_document(doc))
    peers = [f"10.1.0.{i}" for i in (20, 21, 22, 23)] + \
        [f"10.2.0.{i}" for i in (0, 4, 5, 6, 63, 64, 127, 128, 254, 255)] + \
        ["10.2.1.0", "10.2.1.127", "10.2.1.128", "192.0.2.1"]
    for peer in peers:
        for port in range(7000, 7000 + len(sources)):
            v = evaluate(doc, EvPacket("eth0", "inbound", ipaddress.ip_address(peer), "tcp",
                                       port, None))
            verdict, key = _verdict(t, "eth0", "inbound", peer, "tcp", port)
            assert (verdict, key.rule) == (v.verdict, v.rule), (peer, port, v)
