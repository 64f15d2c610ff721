#!/usr/bin/env python3
"""Realistic host documents of any size, for the benchmarks.

One VPC NIC ``eth0`` bound to 10 basic groups (``sg-00`` .. ``sg-09``, each with a few members,
so inner access is on), plus 4 unbound peer groups (``sg-peer-0`` .. ``sg-peer-3``) that rules
reference as group peers.  ``rules`` inbound rules are spread over the 10 bound groups:

* about 2% ``drop`` rules at priorities 1..3 (a few drop priorities above everything else);
* the rest ``accept`` rules at priorities 5..99;
* peers: mostly IPv4 /32 (55%) and /24 (30%) from 10/8, some /16 (5%, overlapping the others),
  some from the documentation ranges 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24 (5%) and
  IPv6 (5%, 2001:db8::/32 and fd00::/8); /32s are drawn inside the /24s already used, so peers
  overlap; 1 to 3 peers a rule;
* a fraction ``group_peers`` (2% by default) of the rules have a group peer instead;
* protocols: tcp 85% (single ports 60%, ranges 35%, all ports 5%), udp 8%, ping 4%, all 3%;
* three ``0.0.0.0/0`` accepts for tcp 80 and 443 (ports the benchmark never uses).

Nothing but the last rule of ``sg-09`` matches the benchmark client: an ``accept`` at priority
100 (the lowest) for ``CLIENT/32`` on tcp ``SERVER_PORT``.  In priority order it is the very
last decision, so every measured connection goes past all the others.  Generated addresses
avoid 10.255.0.0/16, which the benchmarks use for their own wires.

    python bench/docgen.py 10000 > doc.json
"""

from __future__ import annotations

import ipaddress
import json
import random
import sys
from typing import Any

GROUPS = [f"sg-{i:02d}" for i in range(10)]
PEER_GROUPS = [f"sg-peer-{i}" for i in range(4)]
ACCOUNT = "1001"
NIC = "eth0"
# The wire of the connection benchmark: the host ns (server) and the client ns.
SERVER = "10.255.0.1"
CLIENT = "10.255.0.2"
SERVER_PORT = 9099
_COMMON_PORTS = [21, 22, 23, 25, 53, 110, 123, 143, 389, 465, 587, 993, 995, 1433, 1521, 2049,
                 2379, 3000, 3306, 3389, 5000, 5432, 5672, 6379, 8000, 8080, 8443, 8888, 9000,
                 9090, 9200, 9300, 11211, 15672, 27017]
_DOC_RANGES = ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"]


class _Gen:
    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)
        self.slash24: list[int] = []  # network addresses of /24s used so far

    def ip10(self) -> int:
        # 10.0.0.0 .. 10.254.255.255: never 10.255/16 (the benchmark's own wires)
        return (10 << 24) | self.r.randrange(0, 255 << 16)

    def v4_peer(self) -> str:
        r = self.r
        x = r.random()
        if x < 0.55:  # /32, half of them inside a /24 already used (overlap)
            if self.slash24 and r.random() < 0.5:
                return str(ipaddress.IPv4Address(r.choice(self.slash24) | r.randrange(1, 255)))
            return str(ipaddress.IPv4Address(self.ip10()))
        if x < 0.85:
            net = self.ip10() & ~0xFF
            self.slash24.append(net)
            return f"{ipaddress.IPv4Address(net)}/24"
        if x < 0.90:
            return f"{ipaddress.IPv4Address(self.ip10() & ~0xFFFF)}/16"
        base = ipaddress.IPv4Network(r.choice(_DOC_RANGES))
        if r.random() < 0.7:
            return str(base.network_address + r.randrange(1, 255))
        plen = r.choice([25, 26, 27, 28])
        size = 2 ** (32 - plen)
        return f"{base.network_address + size * r.randrange(0, 256 // size)}/{plen}"

    def v6_peer(self) -> str:
        r = self.r
        if r.random() < 0.5:
            net = ipaddress.IPv6Address("2001:db8::") + (r.getrandbits(32) << 64)
            return f"{net}/64" if r.random() < 0.5 else str(net + r.randrange(1, 2**16))
        net = ipaddress.IPv6Address("fd00::") + (r.getrandbits(48) << 64)
        return f"{net}/64" if r.random() < 0.5 else str(net + r.randrange(1, 2**16))

    def ports(self) -> str | None:
        r = self.r
        x = r.random()
        if x < 0.60:
            p = r.choice(_COMMON_PORTS) if r.random() < 0.5 else r.randrange(1024, 60000)
            return f"{p}/{p}"
        if x < 0.95:
            lo = r.randrange(1024, 60000)
            return f"{lo}/{lo + r.choice([1, 9, 99, 999])}"
        return None  # all ports

    def member(self) -> str:
        return str(ipaddress.IPv4Address(self.ip10()))


