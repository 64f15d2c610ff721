"""The IR (compiler.py, ir.py): decision order, per-NIC filtering, ping, counters, and agreement
with the oracle on generated documents and packets."""

from __future__ import annotations

import ipaddress
import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from sgagent.allowances import DHCP_PORTS, LINK_ICMPV6
from sgagent.compiler import compile_document
from sgagent.evaluator import Packet, evaluate
from sgagent.ir import Chain, CounterKey, Match, Ruleset
from sgagent.load import DocumentError, parse_data

from ._docs import load, raw, rule

# --------------------------------------------------------------------------- an IR interpreter


def match_holds(m: Match, rs: Ruleset, p: Packet) -> bool:
    if m.family != p.peer.version:
        return False
    if m.group is not None:
        gs = {g.name: g for g in rs.groups}[m.group]
        if p.peer not in (gs.v4 if m.family == 4 else gs.v6):
            return False
    elif not any(p.peer in n for n in m.nets):
        return False
    if m.proto is None:
        return True
    if m.proto != p.protocol:
        return False
    if m.proto in ("tcp", "udp") and m.ports is not None:
        return any(lo <= (p.port or 0) <= hi for lo, hi in m.ports)
    if m.proto in ("icmp", "icmpv6") and m.icmp_type is not None:
        return p.icmp_type == m.icmp_type
    return True


def always_allowed(p: Packet) -> bool:
    if p.protocol == "icmpv6" and p.peer.version == 6 and p.icmp_type in LINK_ICMPV6:
        return True
    if p.protocol == "udp":
        client, server = DHCP_PORTS[p.peer.version]
        if p.direction == "inbound":
            return (p.sport, p.port) == (server, client)
        return (p.sport, p.port) == (client, server)
    return False


def run_ir(rs: Ruleset, p: Packet) -> tuple[str, CounterKey | None]:
    """First decision of the chain whose Match holds; then inner access; then the default."""
    chain = rs.chain(p.nic, p.direction)
    if always_allowed(p):
        return "accept", None
    for d in chain.decisions:
        if any(match_holds(m, rs, p) for m in d.matches):
            return d.action, d.counter
    if chain.inner_counter is not None:
        sets = {g.name: g for g in rs.groups}
        for g in chain.inner_access:
            if p.peer in sets[g].v4 + sets[g].v6:
                return "accept", chain.inner_counter
    return chain.default.action, chain.default.counter


def expected_key(doc, p: Packet) -> tuple[str, CounterKey | None]:
    v = evaluate(doc, p)
    if v.reason == "allowance":
        return v.verdict, None
    return v.verdict, CounterKey(p.nic, p.direction, v.group, v.rule, v.verdict)


def P(peer, proto="tcp", port=None, nic="eth0", direction="inbound", icmp_type=None, sport=40000):
    if proto in ("tcp", "udp") and port is None:
        port = 80
    return Packet(nic, direction, ipaddress.ip_address(peer), proto, port, icmp_type, sport)


def ids(chain: Chain) -> list[str]:
    return [d.counter.rule for d in chain.decisions]


# --------------------------------------------------------------------------- decision order


def test_priority_order():
    doc = load(raw({
        "a": {"rules": [rule(id="a-acc-5", priority=5), rule(id="a-drop-5", policy="drop",
                                                             priority=5),
                        rule(id="a-acc-1", priority=1), rule(id="a-rej-9", policy="reject",
                                                             priority=9)]},
        "b": {"rules": [rule(id="b-acc-5", priority=5), rule(id="b-drop-1", policy="drop",
                                                             priority=1),
                        rule(id="b-rej-5", policy="reject", priority=5)]},
    }, nics=[{"name": "eth0", "security_groups": ["b", "a"]}]))
    chain = compile_document(doc).chain("eth0", "inbound")
    # priority, then refusals before accepts, then binding order (b, a), then list order
    assert ids(chain) == ["b-drop-1", "a-acc-1", "b-rej-5", "a-drop-5", "b-acc-5", "a-acc-5",
                          "a-rej-9"]
    assert [d.action for d in chain.decisions] == ["drop", "accept", "reject", "drop", "accept",
                                                   "accept", "reject"]


