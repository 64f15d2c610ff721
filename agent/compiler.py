"""From a validated document to the IR: which rules apply where, and in which order."""

from __future__ import annotations

import ipaddress
import weakref

from .ir import Chain, CounterKey, Decision, GroupSet, LogSpec, Match, Ruleset
from .model import Document, FailsafeEntry, GroupPeer, Nic, Rule

_FAMILY_ICMP = {4: ("icmp", 8), 6: ("icmpv6", 128)}
# Networks are shared between compilations, so that comparing the rules of two rulesets finds
# the same objects and does not compare networks field by field.
_NETS: "weakref.WeakValueDictionary" = weakref.WeakValueDictionary()


def compile_document(doc: Document,
                     previous: tuple[Document, Ruleset] | None = None) -> Ruleset:
    """The ruleset of ``doc``.  With ``previous`` (a document and its ruleset), each chain
    whose inputs are unchanged is reused as it is: the host's failsafe, network, ordering and
    defaults, the NIC and its binding, and for each bound group its rules (the same object,
    as :class:`sgagent.load.DocumentCache` leaves an unchanged group), type, inner access and
    whether it has members.  A group's member sets are reused while its members are the same
    object.  When only members changed (no group gaining its first member or losing its last,
    which inner access follows), the chains are the previous ones as a whole."""
    old_chains: dict[tuple[str, str], Chain] = {}
    old_sets: dict[str, GroupSet] = {}
    old_doc = None
    if previous is not None:
        rs = _members_only(doc, *previous)
        if rs is not None:
            return rs
        old_doc, old_rs = previous
        old_chains = _reusable(doc, old_doc, old_rs)
        old_sets = {g.name: g for g in old_rs.groups}
    chains = []
    for nic in doc.host.nics:
        for direction in ("inbound", "outbound"):
            chain = old_chains.get((nic.name, direction))
            chains.append(chain if chain is not None else _chain(doc, nic, direction))
    referenced: dict[str, None] = {}
    for chain in chains:
        for g in chain.inner_access:
            referenced[g] = None
        for g in _chain_groups(chain):
            referenced[g] = None
    sets = []
    for name in sorted(referenced):
        old = old_sets.get(name)
        if old_doc is None or old is None or name not in old_doc.security_groups \
                or doc.security_groups[name].members is not old_doc.security_groups[name].members:
            old = _group_sets(doc, [name])[0]
        sets.append(old)
    return Ruleset(tuple(chains), tuple(sets))


# The groups each chain's decisions reference, remembered per chain object (a reused chain
# is not walked again).
_CHAIN_GROUPS: "dict[int, tuple[weakref.ref, tuple[str, ...]]]" = {}


def _chain_groups(chain: Chain) -> tuple[str, ...]:
    known = _CHAIN_GROUPS.get(id(chain))
    if known is not None and known[0]() is chain:
        return known[1]
    names = tuple(dict.fromkeys(m.group for d in chain.decisions for m in d.matches
                                if m.group is not None))
    key = id(chain)
    _CHAIN_GROUPS[key] = (weakref.ref(chain, lambda _, key=key: _CHAIN_GROUPS.pop(key, None)),
                          names)
    return names


def _reusable(doc: Document, old: Document, old_rs: Ruleset) -> dict[tuple[str, str], Chain]:
    """The chains of ``old_rs`` that ``doc`` would compile to again, by (NIC, direction)."""
    h, o = doc.host, old.host
    if h is not o and (h.failsafe != o.failsafe or h.network != o.network
                       or h.ordering != o.ordering or h.defaults != o.defaults):
        return {}
    old_nics = {n.name: n for n in o.nics}
    same_nics = set()
    for nic in h.nics:
        if old_nics.get(nic.name) != nic:
            continue
        if all(_same_for_chains(doc.security_groups.get(g), old.security_groups.get(g))
               for g in nic.security_groups):
            same_nics.add(nic.name)
    return {(c.nic, c.direction): c for c in old_rs.chains if c.nic in same_nics}


def _same_for_chains(g, o) -> bool:
    """Whether a bound group compiles into its NICs' chains as before."""
    return g is not None and o is not None and (g is o or (
        g.rules is o.rules and g.type == o.type and g.inner_accepts == o.inner_accepts
        and bool(g.members) == bool(o.members)))


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
        audit = rule.mode == "audit"
        key = CounterKey(nic.name, direction, gname, doc.rule_id(gname, ri), rule.policy,
                         rule.mode)
        log = log_spec(rule.log_rate) if rule.log or audit else None
        decisions.append(Decision(key, rule.policy, _rule_matches(rule), log, audit))

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
    default = Decision(CounterKey(nic.name, direction, None, "default", final), final, (),
                       log_spec(None) if nic.log_default else None)
    return Chain(nic.name, nic.role, direction, tuple(decisions), inner if inner_key else (),
                 inner_key, default)


def log_spec(rate) -> LogSpec:
    """The IR's log limit from a rule's ``log_rate`` (None: SEMANTICS section 9's default)."""
    if rate is None:
        return DEFAULT_LOG
    return LogSpec(rate.rate, rate.unit, rate.burst)


DEFAULT_LOG = LogSpec(10, "second", 20)


# The matches of each rule object, while it lives: a rule of a group that did not change is
# the same object in the next document (sgagent.load.DocumentCache), and is not compiled again
# when a chain it takes part in is.
_MATCHES: "dict[int, tuple[weakref.ref, tuple[Match, ...]]]" = {}


def _rule_matches(rule: Rule) -> tuple[Match, ...]:
    known = _MATCHES.get(id(rule))
    if known is not None and known[0]() is rule:
        return known[1]
    matches = matches_of(rule)
    key = id(rule)
    _MATCHES[key] = (weakref.ref(rule, lambda _, key=key: _MATCHES.pop(key, None)), matches)
    return matches


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
