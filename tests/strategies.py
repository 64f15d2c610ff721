"""Hypothesis strategies: host documents and packets for differential tests.

Addresses stay inside the test plan (10.0.0.0/8 intranet, documentation ranges for the
"internet", fd00::/8 and 2001:db8::/32 for IPv6), and avoid the sandbox's host and gateway
addresses, so every generated peer can be placed in a sandbox and probed.
"""

from __future__ import annotations

import ipaddress

from hypothesis import strategies as st

# Small pools so that rules overlap often: the same peers, nested CIDRs, shared ports.
V4_NETS = ["0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/16", "10.1.0.16/28", "10.1.0.21/32",
           "198.51.100.0/24", "198.51.100.0/28", "198.51.100.7/32", "203.0.113.0/25",
           "203.0.113.9/32", "192.0.2.128/26"]
V6_NETS = ["::/0", "2001:db8::/32", "2001:db8:1::/48", "2001:db8:1::7/128", "fd00::/8",
           "fd00:1::/64", "fd00:1::21/128"]
V4_PEERS = ["10.1.0.21", "10.1.0.22", "10.1.0.30", "10.9.0.9", "198.51.100.7", "198.51.100.8",
            "198.51.100.77", "203.0.113.9", "203.0.113.200", "192.0.2.150"]
V6_PEERS = ["2001:db8:1::7", "2001:db8:1::8", "2001:db8:2::7", "fd00:1::21", "fd00:1::22",
            "fd00:99::9"]
PORTS = [22, 23, 53, 80, 81, 443, 3306, 8080]
PORT_SPECS = ["22", "80", "80-443", "22,3389", "20 to 23", "1/100", "8080", "443", "-1/-1"]


def _peer(v6: bool, groups: list[str]):
    nets = V4_NETS + (V6_NETS if v6 else [])
    single = st.sampled_from(nets)
    items = [single, st.lists(single, min_size=2, max_size=3, unique=True)]
    if groups:
        items.append(st.sampled_from(groups).map(lambda g: {"group": g}))
    return st.one_of(*items)


@st.composite
def rules(draw, v6: bool, groups: list[str], classic: bool):
    direction = draw(st.sampled_from(["inbound", "outbound"]))
    rule: dict = {"direction": direction,
                  "policy": draw(st.sampled_from(["accept", "accept", "drop", "reject"])),
                  "priority": draw(st.sampled_from([1, 1, 2, 5, 100]))}
    kind = draw(st.sampled_from(["tcp", "tcp", "udp", "icmp", "all", "service"]))
    if kind == "service":
        rule["service"] = draw(st.sampled_from(["ssh", "http", "https", "dns", "ping", "mysql"]))
    else:
        rule["protocol"] = kind
        if kind in ("tcp", "udp") and draw(st.booleans()):
            rule["ports"] = draw(st.sampled_from(PORT_SPECS))
    if classic:
        rule["nic"] = draw(st.sampled_from(["intranet", "internet"]))
        if rule["nic"] == "intranet" and direction == "inbound":
            rule_peer = draw(st.one_of(
                st.sampled_from([p + "/32" for p in V4_PEERS]),
                st.sampled_from(groups).map(lambda g: {"group": g}) if groups else st.nothing()))
        elif rule["nic"] == "internet":
            rule_peer = draw(st.sampled_from(V4_NETS))
        else:
            rule_peer = draw(_peer(False, groups))
    else:
        rule_peer = draw(_peer(v6, groups))
    rule["source" if direction == "inbound" else "destination"] = rule_peer
    # SEMANTICS section 9: logging never changes a verdict; an audit rule never decides
    if draw(st.integers(0, 3)) == 0:
        rule["log"] = True
    if draw(st.integers(0, 5)) == 0:
        rule["mode"] = "audit"
    if ("log" in rule or "mode" in rule) and draw(st.booleans()):
        rule["log_rate"] = draw(st.sampled_from([1, "100/second", "5/minute burst 2"]))
    return rule


@st.composite
def documents(draw, max_groups: int = 3, max_rules: int = 8):
    """A valid host document (as a dict) with its groups, rules, and members."""
    classic = draw(st.booleans())
    v6 = not classic
    n_groups = draw(st.integers(1, max_groups))
    names = [f"sg-{i}" for i in range(n_groups)]
    gtype = "basic" if classic else draw(st.sampled_from(["basic", "basic", "enterprise"]))
    member_pool = V4_PEERS + (V6_PEERS if v6 else [])
    groups = {}
    for name in names:
        g: dict = {"type": gtype,
                   "members": draw(st.lists(st.sampled_from(member_pool), max_size=3, unique=True))}
        if gtype == "basic":
            g["inner_access"] = draw(st.sampled_from(["accept", "drop"]))
        refs = [] if gtype == "enterprise" else names
        g["rules"] = draw(st.lists(rules(v6, refs, classic), max_size=max_rules))
        groups[name] = g
    bound = draw(st.lists(st.sampled_from(names), min_size=1, max_size=n_groups, unique=True))
    if classic:
        nics = [{"name": "eth0", "role": "intranet", "security_groups": bound},
                {"name": "eth1", "role": "internet", "security_groups": bound}]
    else:
        nics = [{"name": "eth0", "role": "vpc", "security_groups": bound,
                 "log_default": draw(st.booleans())}]
        if draw(st.booleans()):
            other = draw(st.lists(st.sampled_from(names), min_size=1, max_size=n_groups,
                                  unique=True))
            nics.append({"name": "eth1", "role": "vpc", "security_groups": other})
    host: dict = {"instance": "i-test", "account": "1001",
                  "network": "classic" if classic else "vpc",
                  "ordering": draw(st.sampled_from(["priority", "sequential"])), "nics": nics}
    if draw(st.integers(0, 4)) == 0:
        host["defaults"] = {"outbound": "drop"}
    return {"version": 1, "host": host, "security_groups": groups}


@st.composite
def probes(draw, doc: dict, n: int):
    """``n`` distinct (nic, direction, peer, protocol, port) probes for ``doc``."""
    v6 = doc["host"]["network"] == "vpc"
    nics = [n_["name"] for n_ in doc["host"]["nics"]]
    peers = V4_PEERS + (V6_PEERS if v6 else [])
    # Peers the rules name, so that probes hit rules rather than only defaults.
    for g in doc["security_groups"].values():
        peers += list(g["members"])
    out = draw(st.lists(st.tuples(
        st.sampled_from(nics), st.sampled_from(["inbound", "outbound"]), st.sampled_from(peers),
        st.sampled_from(["tcp", "tcp", "udp", "icmp"]), st.sampled_from(PORTS)),
        min_size=n, max_size=n * 2, unique=True))
    result = []
    for nic, direction, peer, proto, port in out:
        family = ipaddress.ip_address(peer).version
        if proto == "icmp":
            result.append((nic, direction, peer, "icmp" if family == 4 else "icmpv6", None))
        else:
            result.append((nic, direction, peer, proto, port))
    return list(dict.fromkeys(result))[:n]