def generate(rules: int, *, seed: int = 1, group_peers: float = 0.02,
             group_refs: dict[str, int] | None = None, members: int = 16) -> dict[str, Any]:
    """A host document with ``rules`` inbound rules (see the module doc).

    ``group_refs`` ({group: n}) makes exactly ``n`` rules have that group as their peer (tcp,
    accept, spread over the priorities); the random group peers are then not used."""
    if rules < 1:
        raise ValueError("at least one rule (the benchmark client's)")
    g = _Gen(seed)
    r = g.r
    groups: dict[str, Any] = {}
    for name in GROUPS + PEER_GROUPS:
        groups[name] = {"account": ACCOUNT, "type": "basic",
                        "members": [g.member() for _ in range(members)], "rules": []}
    body = rules - 1  # the last one is the client's
    forced: list[str] = []
    for name, n in (group_refs or {}).items():
        forced += [name] * n
    if len(forced) > body:
        raise ValueError(f"{len(forced)} group references do not fit in {body} rules")
    forced_at = dict(zip(r.sample(range(body), len(forced)), forced))
    anywhere = set(r.sample(range(body), min(3, body))) - set(forced_at)
    use_random_groups = group_refs is None
    for i in range(body):
        rule: dict[str, Any] = {"id": f"r{i}", "direction": "inbound"}
        if i in forced_at:
            rule.update(policy="accept", priority=r.randrange(5, 100), protocol="tcp",
                        ports=g.ports() or "-1/-1", source={"group": forced_at[i]})
        elif i in anywhere:
            rule.update(policy="accept", priority=50, protocol="tcp",
                        ports=r.choice(["80/80", "443/443"]), source="0.0.0.0/0")
        else:
            drop = r.random() < 0.02
            rule.update(policy="drop" if drop else "accept",
                        priority=r.randrange(1, 4) if drop else r.randrange(5, 100))
            x = r.random()
            if x < 0.85:
                rule["protocol"] = "tcp"
                ports = g.ports()
                if ports is not None:
                    rule["ports"] = ports
            elif x < 0.93:
                rule["protocol"] = "udp"
                ports = g.ports()
                if ports is not None:
                    rule["ports"] = ports
            elif x < 0.97:
                rule["service"] = "ping"
            else:
                rule["protocol"] = "all"
            if use_random_groups and r.random() < group_peers:
                rule["source"] = {"group": r.choice(PEER_GROUPS)}
            elif rule.get("protocol") in ("tcp", "udp") and r.random() < 0.05:
                rule["source"] = g.v6_peer()
            elif rule.get("protocol") == "all":
                rule["source"] = str(ipaddress.IPv4Address(g.ip10()))
            else:
                n = r.choice([1, 1, 1, 1, 2, 3])
                peers = [g.v4_peer() for _ in range(n)]
                rule["source"] = peers[0] if n == 1 else peers
        groups[GROUPS[i % len(GROUPS)]]["rules"].append(rule)
    groups[GROUPS[-1]]["rules"].append({
        "id": "bench-client", "direction": "inbound", "policy": "accept", "priority": 100,
        "protocol": "tcp", "ports": f"{SERVER_PORT}/{SERVER_PORT}", "source": f"{CLIENT}/32"})
    return {"version": 1,
            "host": {"instance": "i-bench", "account": ACCOUNT, "network": "vpc",
                     "ordering": "priority",
                     "nics": [{"name": NIC, "role": "vpc", "security_groups": list(GROUPS)}]},
            "security_groups": groups}


def add_member(doc: dict[str, Any], group: str, k: int) -> dict[str, Any]:
    """A copy of ``doc`` whose ``group`` has ``k`` more members (10.255.1.x, never matched)."""
    out = dict(doc)
    sgs = dict(doc["security_groups"])
    g = dict(sgs[group])
    g["members"] = list(g["members"]) + [str(ipaddress.IPv4Address("10.255.1.0") + 1 + j)
                                         for j in range(k)]
    sgs[group] = g
    out["security_groups"] = sgs
    return out


def count_rules(doc: dict[str, Any]) -> int:
    return sum(len(g["rules"]) for g in doc["security_groups"].values())


def main(argv: list[str], gen=None) -> int:
    """Print ``gen(rules)`` (this module's :func:`generate` by default) as JSON; ``argv[1]``:
    the number of rules (1,000)."""
    rules = int(argv[1]) if len(argv) > 1 else 1000
    json.dump((gen or generate)(rules), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
