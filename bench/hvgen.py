#!/usr/bin/env python3
"""Host documents for a hypervisor: one VPC NIC per VM, each bound to groups of its own.

A hypervisor that forwards for ``vms`` VMs has one managed interface per VM (``vm000``,
``vm001``, ...: the hypervisor's end of the VM's tap or veth, its ENI), and each is bound to
two groups of its own, ``sg-vmNNN-a`` and ``sg-vmNNN-b``, holding ``rules`` rules together
(70 % / 30 %), so the document holds ``vms * rules`` rules (100 x 1,000 = 100,000: Alibaba's
limit of 1,000 rules per NIC).

The rules are bench/docgen.py's realistic mix (its ``generate`` is called once per NIC with a
seed of its own), then turned into a hypervisor's:

* 40 % of the rules become ``outbound`` (their peer moves from ``source`` to ``destination``);
* 15 % get the NIC's own VM as their peer: its IPv4 or IPv6 address, its /24 or /16, or one of
  its own groups.  On the hypervisor these are the rules that decide its VMs' traffic (see
  below);
* 10 % get other VMs' addresses (one to three of them), 3 % a group of another VM as a group
  peer;
* ``refusals`` (none by default) of the rules become ``drop`` or ``reject`` at priority 1..3;
* the groups are basic; both hold the VM's own addresses as members (inner access), except that
  every fourth VM (``i % 4 == 3``) has ``inner_access: drop``.

**Directions on a hypervisor** (SEMANTICS 3 and 6, the table's forward hook): a packet that VM
``a`` sends arrives on the hypervisor's interface for ``a``, so it is *inbound* on NIC ``a``,
and its peer there is its *source* (VM ``a``'s own address); it leaves by VM ``b``'s interface,
*outbound* on NIC ``b``, peer = its *destination* (VM ``b``'s own address).  Ports are the
destination port on both.  So NIC ``a``'s inbound rules say what VM ``a`` may send, NIC ``b``'s
outbound rules what VM ``b`` may receive, and neither chain sees the other VM's address as its
peer: rules naming other VMs' addresses are in the mix for the lookup structures' size, and
decide nothing of the VMs' own traffic unless a VM sends from an address that is not its own.

``bench_pair=True`` adds the benchmark's flow (counted in the ``rules`` of NICs 0 and 1): an
accept at priority 100 (the last in priority order) on ``vm000`` inbound for source
``BENCH_CLIENT`` and on ``vm001`` outbound for destination ``BENCH_SERVER``, tcp
``SERVER_PORT``; nothing else matches those addresses (generated peers avoid 10.255.0.0/16).

    python bench/hvgen.py 100 1000 > hypervisor.json
"""

from __future__ import annotations

import ipaddress
import json
import random
import sys
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import docgen  # noqa: E402
import heldout  # noqa: E402

ACCOUNT = docgen.ACCOUNT
SERVER_PORT = docgen.SERVER_PORT
# The benchmark's wires: VM 0's client and VM 1's server, each on a /30 with the hypervisor.
BENCH_CLIENT = "10.255.0.2"
BENCH_SERVER = "10.255.0.6"
SPLIT = 0.7  # share of a NIC's rules in its first group


MIXES = {"docgen": docgen.generate, "heldout": heldout.generate}


def nic_name(i: int) -> str:
    return f"vm{i:03d}"


def groups_of(i: int) -> tuple[str, str]:
    return f"sg-vm{i:03d}-a", f"sg-vm{i:03d}-b"


def vm_addresses(vms: int) -> list[tuple[str, str]]:
    """VM ``i``'s addresses: 10.(i+1).0.1 and fd00:(i+1)::1 (the sandbox's plan puts the peer
    of its NIC number ``i`` there)."""
    if not 1 <= vms <= 254:
        raise ValueError("1 to 254 VMs")
    return [(f"10.{i + 1}.0.1", f"fd00:{i + 1:x}::1") for i in range(vms)]


