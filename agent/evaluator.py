"""The oracle: SEMANTICS section 3 read literally, one packet at a time.

Deliberately independent of the compiler: it does not share the compiler's ordering or matching
code, so that a bug in one shows up as a disagreement with the other.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

from .allowances import DHCP_PORTS, LINK_ICMPV6
from .model import Document, FailsafeEntry, GroupPeer, Rule

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ECHO_REQUEST = {4: 8, 6: 128}


@dataclass(frozen=True)
class Packet:
    """The first packet of a flow as seen on a managed NIC.

    ``port`` is the destination port of the packet (the host's port when inbound, the peer's
    when outbound); ``sport`` its source port, which only the DHCP allowance looks at.
    """
    nic: str
    direction: Literal["inbound", "outbound"]
    peer: IPAddress
    protocol: str  # tcp | udp | icmp | icmpv6 | gre | any other IP protocol name
    port: int | None = None
    icmp_type: int | None = None
    sport: int | None = None

    @property
    def family(self) -> int:
        return self.peer.version


@dataclass(frozen=True)
class AuditMatch:
    """An audit rule (``mode: audit``) the packet reached and matched: counted on it and
    reported as ``would <policy>`` (SEMANTICS section 9)."""
    group: str
    rule: str
    policy: Literal["accept", "drop", "reject"]


@dataclass(frozen=True)
class Verdict:
    verdict: Literal["accept", "drop", "reject"]
    group: str | None
    rule: str  # rule id, "failsafe/<i>", "default", or "allowance"
    reason: Literal["rule", "failsafe", "inner-access", "default", "allowance"]
    log: bool = False                    # the decision is reported as a flow record
    audits: tuple[AuditMatch, ...] = ()  # in the order the rules are reached


def evaluate(doc: Document, pkt: Packet) -> Verdict:
    nic = doc.nic(pkt.nic)  # KeyError: not a managed NIC
    if _allowance(pkt):
        return Verdict("accept", None, "allowance", "allowance")
    for i, entry in enumerate(doc.host.failsafe):
        if entry.direction == pkt.direction and _matches(doc, entry, pkt):
            return Verdict("accept", None, f"failsafe/{i}", "failsafe")

    candidates, audits = [], []
    for gi, gname in enumerate(nic.security_groups):
        for ri, rule in enumerate(doc.security_groups[gname].rules):
            if rule.direction != pkt.direction:
                continue
            if doc.host.network == "classic":
                if rule.nic != nic.role:
                    continue
            elif rule.nic not in (None, "intranet"):
                continue
            if _matches(doc, rule, pkt):
                (audits if rule.mode == "audit" else candidates).append((gi, ri, gname, rule))
    if doc.host.ordering == "sequential":
        def order(c):
            return c[0], c[1]
    else:
        def order(c):
            return c[3].priority, 0 if c[3].policy in ("drop", "reject") else 1, c[0], c[1]
    # An audit rule counts the packets that reach it: those no enforced rule before it decides.
    decider = min(candidates, key=order) if candidates else None
    reached = tuple(AuditMatch(a[2], doc.rule_id(a[2], a[1]), a[3].policy)
                    for a in sorted(audits, key=order)
                    if decider is None or order(a) < order(decider))
    if decider is not None:
        gi, ri, gname, rule = decider
        return Verdict(rule.policy, gname, doc.rule_id(gname, ri), "rule", rule.log, reached)

    groups = [doc.security_groups[g] for g in nic.security_groups]
    enterprise = any(g.type == "enterprise" for g in groups)
    if pkt.direction == "inbound" and nic.role in ("vpc", "intranet"):
        for g in groups:
            if g.inner_accepts and pkt.peer in g.members:
                return Verdict("accept", None, "default", "inner-access", nic.log_default,
                               reached)
    final = getattr(doc.host.defaults, pkt.direction)
    if final is None:
        final = "drop" if enterprise or pkt.direction == "inbound" else "accept"
    return Verdict(final, None, "default", "default", nic.log_default, reached)


def _allowance(pkt: Packet) -> bool:
    if pkt.protocol == "icmpv6" and pkt.family == 6 and pkt.icmp_type in LINK_ICMPV6:
        return True
    if pkt.protocol == "udp":
        local, remote = DHCP_PORTS[pkt.family]
        if pkt.direction == "inbound":
            return pkt.port == local and pkt.sport == remote
        return pkt.port == remote and pkt.sport == local
    return False


def _matches(doc: Document, rule: Rule | FailsafeEntry, pkt: Packet) -> bool:
    return _proto_matches(rule, pkt) and _peer_matches(doc, rule, pkt)


def _proto_matches(rule: Rule | FailsafeEntry, pkt: Packet) -> bool:
    proto = rule.effective_protocol
    if proto == "all":
        return True
    if proto == "ping":
        return (pkt.protocol == {4: "icmp", 6: "icmpv6"}[pkt.family]
                and pkt.icmp_type == ECHO_REQUEST[pkt.family])
    if proto != pkt.protocol:
        return False
    if proto in ("tcp", "udp"):
        ports = rule.effective_ports
        return ports is None or any(lo <= (pkt.port or 0) <= hi for lo, hi in ports)
    return True


def _peer_matches(doc: Document, rule: Rule | FailsafeEntry, pkt: Packet) -> bool:
    for item in rule.peer or ():
        if isinstance(item, GroupPeer):
            if pkt.peer in doc.security_groups[item.group].members:
                return True
        elif item.version == pkt.family and pkt.peer in item:
            return True
    return False