def test_sequential_order():
    doc = load(raw({
        "a": {"rules": [rule(id="a0", priority=9), rule(id="a1", policy="drop", priority=1)]},
        "b": {"rules": [rule(id="b0", policy="reject", priority=50), rule(id="b1", priority=2)]},
    }, ordering="sequential", nics=[{"name": "eth0", "security_groups": ["b", "a"]}]))
    assert ids(compile_document(doc).chain("eth0", "inbound")) == ["b0", "b1", "a0", "a1"]


def test_chains_per_nic_and_direction_with_their_rules():
    doc = load(raw({"a": {"rules": [rule(id="in-a"), rule(id="out-a", direction="outbound")]},
                    "b": {"rules": [rule(id="in-b")]}},
                   nics=[{"name": "eth0", "security_groups": ["a"]},
                         {"name": "eth1", "security_groups": ["a", "b"]}]))
    rs = compile_document(doc)
    assert [(c.nic, c.direction) for c in rs.chains] == [
        ("eth0", "inbound"), ("eth0", "outbound"), ("eth1", "inbound"), ("eth1", "outbound")]
    assert ids(rs.chain("eth0", "inbound")) == ["in-a"]
    assert ids(rs.chain("eth0", "outbound")) == ["out-a"]
    assert ids(rs.chain("eth1", "inbound")) == ["in-a", "in-b"]
    assert rs.chain("eth1", "inbound").decisions[1].counter == \
        CounterKey("eth1", "inbound", "b", "in-b", "accept")


def test_failsafe_first():
    doc = load(raw({"a": {"rules": [rule(id="r", policy="drop")]}},
                   failsafe=[{"direction": "inbound", "protocol": "tcp", "ports": 22,
                              "source": "10.0.0.0/8"}]))
    chain = compile_document(doc).chain("eth0", "inbound")
    assert ids(chain) == ["failsafe/0", "r"]
    assert chain.decisions[0].counter == CounterKey("eth0", "inbound", None, "failsafe/0", "accept")
    assert ids(compile_document(doc).chain("eth0", "outbound")) == []


def test_classic_per_nic_filtering():
    doc = load(raw({"sg": {"rules": [
        rule(id="pub-in", nic="internet"),
        rule(id="priv-in", nic="intranet", source="10.0.0.7"),
        rule(id="pub-out", nic="internet", direction="outbound"),
        rule(id="priv-out", nic="intranet", direction="outbound", destination="10.0.0.0/8"),
    ]}}, network="classic", nics=[{"name": "eth0", "role": "intranet", "security_groups": ["sg"]},
                                  {"name": "eth1", "role": "internet",
                                   "security_groups": ["sg"]}]))
    rs = compile_document(doc)
    assert ids(rs.chain("eth0", "inbound")) == ["priv-in"]
    assert ids(rs.chain("eth1", "inbound")) == ["pub-in"]
    assert ids(rs.chain("eth0", "outbound")) == ["priv-out"]
    assert ids(rs.chain("eth1", "outbound")) == ["pub-out"]
    assert rs.chain("eth0", "inbound").role == "intranet"


def test_vpc_intranet_rule_kept():
    doc = load(raw({"a": {"rules": [rule(id="x", nic="intranet")]}}))
    assert ids(compile_document(doc).chain("eth0", "inbound")) == ["x"]


def test_ping_compiles_to_echo_request_per_family():
    doc = load(raw({"a": {"rules": [
        {"id": "both", "direction": "inbound", "service": "ping",
         "source": ["10.0.0.0/8", "2001:db8::/32"]},
        {"id": "v4", "direction": "inbound", "service": "ping", "source": "0.0.0.0/0"},
        {"id": "grp", "direction": "inbound", "service": "ping", "source": {"group": "a"}},
    ]}}))
    d = {x.counter.rule: x for x in compile_document(doc).chain("eth0", "inbound").decisions}
    assert d["both"].matches == (
        Match(4, (ipaddress.ip_network("10.0.0.0/8"),), None, "icmp", None, 8),
        Match(6, (ipaddress.ip_network("2001:db8::/32"),), None, "icmpv6", None, 128))
    assert d["v4"].matches == (Match(4, (ipaddress.ip_network("0.0.0.0/0"),), None, "icmp",
                                     None, 8),)
    assert set(d["grp"].matches) == {Match(4, (), "a", "icmp", None, 8),
                                     Match(6, (), "a", "icmpv6", None, 128)}