def generate(vms: int, rules: int, *, seed: int = 1, refusals: float = 0.0,
             addresses: Sequence[tuple[str, str]] | None = None,
             bench_pair: bool = False, mix: str = "docgen") -> dict[str, Any]:
    """A hypervisor's document: ``vms`` NICs of ``rules`` rules each (see the module doc).
    ``addresses[i]`` is VM ``i``'s (IPv4, IPv6) pair (default :func:`vm_addresses`).
    ``mix="heldout"`` draws each NIC's rules from bench/heldout.py's mix instead of docgen's
    (the transformation into a hypervisor's rules is the same)."""
    if mix not in MIXES:
        raise ValueError(f"mix: one of {', '.join(MIXES)}")
    if rules < 2:
        raise ValueError("at least two rules a NIC (one per group)")
    if bench_pair and vms < 2:
        raise ValueError("the benchmark pair needs two VMs")
    addrs = list(addresses) if addresses is not None else vm_addresses(vms)
    if len(addrs) != vms:
        raise ValueError(f"{len(addrs)} addresses for {vms} VMs")
    r = random.Random(seed)
    groups: dict[str, Any] = {}
    nics = []
    for i in range(vms):
        v4, v6 = addrs[i]
        a, b = groups_of(i)
        inner = "drop" if i % 4 == 3 else "accept"
        for name in (a, b):
            members = [v4, v6] if name == a else [v4]
            members += [str(ipaddress.IPv4Address(0x0A000000 | r.randrange(0, 255 << 16)))
                        for _ in range(3)]
            groups[name] = {"account": ACCOUNT, "type": "basic", "inner_access": inner,
                            "members": members, "rules": []}
        nics.append({"name": nic_name(i), "role": "vpc", "security_groups": [a, b]})
    for i in range(vms):
        own = _nic_rules(r, i, vms, rules, addrs, seed, refusals, bench_pair, MIXES[mix])
        a, b = groups_of(i)
        cut = max(1, min(len(own) - 1, round(len(own) * SPLIT)))
        groups[a]["rules"] = own[:cut]
        groups[b]["rules"] = own[cut:]
    return {"version": 1,
            "host": {"instance": "i-hypervisor", "account": ACCOUNT, "network": "vpc",
                     "ordering": "priority", "nics": nics},
            "security_groups": groups}


def _nic_rules(r: random.Random, i: int, vms: int, rules: int, addrs, seed: int,
               refusals: float, bench_pair: bool, gen=docgen.generate) -> list[dict[str, Any]]:
    bench = _bench_rules(i) if bench_pair else []
    body = rules - len(bench)
    # gen(n) holds n - 1 rules of its mix and its own client rule, left out here.
    made = gen(body + 1, seed=seed * 100_003 + i, group_peers=0.0)
    mix = sorted((rule for g in made["security_groups"].values() for rule in g["rules"]
                  if rule["id"] != "bench-client"), key=lambda rule: int(rule["id"][1:]))
    v4, v6 = addrs[i]
    others = [j for j in range(vms) if j != i]
    out = []
    for rule in mix:
        rule = dict(rule)
        peer = rule.pop("source", None) or rule.pop("destination")
        x = r.random()
        if x < 0.15:
            peer = _own_peer(r, rule, i, v4, v6)
        elif x < 0.25 and others:
            picked = r.sample(others, min(len(others), r.choice([1, 1, 2, 3])))
            peer = [addrs[j][0] for j in picked]
            peer = peer[0] if len(peer) == 1 else peer
        elif x < 0.28 and others:
            peer = {"group": r.choice(groups_of(r.choice(others)))}
        if r.random() < refusals:
            rule["policy"] = r.choice(["drop", "reject"])
            rule["priority"] = r.randrange(1, 4)
        if r.random() < 0.4:
            rule["direction"] = "outbound"
            rule["destination"] = peer
        else:
            rule["direction"] = "inbound"
            rule["source"] = peer
        out.append(rule)
    return out + bench


def _own_peer(r: random.Random, rule: dict[str, Any], i: int, v4: str, v6: str) -> Any:
    x = r.random()
    if x < 0.4:
        return v4
    if x < 0.55:
        return v6
    if x < 0.75:
        return str(ipaddress.IPv4Network(f"{v4}/24", strict=False))
    if x < 0.85:
        return str(ipaddress.IPv4Network(f"{v4}/16", strict=False))
    return {"group": r.choice(groups_of(i))}


def _bench_rules(i: int) -> list[dict[str, Any]]:
    port = f"{SERVER_PORT}/{SERVER_PORT}"
    if i == 0:
        return [{"id": "bench-client", "direction": "inbound", "policy": "accept",
                 "priority": 100, "protocol": "tcp", "ports": port,
                 "source": f"{BENCH_CLIENT}/32"}]
    if i == 1:
        return [{"id": "bench-server", "direction": "outbound", "policy": "accept",
                 "priority": 100, "protocol": "tcp", "ports": port,
                 "destination": f"{BENCH_SERVER}/32"}]
    return []


def count_rules(doc: dict[str, Any]) -> int:
    return docgen.count_rules(doc)


def main(argv: list[str]) -> int:
    vms = int(argv[1]) if len(argv) > 1 else 100
    rules = int(argv[2]) if len(argv) > 2 else 1000
    json.dump(generate(vms, rules, bench_pair=vms >= 2), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
