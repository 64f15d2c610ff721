"""From a validated document to the IR: which rules apply where, and in which order."""

from __future__ import annotations

import ipaddress
import weakref

from .ir import Chain, CounterKey, Decision, GroupSet, Match, Ruleset
from .model import Document, FailsafeEntry, GroupPeer, Nic, Rule

_FAMILY_ICMP = {4: ("icmp", 8), 6: ("icmpv6", 128)}
# Networks are shared between compilations, so that comparing the rules of two rulesets finds
# the same objects and does not compare networks field by field.
_NETS: "weakref.WeakValueDictionary" = weakref.WeakValueDictionary()


def compile_document(doc: Document,
                     previous: tuple[Document, Ruleset] | None = None) -> Ruleset:
    """The ruleset of ``doc``.  With ``previous`` (a document and its ruleset), when ``doc``
    differs from it only in members (its host and rules are the same objects, as
    :class:`sgagent.load.DocumentCache` leaves them) and no group gains its first member or
    loses its last (inner access follows that), the chains are reused as they are and only the
    member sets are made again."""
    if previous is not None:
        rs = _members_only(doc, *previous)
        if rs is not None:
            return rs
    chains = []
    for nic in doc.host.nics:
        for direction in ("inbound", "outbound"):
            chains.append(_chain(doc, nic, direction))
    referenced: dict[str, None] = {}
    for chain in chains:
        for g in chain.inner_access:
            referenced[g] = None
        for d in chain.decisions:
            for m in d.matches:
                if m.group is not None:
                    referenced[m.group] = None
    return Ruleset(tuple(chains), _group_sets(doc, sorted(referenced)))


def _group_sets(doc: Document, names) -> tuple[GroupSet, ...]:
    groups = []
    for name in names:
        members = doc.security_groups[name].members
        groups.append(GroupSet(
            name,
            tuple(sorted(m for m in members if m.version == 4)),
            tuple(sorted(m for m in members if m.version == 6)),
        ))
    return tuple(groups)


def _members_only(doc: Document, old: Document, old_rs: Ruleset) -> Ruleset | None:
    if doc.host is not old.host or doc.security_groups.keys() != old.security_groups.keys():
        return None
    for name, g in doc.security_groups.items():
        o = old.security_groups[name]
        if g is o:
            continue
        if (g.rules is not o.rules or g.type != o.type or g.inner_access != o.inner_access
                or g.account != o.account or bool(g.members) != bool(o.members)):
            return None
    return Ruleset(old_rs.chains, _group_sets(doc, [g.name for g in old_rs.groups]))


def ordered_rules(doc: Document, nic: Nic, direction: str) -> list[tuple[str, int, Rule]]:
    """The rules that take part on this NIC and direction, in the order that decides."""
    picked = []
    for gi, gname in enumerate(nic.security_groups):
        for ri, rule in enumerate(doc.security_groups[gname].rules):
            if rule.direction != direction:
                continue
            if doc.host.network == "classic":
                if rule.nic != nic.role:
                    continue
            elif rule.nic not in (None, "intranet"):
                continue
            picked.append((gi, ri, gname, rule))
    if doc.host.ordering == "priority":
        picked.sort(key=lambda t: (t[3].priority, t[3].policy == "accept", t[0], t[1]))
    return [(gname, ri, rule) for _, ri, gname, rule in picked]


def _chain(doc: Document, nic: Nic, direction: str) -> Chain:
    decisions = []
    for i, entry in enumerate(doc.host.failsafe):
        if entry.direction == direction:
            key = CounterKey(nic.name, direction, None, f"failsafe/{i}", "accept")
            decisions.append(Decision(key, "accept", matches_of(entry)))
    for gname, ri, rule in ordered_rules(doc, nic, direction):
        key = CounterKey(nic.name, direction, gname, doc.rule_id(gname, ri), rule.policy)
        decisions.append(Decision(key, rule.policy, matches_of(rule)))

    groups = [doc.security_groups[g] for g in nic.security_groups]
    inner: tuple[str, ...] = ()
    if direction == "inbound" and nic.role in ("vpc", "intranet"):
        inner = tuple(g for g in nic.security_groups
                      if doc.security_groups[g].inner_accepts and doc.security_groups[g].members)
    final = getattr(doc.host.defaults, direction)
    if final is None:
        enterprise = any(g.type == "enterprise" for g in groups)
        final = "drop" if enterprise or direction == "inbound" else "accept"
    inner_key = CounterKey(nic.name, direction, None, "default", "accept") if inner else None
    if inner_key is not None and final == "accept":
        inner_key = None  # the final default accepts too; one counter serves both
    default = Decision(CounterKey(nic.name, direction, None, "default", final), final, ())
    return Chain(nic.name, nic.role, direction, tuple(decisions), inner if inner_key else (),
                 inner_key, default)


def matches_of(rule: Rule | FailsafeEntry) -> tuple[Match, ...]:
    nets = {4: [], 6: []}
    groups = []
    for item in rule.peer or ():
        if isinstance(item, GroupPeer):
            groups.append(item.group)
        else:
            nets[item.version].append(item)
    out = []
    for family in (4, 6):
        proto_spec = _proto(rule, family)
        if proto_spec is None:
            continue
        proto, ports, icmp_type = proto_spec
        fam_nets = nets[family]
        collapsed = (tuple(fam_nets) if len(fam_nets) == 1
                     else tuple(ipaddress.collapse_addresses(fam_nets)) if fam_nets else ())
        collapsed = tuple(_NETS.setdefault(n, n) for n in collapsed)
        if collapsed:
            out.append(Match(family, collapsed, None, proto, ports, icmp_type))
        for g in dict.fromkeys(groups):
            out.append(Match(family, (), g, proto, ports, icmp_type))
    return tuple(out)


def _proto(rule: Rule | FailsafeEntry, family: int):
    """(proto, ports, icmp_type) for this family, or None if the rule cannot match it."""
    proto = rule.effective_protocol
    if proto == "all":
        return None, None, None
    if proto == "ping":
        name, echo = _FAMILY_ICMP[family]
        return name, None, echo
    if proto == "icmp" and family != 4 or proto == "icmpv6" and family != 6:
        return None
    if proto in ("tcp", "udp"):
        return proto, rule.effective_ports, None
    return proto, None, None