def test_protocol_of_the_other_family_never_matches():
    doc = load(raw({"a": {"rules": [rule(id="v6-only", protocol="icmp", source="::/0")]}}))
    [d] = compile_document(doc).chain("eth0", "inbound").decisions
    assert d.matches == ()


def test_matches_split_by_family_and_group():
    doc = load(raw({"a": {"rules": [rule(ports="80,443", source=[
        "10.0.0.0/8", "10.1.0.0/16", "2001:db8::/32", {"group": "a"}])]}}))
    [d] = compile_document(doc).chain("eth0", "inbound").decisions
    ports = ((80, 80), (443, 443))
    assert set(d.matches) == {
        Match(4, (ipaddress.ip_network("10.0.0.0/8"),), None, "tcp", ports, None),
        Match(4, (), "a", "tcp", ports, None),
        Match(6, (ipaddress.ip_network("2001:db8::/32"),), None, "tcp", ports, None),
        Match(6, (), "a", "tcp", ports, None)}


def test_group_sets_hold_the_referenced_members_by_family():
    doc = load(raw({"web": {"members": ["10.0.0.2", "2001:db8::2", "10.0.0.1"],
                            "rules": [rule(source={"group": "db"})]},
                    "db": {"members": ["10.0.1.1"]}, "unused": {"members": ["10.9.9.9"]}},
                   nics=[{"name": "eth0", "security_groups": ["web"]}]))
    rs = compile_document(doc)
    sets = {g.name: g for g in rs.groups}
    assert set(sets) == {"web", "db"}  # web for inner access, db for the peer
    assert [str(a) for a in sets["web"].v4] == ["10.0.0.1", "10.0.0.2"]
    assert [str(a) for a in sets["web"].v6] == ["2001:db8::2"]
    assert sets["db"].v6 == ()


def test_defaults_and_inner_access_in_the_chain():
    doc = load(raw({"a": {"members": ["10.0.0.5"]}}))
    rs = compile_document(doc)
    cin, cout = rs.chain("eth0", "inbound"), rs.chain("eth0", "outbound")
    assert cin.inner_access == ("a",)
    assert cin.inner_counter == CounterKey("eth0", "inbound", None, "default", "accept")
    assert cin.default.action == "drop" and cin.default.matches == ()
    assert cin.default.counter == CounterKey("eth0", "inbound", None, "default", "drop")
    assert cout.inner_access == () and cout.inner_counter is None
    assert cout.default.counter == CounterKey("eth0", "outbound", None, "default", "accept")
    ent = compile_document(load(raw({"e": {"type": "enterprise", "members": ["10.0.0.5"]}})))
    assert ent.chain("eth0", "inbound").inner_access == ()
    assert ent.chain("eth0", "outbound").default.action == "drop"


def test_counters_are_unique():
    doc = load(raw({
        "a": {"members": ["10.0.0.5"], "rules": [rule(id="web"), rule(), rule(policy="drop"),
                                                  rule(id="x", direction="outbound")]},
        "b": {"rules": [rule(id="web"), rule(id="default"), rule(id="failsafe/0")]},
    }, defaults={"inbound": "accept"},
        failsafe=[{"direction": "inbound", "protocol": "tcp", "source": "10.0.0.0/8"}],
        nics=[{"name": "eth0", "security_groups": ["a", "b"]},
              {"name": "eth1", "security_groups": ["b", "a"]}]))
    rs = compile_document(doc)
    keys = [k for c in rs.chains for k in c.counters]
    dup = [k for k, n in Counter(keys).items() if n > 1]
    assert not dup
    # every chain has its own default counter, and each rule a counter per NIC
    assert sum(1 for k in keys if k.rule == "web" and k.group == "a") == 2
    assert {k.nic for k in keys} == {"eth0", "eth1"}


# --------------------------------------------------------------------------- IR == oracle

V4_NETS = ["0.0.0.0/0", "0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/16", "10.1.2.3/32", "10.1.2.0/24",
           "192.0.2.0/24"]
