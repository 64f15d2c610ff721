"""Set-compiled rendering: runs of decisions become map lookups.

A chain's decisions are split into literal parts (address peers) and group parts (a group's
members as peer).  Literal parts are gathered into runs and each run is resolved first-match
into disjoint elements (:mod:`sgagent.partition`) of up to three concatenated interval maps
per family, by what the packet carries:

- ``t``: address . l4proto . destination port, for tcp and udp;
- ``i``: address . ICMP type, for icmp (v4) or icmpv6 (v6);
- ``o``: address . l4proto, for every other protocol.

Every element of a verdict map jumps (``goto``) to the small chain of the decision that owns
it, which counts on that decision's named counter and gives its verdict: ``return`` for accept,
which ends the NIC's chain and hands back to the base chain so forwarded packets are still
judged on their way out; ``drop``; or reject.  One lookup both decides and counts.

Group parts stay on the group's named member set, so a membership change is an element update
of that set.  Consecutive group parts of one group share one lookup (``ip saddr @g4_G`` then a
map keyed on protocol and port).  A literal part may move ahead of pending group parts when no
packet can match both: their protocols and ports do not meet, or none of the group's current
members is in the literal part's addresses.  In the latter case the move holds only while
that is true, so it is recorded as a guard (group -> address ranges): a membership change
that puts a member inside a guard makes the backend render the chains again instead of only
updating the member set.  The per-packet cost is a few lookups per run, whatever the number of
rules.
"""

from __future__ import annotations

import bisect
import hashlib
import socket

from ..ir import Chain, Decision, GroupSet, Match
from ..partition import Box, Entry, resolve
from .names import chain_name, counter_name, set_name
from .objects import Objects, SetDef
from .render import VERB, verdict

_TCP, _UDP = 6, 17
_ICMP = {4: 1, 6: 58}
_ADDR_MAX = {4: 2**32 - 1, 6: 2**128 - 1}
_ADDR_TYPE = {4: "ipv4_addr", 6: "ipv6_addr"}
_IP = {4: "ip", 6: "ip6"}
_KINDS = ("t", "i", "o")


Part = tuple  # (group or None, decision, matches, rects by (family, kind))


def chain_body(chain: Chain, objs: Objects, groups: dict[str, GroupSet]) -> list[str]:
    base = chain_name(chain.nic, chain.direction)
    members = {name: _member_ints(g) for name, g in groups.items()}
    rules: list[str] = []
    run: list[Part] = []       # literal parts, rendered first
    pending: list[Part] = []   # group parts they moved ahead of, rendered after them
    pending_planes: dict[str, dict[tuple, Intervals]] = {}  # what each group's pending parts cover

    def flush() -> None:
        nonlocal run, pending
        rules.extend(_map_rules(run, chain.direction, f"{base}_{len(rules)}", objs, None))
        i = 0
        while i < len(pending):
            j = i
            while j < len(pending) and pending[j][0] == pending[i][0]:
                j += 1
            rules.extend(_map_rules(pending[i:j], chain.direction, f"{base}_{len(rules)}",
                                    objs, pending[i][0]))
            i = j
        run, pending = [], []
        pending_planes.clear()

    for decision in chain.decisions:
        literal = tuple(m for m in decision.matches if m.group is None)
        by_group: dict[str, list[Match]] = {}
        for m in decision.matches:
            if m.group is not None:
                by_group.setdefault(m.group, []).append(m)
        if literal:
            part = (None, decision, literal, _part_rects(literal))
            guards = []
            if pending_planes:
                lines = _lines(part[3])
                ranges = _ranges(literal)
                for g, plane in pending_planes.items():
                    if not any(plane.get(k) and plane[k].meets(lo, hi) for k, lo, hi in lines):
                        continue
                    if _members_in(ranges, members.get(g, {})):
                        flush()
                        guards = []
                        break
                    guards.append(g)
                for g in guards:
                    objs.guards.setdefault(g, set()).update(ranges)
            run.append(part)
        for g, ms in by_group.items():
            part = (g, decision, tuple(ms), _part_rects(ms))
            pending.append(part)
            plane = pending_planes.setdefault(g, {})
            for k, lo, hi in _lines(part[3]):
                plane.setdefault(k, Intervals()).add(lo, hi)
    flush()
    return rules


