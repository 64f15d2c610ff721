"""Set-compiled rendering: runs of decisions become verdict-map lookups.

A chain's decisions are cut into runs of literal (address) matches; group-peer matches stay
as rules on their named member sets, so a membership change is a set element update.  Each
run is resolved first-match into disjoint elements (:mod:`sgagent.partition`) of up to three
concatenated interval maps per family, by what the packet carries:

- ``t``: address . l4proto . destination port, for tcp and udp;
- ``i``: address . ICMP type, for icmp (v4) or icmpv6 (v6);
- ``o``: address . l4proto, for every other protocol.

Every element jumps (``goto``) to the small chain of the decision that owns it, which counts on
that decision's named counter and gives its verdict; ``return`` there ends the NIC's chain and
hands back to the base chain, so forwarded packets are still judged on their way out.  The
per-packet cost is a few map lookups, whatever the number of rules.
"""

from __future__ import annotations

import ipaddress

from ..ir import Chain, Decision, Match
from ..partition import Box, Entry, resolve
from .names import chain_name, counter_name
from .objects import Objects, SetDef
from .render import VERB, decision_rules, verdict

_TCP, _UDP = 6, 17
_ICMP = {4: 1, 6: 58}
_ADDR_MAX = {4: 2**32 - 1, 6: 2**128 - 1}
_ADDR_TYPE = {4: "ipv4_addr", 6: "ipv6_addr"}
_IP = {4: "ip", 6: "ip6"}
_KINDS = ("t", "i", "o")


def chain_body(chain: Chain, objs: Objects) -> list[str]:
    rules: list[str] = []
    run: list[tuple[Decision, list[Match]]] = []
    base = chain_name(chain.nic, chain.direction)
    for decision in chain.decisions:
        literal = [m for m in decision.matches if m.group is None]
        grouped = tuple(m for m in decision.matches if m.group is not None)
        if literal:
            run.append((decision, literal))
        if grouped:
            rules += _run_rules(run, chain.direction, f"{base}_{len(rules)}", objs)
            run = []
            rules += decision_rules(Decision(decision.counter, decision.action, grouped),
                                    chain.direction)
    rules += _run_rules(run, chain.direction, f"{base}_{len(rules)}", objs)
    return rules


def decider(decision: Decision, objs: Objects) -> str:
    name = "d" + counter_name(decision.counter)[1:]
    if name not in objs.chains:
        objs.chains[name] = (None, tuple(verdict(decision.counter, decision.action, None)))
    return name


def _run_rules(run, direction: str, stem: str, objs: Objects) -> list[str]:
    if not run:
        return []
    rules = []
    addr = VERB[direction][1]
    for family in (4, 6):
        for kind in _KINDS:
            entries, owners = [], []
            for decision, matches in run:
                for m in matches:
                    if m.family != family:
                        continue
                    rects = _rects(m, kind, family)
                    if rects:
                        entries.append(Entry(_addrs(m), rects))
                        owners.append(decision)
            if not entries:
                continue
            boxes = resolve(entries)
            if not boxes:
                continue
            name = f"m{family}{kind}_{stem}"
            values = tuple(sorted((_key(b, kind, family), f"goto {decider(owners[b.entry], objs)}")
                                  for b in boxes))
            objs.sets[name] = SetDef(_map_type(kind, family), frozenset(k for k, _ in values),
                                     values, interval=True)
            rules.append(f"{_selector(kind, family, addr)} vmap @{name}")
    return rules


def _addrs(m: Match) -> tuple[tuple[int, int], ...]:
    return tuple((int(n.network_address), int(n.broadcast_address)) for n in m.nets)


def _rects(m: Match, kind: str, family: int) -> tuple[tuple[int, int, int, int], ...]:
    if kind == "t":
        protos = {"tcp": (_TCP,), "udp": (_UDP,), None: (_TCP, _UDP)}.get(m.proto, ())
        ports = m.ports if m.proto is not None and m.ports is not None else ((0, 65535),)
        return tuple((p, p, lo, hi) for p in protos for lo, hi in ports)
    if kind == "i":
        if m.proto is None or m.proto == ("icmp" if family == 4 else "icmpv6"):
            t = (m.icmp_type, m.icmp_type) if m.icmp_type is not None else (0, 255)
            return ((0, 0) + t,)
        return ()
    if m.proto is None:
        return tuple((lo, hi, 0, 0) for lo, hi in _other_protocols(family))
    if m.proto == "gre":
        return ((47, 47, 0, 0),)
    return ()


def _other_protocols(family: int) -> list[tuple[int, int]]:
    """0..255 without tcp, udp and the family's ICMP, which the t and i maps own."""
    cuts = sorted({_TCP, _UDP, _ICMP[family]})
    out, lo = [], 0
    for c in cuts:
        if lo <= c - 1:
            out.append((lo, c - 1))
        lo = c + 1
    out.append((lo, 255))
    return out


def _map_type(kind: str, family: int) -> str:
    a = _ADDR_TYPE[family]
    if kind == "t":
        return f"{a} . inet_proto . inet_service"
    if kind == "i":
        return f"{a} . {'icmp_type' if family == 4 else 'icmpv6_type'}"
    return f"{a} . inet_proto"


def _selector(kind: str, family: int, addr: str) -> str:
    a = f"{_IP[family]} {addr}"
    if kind == "t":
        return f"{a} . meta l4proto . th dport"
    if kind == "i":
        return f"{a} . {'icmp' if family == 4 else 'icmpv6'} type"
    return f"{a} . meta l4proto"


def _key(b: Box, kind: str, family: int) -> str:
    a = addr_range(b.alo, b.ahi, family)
    if kind == "t":
        return f"{a} . {_rng(b.plo, b.phi)} . {_rng(b.vlo, b.vhi)}"
    if kind == "i":
        return f"{a} . {_rng(b.vlo, b.vhi)}"
    return f"{a} . {_rng(b.plo, b.phi)}"


def _rng(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}-{hi}"


def addr_range(lo: int, hi: int, family: int) -> str:
    ip = ipaddress.IPv4Address(lo) if family == 4 else ipaddress.IPv6Address(lo)
    if lo == hi:
        return str(ip)
    size = hi - lo + 1
    if size & (size - 1) == 0 and lo % size == 0:
        bits = 32 if family == 4 else 128
        return f"{ip}/{bits - size.bit_length() + 1}"
    end = ipaddress.IPv4Address(hi) if family == 4 else ipaddress.IPv6Address(hi)
    return f"{ip}-{end}"