V6_NETS = ["::/0", "::/0", "2001:db8::/32", "2001:db8:1::/48", "2001:db8:1::5/128"]
V4_HOSTS = ["10.1.2.3", "10.1.2.4", "10.2.0.1", "192.0.2.7"]
V6_HOSTS = ["2001:db8:1::5", "2001:db8:1::6", "2001:db8:2::1", "2001:db9::1"]
HOSTS = [ipaddress.ip_address(h) for h in V4_HOSTS + V6_HOSTS]
PORT_SPECS = [None, None, 22, "20-25", "80-90", "85/443", "22,80", "53"]
GROUPS = ["ga", "gb", "gc"]
SERVICE_PROTO = {"ssh": ("tcp", 22), "ftp": ("tcp", 21), "http": ("tcp", 80), "dns": ("udp", 53),
                 "ping": (None, None)}

# The generators take a random.Random seeded by hypothesis: drawing every choice through
# hypothesis costs ~30 ms an example, this ~1 ms; a failure prints the document and packet.


def gen_document(rnd: random.Random) -> dict:
    """A small valid document: 2-3 groups, mixed priorities and policies, overlapping CIDRs and
    port ranges, group peers, IPv4 and IPv6 (vpc), both orderings, vpc or classic."""
    classic = rnd.randrange(3) == 0
    enterprise = not classic and rnd.randrange(2) == 0
    names = GROUPS[:rnd.randint(2, 3)]
    hosts = V4_HOSTS if classic else V4_HOSTS + V6_HOSTS
    groups = {}
    for g in names:
        rules = []
        for _ in range(rnd.randint(0, 5)):
            direction = rnd.choice(["inbound", "outbound"])
            r = {"direction": direction, "policy": rnd.choice(["accept", "drop", "reject"]),
                 "priority": rnd.randint(1, 2)}
            kind = rnd.choice(["tcp", "tcp", "tcp", "udp", "icmp", "icmpv6", "gre", "all", "svc",
                               "svc"])
            if kind == "svc":
                r["service"] = rnd.choice(sorted(SERVICE_PROTO) + ["ping"])
            else:
                r["protocol"] = kind
                ports = rnd.choice(PORT_SPECS)
                if kind in ("tcp", "udp") and ports is not None:
                    r["ports"] = ports
            nic = None
            if classic:
                nic = r["nic"] = rnd.choice(["intranet", "internet"])
            elif rnd.randrange(5) == 0:
                r["nic"] = "intranet"
            if classic and nic == "intranet" and direction == "inbound":
                pool = [h + "/32" for h in V4_HOSTS]
            else:
                pool = V4_NETS if classic else V4_NETS + V6_NETS
            peers: list = list(dict.fromkeys(rnd.choices(pool, k=rnd.randint(0, 3))))
            if not enterprise and not (classic and nic == "internet") and rnd.randrange(2):
                peers.append({"group": rnd.choice(names)})
            peers = peers or [rnd.choice(pool)]
            r["source" if direction == "inbound" else "destination"] = peers
            rules.append(r)
        group = {"type": "enterprise" if enterprise else "basic", "rules": rules,
                 "members": rnd.sample(hosts, rnd.randint(0, 2))}
        if not enterprise and rnd.randrange(4) == 0:
            group["inner_access"] = "drop"
        groups[g] = group
    host: dict = {"ordering": rnd.choice(["priority", "sequential"])}
    if classic:
        bound = rnd.sample(names, rnd.randint(1, len(names)))
        host["network"] = "classic"
        nics = [{"name": "eth0", "role": "intranet", "security_groups": bound},
                {"name": "eth1", "role": "internet", "security_groups": bound}]
    else:
        nics = [{"name": f"eth{i}", "role": "vpc",
                 "security_groups": rnd.sample(names, rnd.randint(0, len(names)))}
                for i in range(rnd.randint(1, 2))]
    if rnd.randrange(4) == 0:
        host["defaults"] = {"inbound": rnd.choice(["accept", "drop"]),
                            "outbound": rnd.choice(["accept", "drop"])}
    if rnd.randrange(4) == 0:
        host["failsafe"] = [{"direction": "inbound", "protocol": "tcp", "ports": 22,
                             "source": "10.1.0.0/16"}]
    return raw(groups, nics=nics, **host)


