#!/usr/bin/env python3
"""A held-out rule mix: host documents shaped unlike bench/docgen.py's, for the first-packet
benchmark (``bench/connrate.py --mix heldout``).

bench/docgen.py's mix is the one the set rendering was tuned on (a few drop priorities above
many allows, mostly /32 and /24 peers).  This one was written afterwards, to stress what that
mix spares, so a rendering that only fits docgen's shape shows it:

* drops everywhere: about 30 % of the rules are ``drop``, at every priority 1..99, interleaved
  with the accepts (the decisive rule for an address changes many times down the list);
* wide and nested peers: /8-style supernets of the test ranges down to /32, every prefix
  length from /9 to /32 about equally often, so peers nest many levels deep;
* ports: about half the TCP/UDP rules are ranges, many overlapping, some 1-65535;
* protocols: tcp 55 %, udp 30 %, icmp 10 %, all 5 %;
* 10 % group peers, over 8 groups of 64 members each; outbound rules too (a quarter of them),
  which the inbound benchmark never reaches but the renderer must carry;
* 2 % IPv6 peers.

The benchmark's client rule is, as in docgen, the very last decision (accept at priority 100
for ``CLIENT/32`` on tcp ``SERVER_PORT``), and no other rule matches the client: generated
addresses avoid 10.255.0.0/16 (the benchmark's wire).  The same NIC, client, server and port as
docgen, so connrate measures both mixes the same way.

    python bench/heldout.py 10000 > doc.json
"""

from __future__ import annotations

import ipaddress
import random
import sys
from typing import Any

import docgen

GROUPS = [f"hg-{i:02d}" for i in range(6)]
PEER_GROUPS = [f"hg-peer-{i}" for i in range(8)]
_WIRE = ipaddress.ip_network("10.255.0.0/16")


class _Gen:
    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed * 7919 + 17)

    def v4_peer(self) -> str:
        r = self.r
        while True:
            plen = r.randint(9, 32)
            if r.random() < 0.1:
                base = int(ipaddress.IPv4Address(r.choice(["192.0.2.0", "198.51.100.0",
                                                           "203.0.113.0"])))
                plen = max(plen, 24)
                addr = base + r.randrange(256)
            else:
                addr = (10 << 24) | r.randrange(1 << 24)
            net = ipaddress.ip_network((addr, plen), strict=False)
            if not net.overlaps(_WIRE):
                return str(net)

    def v6_peer(self) -> str:
        r = self.r
        plen = r.choice([32, 48, 56, 64, 128])
        addr = int(ipaddress.IPv6Address("2001:db8::")) + (r.getrandbits(96))
        return str(ipaddress.ip_network((addr, plen), strict=False))

    def ports(self) -> str | None:
        r = self.r
        x = r.random()
        if x < 0.05:
            return None
        if x < 0.5:
            p = r.randint(1, 65535)
            return f"{p}/{p}"
        if x < 0.55:
            return "1/65535"
        lo = r.randint(1, 64000)
        return f"{lo}/{min(65535, lo + r.choice([1, 9, 99, 999, 4999]))}"

    def member(self) -> str:
        return str(ipaddress.IPv4Address((10 << 24) | self.r.randrange(1 << 24)))


def generate(rules: int, *, seed: int = 1, group_peers: float = 0.10) -> dict[str, Any]:
    """A host document with ``rules`` rules of the held-out mix (see the module doc)."""
    if rules < 1:
        raise ValueError("at least one rule (the benchmark client's)")
    g = _Gen(seed)
    r = g.r
    groups: dict[str, Any] = {}
    for name in GROUPS + PEER_GROUPS:
        members = []
        while len(members) < 64:
            m = g.member()
            if ipaddress.ip_address(m) not in _WIRE:
                members.append(m)
        groups[name] = {"account": docgen.ACCOUNT, "type": "basic", "members": members,
                        "rules": []}
    for i in range(rules - 1):
        direction = "outbound" if r.random() < 0.25 else "inbound"
        drop = r.random() < 0.3
        rule: dict[str, Any] = {"id": f"h{i}", "direction": direction,
                                "policy": "drop" if drop else "accept",
                                "priority": r.randint(1, 99)}
        x = r.random()
        proto = "tcp" if x < 0.55 else "udp" if x < 0.85 else "icmp" if x < 0.95 else "all"
        rule["protocol"] = proto
        if proto in ("tcp", "udp"):
            ports = g.ports()
            if ports is not None:
                rule["ports"] = ports
        side = "source" if direction == "inbound" else "destination"
        if r.random() < group_peers:
            rule[side] = {"group": r.choice(PEER_GROUPS)}
        elif proto in ("tcp", "udp") and r.random() < 0.02:
            rule[side] = g.v6_peer()
        else:
            n = r.choice([1, 1, 1, 2, 4])
            peers = [g.v4_peer() for _ in range(n)]
            rule[side] = peers[0] if n == 1 else peers
        groups[GROUPS[i % len(GROUPS)]]["rules"].append(rule)
    groups[GROUPS[-1]]["rules"].append({
        "id": "bench-client", "direction": "inbound", "policy": "accept", "priority": 100,
        "protocol": "tcp", "ports": f"{docgen.SERVER_PORT}/{docgen.SERVER_PORT}",
        "source": f"{docgen.CLIENT}/32"})
    return {"version": 1,
            "host": {"instance": "i-heldout", "account": docgen.ACCOUNT, "network": "vpc",
                     "ordering": "priority",
                     "nics": [{"name": docgen.NIC, "role": "vpc",
                               "security_groups": list(GROUPS)}]},
            "security_groups": groups}


if __name__ == "__main__":
    sys.exit(docgen.main(sys.argv, generate))