class Intervals:
    """A union of integer intervals, kept merged and sorted."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def add(self, lo: int, hi: int) -> None:
        i = bisect.bisect_left(self.ends, lo - 1)
        j = bisect.bisect_right(self.starts, hi + 1)
        if i < j:
            lo, hi = min(lo, self.starts[i]), max(hi, self.ends[j - 1])
        self.starts[i:j] = [lo]
        self.ends[i:j] = [hi]

    def meets(self, lo: int, hi: int) -> bool:
        i = bisect.bisect_left(self.ends, lo)
        return i < len(self.starts) and self.starts[i] <= hi


def _lines(rects: dict) -> list[tuple[tuple, int, int]]:
    """A part's (protocol x value) rectangles as intervals on lines keyed by family, map kind
    and protocol (the o kind has no value: its line is the protocol axis)."""
    out = []
    for (family, kind), rs in rects.items():
        for p1, p2, v1, v2 in rs:
            if kind == "o":
                out.append(((family, kind, 0), p1, p2))
            else:
                out.extend(((family, kind, p), v1, v2) for p in range(p1, p2 + 1))
    return out


def _member_ints(g: GroupSet) -> dict[int, list[int]]:
    return {4: sorted(int(a) for a in g.v4), 6: sorted(int(a) for a in g.v6)}


def _members_in(ranges, members: dict[int, list[int]]) -> bool:
    for fam, lo, hi in ranges:
        ints = members.get(fam, [])
        k = bisect.bisect_left(ints, lo)
        if k < len(ints) and ints[k] <= hi:
            return True
    return False


def _ranges(matches) -> set[tuple[int, int, int]]:
    return {(m.family, int(n.network_address), int(n.broadcast_address))
            for m in matches for n in m.nets}


def _part_rects(matches) -> dict[tuple[int, str], tuple]:
    out: dict[tuple[int, str], tuple] = {}
    for m in matches:
        for kind in _KINDS:
            r = _rects(m, kind, m.family)
            if r:
                out[(m.family, kind)] = out.get((m.family, kind), ()) + r
    return out


def decider(decision: Decision, objs: Objects) -> str:
    """The small chain an element of a verdict map jumps to: it counts on the decision's named
    counter and gives its verdict (accept returns from the NIC's chain to the base chain)."""
    name = "d" + counter_name(decision.counter)[1:]
    if name not in objs.chains:
        objs.chains[name] = (None, tuple(verdict(decision.counter, decision.action, None)))
    return name


def _map_rules(parts: list[Part], direction: str, stem: str, objs: Objects,
               group: str | None) -> list[str]:
    """One verdict-map lookup per map kind; each element jumps (goto) to its decision's
    counting chain.  With ``group``, the parts are that group's and the maps are keyed without
    the address, behind a lookup in the group's member set."""
    if not parts:
        return []
    rules = []
    addr = VERB[direction][1]
    for family in (4, 6):
        for kind in _KINDS:
            entries, owners = [], []
            for _, decision, matches, rects in parts:
                r = rects.get((family, kind))
                if not r:
                    continue
                addrs = ((0, 0),) if group else tuple(
                    a for m in matches if m.family == family for a in _addrs(m))
                entries.append(Entry(addrs, r))
                owners.append(decision)
            if not entries:
                continue
            boxes = resolve(entries)
            if not boxes:
                continue
            values = tuple(sorted((_key(b, kind, family, group is None),
                                   f"goto {decider(owners[b.entry], objs)}") for b in boxes))
            vmap = SetDef(_map_type(kind, family, group is None), frozenset(k for k, _ in values),
                          values, interval=True)
            tag = f"g{family}{kind}" if group else f"{family}{kind}"
            name = f"m{tag}_{stem}_{_digest(vmap)}"
            objs.sets[name] = vmap
            selector = _selector(kind, family, addr if group is None else None)
            prefix = f"{_IP[family]} {addr} @{set_name(group, family)} " if group else ""
            # A cheap protocol test first, so a packet only pays for the lookups of its own
            # kind (the i kind's "icmp type" already implies its protocol).
            prefix += {"t": "meta l4proto { tcp, udp } ",
                       "o": f"meta l4proto != {{ tcp, udp, {'icmp' if family == 4 else 'ipv6-icmp'} }} ",
                       "i": ""}[kind]
            rules.append(f"{prefix}{selector} vmap @{name}")
    return rules


def _digest(s: SetDef) -> str:
    """Maps are named after their content: a changed map is a new map, loaded whole, and the
    rule that uses it is rewritten.  (Adding and removing elements one by one in a large
    interval map costs the kernel milliseconds per element; loading a map whole does not.)"""
    h = hashlib.sha1(s.type.encode())
    for k, v in s.values or ():
        h.update(f"{k}\0{v}\n".encode())
    return h.hexdigest()[:10]


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


def _map_type(kind: str, family: int, with_addr: bool) -> str:
    fields = {"t": ["inet_proto", "inet_service"],
              "i": ["icmp_type" if family == 4 else "icmpv6_type"],
              "o": ["inet_proto"]}[kind]
    return " . ".join(([_ADDR_TYPE[family]] if with_addr else []) + fields)


def _selector(kind: str, family: int, addr: str | None) -> str:
    fields = {"t": ["meta l4proto", "th dport"],
              "i": [f"{'icmp' if family == 4 else 'icmpv6'} type"],
              "o": ["meta l4proto"]}[kind]
    return " . ".join(([f"{_IP[family]} {addr}"] if addr else []) + fields)


def _key(b: Box, kind: str, family: int, with_addr: bool) -> str:
    fields = {"t": [_rng(b.plo, b.phi), _rng(b.vlo, b.vhi)],
              "i": [_rng(b.vlo, b.vhi)],
              "o": [_rng(b.plo, b.phi)]}[kind]
    return " . ".join(([addr_range(b.alo, b.ahi, family)] if with_addr else []) + fields)


def _rng(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}-{hi}"


def addr_range(lo: int, hi: int, family: int) -> str:
    ip = _ntoa(lo, family)
    if lo == hi:
        return ip
    size = hi - lo + 1
    if size & (size - 1) == 0 and lo % size == 0:
        bits = 32 if family == 4 else 128
        return f"{ip}/{bits - size.bit_length() + 1}"
    return f"{ip}-{_ntoa(hi, family)}"


def _ntoa(n: int, family: int) -> str:
    if family == 4:
        return socket.inet_ntoa(n.to_bytes(4, "big"))
    return socket.inet_ntop(socket.AF_INET6, n.to_bytes(16, "big"))