def gen_packet(rnd: random.Random, data: dict) -> Packet:
    """A packet; three in four aimed at a rule or failsafe entry of the document (its NIC,
    direction, a peer it names, its protocol, a port in one of its ranges), so that rules
    overlap and decide often; the others anything."""
    nics = data["host"]["nics"]
    classic = data["host"].get("network") == "classic"
    hosts = [h for h in HOSTS if h.version == 4 or not classic]
    aimed = [(n["name"], r) for n in nics for g in n["security_groups"]
             for r in data["security_groups"][g]["rules"]]
    aimed += [(n["name"], f) for n in nics for f in data["host"].get("failsafe", ())]
    if aimed and rnd.randrange(4):
        nic, r = rnd.choice(aimed)
        direction = r["direction"]
        peers = r.get("source") or r.get("destination")
        candidates = []
        for item in peers if isinstance(peers, list) else [peers]:
            if isinstance(item, dict):
                candidates += data["security_groups"][item["group"]]["members"]
            else:
                net = ipaddress.ip_network(item)
                candidates += [str(h) for h in hosts if h.version == net.version and h in net]
        peer = ipaddress.ip_address(rnd.choice(candidates or V4_HOSTS))
        proto, port = r.get("protocol"), None
        if "service" in r:
            proto, port = SERVICE_PROTO[r["service"]]
        icmp = "icmp" if peer.version == 4 else "icmpv6"
        if proto in (None, "all", "icmp", "icmpv6"):
            proto = icmp
        if proto in ("tcp", "udp") and port is None:
            spec = rnd.choice(str(r.get("ports", "1-65535")).replace("/", "-").split(","))
            lo, _, hi = spec.partition("-")
            port = rnd.randint(int(lo), int(hi or lo))
        icmp_type = None
        if proto == icmp:  # echo request half of the time, else another type
            icmp_type = rnd.choice([{4: 8, 6: 128}[peer.version], 0, 3, 129, 1])
        return Packet(nic, direction, peer, proto, port, icmp_type,
                      40000 if proto in ("tcp", "udp") else None)
    peer = rnd.choice(hosts)
    icmp = "icmp" if peer.version == 4 else "icmpv6"
    proto = rnd.choice(["tcp", "udp", icmp, "gre", "sctp"])
    port = icmp_type = sport = None
    if proto in ("tcp", "udp"):
        port = rnd.choice([20, 21, 22, 23, 53, 67, 68, 80, 86, 443, 546, 547, 1000])
        sport = rnd.choice([67, 68, 546, 547, 40000])
    elif proto == icmp:
        icmp_type = rnd.choice([0, 3, 8, 128, 129, 135])
    return Packet(rnd.choice(nics)["name"], rnd.choice(["inbound", "outbound"]), peer, proto,
                  port, icmp_type, sport)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.integers(0, 2**32 - 1))
def test_ir_agrees_with_the_oracle(seed):
    rnd = random.Random(seed)
    raw_doc = gen_document(rnd)
    try:
        doc = parse_data(raw_doc)
    except DocumentError as exc:  # the generator only makes valid documents
        raise AssertionError(f"generated an invalid document: {exc.errors}\n{raw_doc}") from None
    rs = compile_document(doc)
    keys = [k for c in rs.chains for k in c.counters]
    assert len(keys) == len(set(keys)), "duplicate counter keys"
    for _ in range(16):
        p = gen_packet(rnd, raw_doc)
        got, want = run_ir(rs, p), expected_key(doc, p)
        assert got == want, f"\nIR:     {got}\noracle: {want}\n{p}\n{raw_doc}"
        assert want[1] is None or want[1] in keys


def test_inner_access_only_for_groups_that_grant_it():
    groups = {"a": {"members": ["10.0.0.5"], "inner_access": "drop"},
              "b": {"members": ["10.0.0.6"]}, "c": {}}
    chain = compile_document(load(raw(groups))).chain("eth0", "inbound")
    assert chain.inner_access == ("b",)  # a refuses inner access, c has no members
    # when the default accepts anyway, one counter (the default's) serves both
    chain = compile_document(load(raw(groups, defaults={"inbound": "accept"}))).chain(
        "eth0", "inbound")
    assert chain.inner_counter is None
    assert chain.default.counter == CounterKey("eth0", "inbound", None, "default", "accept")
    p = P("10.0.0.6", nic="eth0")
    assert run_ir(compile_document(load(raw(groups, defaults={"inbound": "accept"}))), p) == \
        expected_key(load(raw(groups, defaults={"inbound": "accept"})), p)
