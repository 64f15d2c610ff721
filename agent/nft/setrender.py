"""Set-compiled rendering: two lookups decide a packet, whatever the number of rules.

The chain's decisions are planned per family into peer pieces and rows
(:mod:`sgagent.peerclass`).  The NIC's chain looks the peer address up exactly in a hash map
(``ip saddr vmap @h4_in_eth0``: single addresses and group members), then in an interval map
(``@a4_in_eth0``: networks and ranges).  A member of one group that is inside no network, or
inside a wide one (0.0.0.0/0, a /8...), is found through its group's member set instead: the
class chain of a wide row, or the NIC's chain after both lookups, checks ``ip saddr @g4_G``
(while the groups are few), so that adding or removing such a member is a plain set element
update.  Each element jumps
(``goto``) to its row's *class chain*, named after its content, so pieces with the same row
share it.  A class chain decides by protocol and port or ICMP type:

- per protocol kind (tcp, udp, the family's ICMP, any other protocol), one comparison per
  piece of the row (a port, a range, a type), counting on the deciding decision's named
  counter and giving its verdict, as long as the kind has few pieces;
- otherwise one verdict-map lookup for the kind, whose elements jump to the decision's small
  counting chain (``d_...``).

A single address's class chain holds only where its row differs from the row the interval
lookup gives (``overlay``), then goes to that row's chain.
Then the class chain ends with the chain's tail (inner access and the default), as does the
NIC's chain for addresses in no piece.  Accept is ``return``: it ends the NIC's chain and hands
back to the base chain, so forwarded packets are still judged on their way out.

The address maps have stable names and change element by element: a membership change is an
element update of the exact map per changed member (the interval map never holds members),
plus the group's member set, which inner access uses.  Class chains and large row maps are named after their content, so a
changed one is a new one, loaded whole.
"""

from __future__ import annotations

import bisect
import collections
import hashlib
import operator
import socket

from ..backend.objects import Changed, verdict_chain
from ..ir import Chain, Decision, GroupSet, Ruleset
from ..partition import Painted, merge_spans, overlay
from ..peerclass import ADDR_MAX, ICMP, TCP, UDP, Plan, plan_chain, rects_of
from .names import chain_name, counter_comment, counter_name, set_name
from .objects import Objects, Rule, SetDef
from .render import (VERB, add_log_objects, base_chains, log_objects, member_set, preamble,
                     tail, verdict_rules)

_IP = {4: "ip", 6: "ip6"}
_OWNER = operator.itemgetter(4)  # a painted box's owner
_START = operator.itemgetter(0)  # a piece's first address
_ADDR_TYPE = {4: "ipv4_addr", 6: "ipv6_addr"}
# Pieces of a row per protocol kind written as rules (one comparison each); more go into a
# verdict map.  No anonymous sets: the kernel names and finds sets by walking a list, so
# thousands of them make a load quadratic.
INLINE_MAX = 8


class ChainRenderer:
    """Renders one NIC chain's plans into ``objs``; a membership change uses it alone, to
    render the rows of changed members into a copy of the applied objects."""

    def __init__(self, chain: Chain, objs: Objects,
                 groups: dict[str, GroupSet] | None = None, prior: dict | None = None,
                 stale: frozenset[int] = frozenset(),
                 prior_plans: dict[int, Plan] | None = None) -> None:
        """``prior``: what the renderer of this chain's previous plans made (their
        ``rendered``), of which the class chains of rows holding no decision numbered in
        ``stale`` are taken instead of being made again.  ``prior_plans``: those plans, whose
        exact maps are patched where the addresses changed (:meth:`exact_map`)."""
        self.chain = chain
        self.objs = objs
        self.groups = groups or {}
        self.base = chain_name(chain.nic, chain.direction)
        self.addr = VERB[chain.direction][1]
        self.tail_chain = tail_chain_name(self.base)  # inner access and the default, shared
        self.created_chains: list[str] = []  # what this renderer added to objs
        self.created_sets: list[str] = []
        self._names: dict[tuple, str] = {}
        self.prior = prior or {}
        self.stale = stale
        self.prior_plans = prior_plans or {}
        self.made: dict[tuple, tuple] = {}
        #        class chains made: (family, id(row), id(base)) -> (row, base, name, rules,
        #        what making the rules made besides)

    staged = True  # audit decisions are rendered in stages the NIC chain jumps to

    def tail_rules(self) -> list[Rule]:
        """What an address no row decides ends in: inner access and the default."""
        return tail(self.chain)

    def map_names(self, family: int) -> tuple[str, str]:
        """The exact (hash) and the interval address map of this chain and family."""
        return f"h{family}_{self.base}", f"a{family}_{self.base}"

    def exact_chain(self, plan: Plan, a: int, row: Painted) -> str:
        """The class chain of a single address: it decides where the address's row differs
        from what the interval lookup would give it, then goes to that (so it holds only what
        is particular to the address)."""
        return self.class_chain(plan.family, row, plan.interval_row(a))

    def exact_map(self, plan: Plan) -> SetDef:
        """The exact address map; after a re-plan, the prior plan's map patched only within
        the addresses whose rows may differ (:func:`_dirty`), with the same result."""
        old = self.prior_plans.get(plan.family)
        ranges = _dirty(old, plan, self.stale) if old is not None else None
        addrs: list[int] = []
        items: list[tuple[str, str]] = []
        sources: dict[str, tuple] = {}  # element verdict -> (row, base) it was made of
        if ranges is None:
            for a, row in plan.exact().items():
                self._exact_element(plan, a, row, addrs, items, sources)
        else:
            old_addrs, old_items, old_sources = old.maps["exact"]
            points = plan.points()
            k = 0
            for lo, hi in ranges:
                i = bisect.bisect_left(old_addrs, lo)
                j = bisect.bisect_right(old_addrs, hi)
                addrs += old_addrs[k:i]
                items += old_items[k:i]
                k = j
                inside = {p for p in points[bisect.bisect_left(points, lo):
                                            bisect.bisect_right(points, hi)]}
                s = bisect.bisect_left(plan.segments, lo, key=_START)
                for seg in plan.segments[s:bisect.bisect_right(plan.segments, hi, key=_START)]:
                    if seg[0] == seg[1]:
                        inside.add(seg[0])
                for a in sorted(inside):
                    row = plan.exact_row(a)
                    if row:
                        self._exact_element(plan, a, row, addrs, items, sources)
            addrs += old_addrs[k:]
            items += old_items[k:]
            for verdict in set(map(operator.itemgetter(1), items)) - sources.keys():
                sources[verdict] = old_sources[verdict]  # carried: its chain made here too
                self.class_chain(plan.family, *old_sources[verdict])
        for verdict, n in collections.Counter(map(operator.itemgetter(1), items)).items():
            self.objs.ref(verdict_chain(verdict), n)
        plan.maps["exact"] = (addrs, items, sources)
        elements = dict(items)
        self.objs.exact[self.map_names(plan.family)[0]] = elements
        return exact_setdef(plan.family, elements)

    def _exact_element(self, plan: Plan, a: int, row: Painted, addrs: list, items: list,
                       sources: dict) -> None:
        base = plan.interval_row(a)
        if not self.wanted(row) and not self.wanted(base):
            return
        name = self.class_chain(plan.family, row, base)
        verdict = f"goto {name}"
        if verdict not in sources:
            sources[verdict] = (row, base)
        addrs.append(a)
        items.append((addr_range(a, a, plan.family), verdict))

    def interval_map(self, plan: Plan) -> SetDef:
        values = []
        checked = plan.wide_rows() if plan.group_lookups and plan.group_items else frozenset()
        for lo, hi, row in plan.intervals():
            if not self.wanted(row) and row not in checked:
                continue
            name = self.checking_chain(plan, row) if row in checked else \
                self.class_chain(plan.family, row)
            self.objs.ref(name)
            values.append((addr_range(lo, hi, plan.family), f"goto {name}"))
        values.sort()
        return SetDef(_ADDR_TYPE[plan.family], frozenset(k for k, _ in values), tuple(values),
                      interval=True)

    def checking_chain(self, plan: Plan, row: Painted) -> str:
        """The chain of a wide row: a member of one group found in the group's member set goes
        to the chain of the row painted with the group's rules; any other address to the row's
        own chain."""
        key = ("checking", plan.family, row)
        name = self._names.get(key)
        if name is not None:
            return name
        ip = _IP[plan.family]
        rules = []
        for g in plan.group_items:
            members = set_name(g, plan.family)
            target = self.class_chain(plan.family, plan.point_row(row, (g,)), row)
            rules.append(Rule(f"{ip} {self.addr} @{members} goto {target}", targets=(target,),
                              sets=(members,)))
        target = self.class_chain(plan.family, row)
        rules.append(Rule(f"goto {target}", targets=(target,)))
        name = "k_" + _digest(plan.family, self.base, *(r.text for r in rules))
        if name not in self.objs.chains:
            self.objs.chains[name] = (None, tuple(rules))
            self.created_chains.append(name)
            for r in rules:
                for target in r.targets:
                    self.objs.ref(target)
        self._names[key] = name
        return name

    def class_chain(self, family: int, row: Painted, base: Painted = ()) -> str:
        """The chain deciding ``row``; with ``base``, only where the row differs from it, then
        the chain of ``base``.  Created in ``objs`` if new (references are the caller's to
        count, except the one to ``base``)."""
        # Keyed by the rows' identities (equal rows are mostly the very same objects: a plan
        # shares them, and a re-plan keeps them); the entry holds the rows, so no other
        # object takes their ids while it is kept.  An equal row that is another object
        # only makes the same chain once more, found in ``objs`` by its name.
        key = (family, id(row), id(base))
        made = self.made.get(key)
        if made is not None:
            return made[2]
        after = self.tail_chain
        if base:
            after = self.class_chain(family, base)
        hit = self.prior.get(key)
        if hit is not None and (hit[0] is not row or hit[1] is not base or self.stale and not (
                self.stale.isdisjoint(map(_OWNER, row))
                and self.stale.isdisjoint(map(_OWNER, base)))):
            hit = None
        if hit is not None:
            name, rules, extras = hit[2:]
            for kind, n, value in extras:  # what making its rules made: maps, counting chains
                place = self.objs.sets if kind == "set" else self.objs.chains
                if n not in place:
                    place[n] = value
                    (self.created_sets if kind == "set" else self.created_chains).append(n)
        else:
            boxes: tuple = row
            if base:
                boxes = overlay(row, base)
            if base and not boxes:
                name, rules, extras = after, (), ()
            else:
                rules = tuple(self._row_rules(family, boxes)) + \
                    (Rule(f"goto {after}", targets=(after,)),)
                name = "k_" + _digest(family, self.base, *(r.text for r in rules))
                extras = self._extras(rules)
        self.made[key] = (row, base, name, rules, extras)
        if name == after:
            return after
        if name not in self.objs.chains:
            self.objs.chains[name] = (None, rules)
            self.created_chains.append(name)
            if base:
                self.objs.ref(after)
        return name

    def _extras(self, rules) -> tuple:
        """The verdict maps of a class chain's rules and the counting chains they go to."""
        out = []
        for r in rules:
            for s in r.sets:
                m = self.objs.sets[s]
                out.append(("set", s, m))
                out += [("chain", t, self.objs.chains[t]) for t in sorted(m.targets())
                        if t != self.tail_chain]
        return tuple(out)

    def _row_rules(self, family: int, row) -> list[Rule]:
        icmp = ICMP[family]
        kinds: dict[str, dict[int | None, list[tuple[int, int, int, int]]]] = {}
        for plo, phi, vlo, vhi, owner in row:
            for lo, hi, kind in _split_by_kind(plo, phi, icmp):
                kinds.setdefault(kind, {}).setdefault(owner, []).append((lo, hi, vlo, vhi))
        rules: list[Rule] = []
        for kind in ("tcp", "udp", "icmp", "other"):
            owners = kinds.get(kind)
            if not owners:
                continue
            if sum(map(len, owners.values())) <= INLINE_MAX:
                for owner, boxes in owners.items():
                    rules.extend(self._inline(kind, family, self._decision(owner), boxes))
            else:
                rules.append(self._lookup(kind, family, owners))
        return rules

    def _decision(self, owner: int | None) -> Decision | None:
        return None if owner is None else self.chain.decisions[owner]

    def wanted(self, row: Painted) -> bool:
        """Whether an address with this row needs an element in the address maps (a miss
        goes on to the tail, as a row that decides nothing would)."""
        return True

    def _inline(self, kind: str, family: int, decision: Decision | None, boxes) -> list[Rule]:
        if kind in ("tcp", "udp") and _full(boxes, 65535) or kind == "icmp" and _full(boxes, 255):
            matches = [f"meta l4proto {_l4(kind, family)}"]
        elif kind == "other":
            matches = [f"meta l4proto {_rng(plo, phi)}" for plo, phi, _, _ in boxes]
        else:
            matches = [f"{_selector(kind, family)} {_rng(vlo, vhi)}" for _, _, vlo, vhi in boxes]
        if decision is None:  # nothing decides here (where the base would): the tail
            return [Rule(f"{m} goto {self.tail_chain}", targets=(self.tail_chain,))
                    for m in matches]
        proto = "tcp" if kind == "tcp" else "udp"  # reject: tcp reset for tcp, else icmpx
        return [r for m in matches
                for r in verdict_rules(decision.counter, decision.action, proto, m,
                                       log=decision.log, audit=decision.audit)]

    def _lookup(self, kind: str, family: int, owners: dict[int, list]) -> Rule:
        values = []
        for owner, boxes in owners.items():
            decision = self._decision(owner)
            target = f"goto {self.tail_chain}" if decision is None else \
                f"goto {decider(decision, self.objs, self.created_chains)}"
            for plo, phi, vlo, vhi in boxes:
                key = _rng(plo, phi) if kind == "other" else _rng(vlo, vhi)
                values.append((key, target))
        values.sort()
        typ = {"tcp": "inet_service", "udp": "inet_service", "other": "inet_proto",
               "icmp": "icmp_type" if family == 4 else "icmpv6_type"}[kind]
        vmap = SetDef(typ, frozenset(k for k, _ in values), tuple(values), interval=True)
        name = f"m{kind[0]}_" + _digest(typ, *(f"{k}:{v}" for k, v in values))
        if name not in self.objs.sets:
            self.objs.sets[name] = vmap
            self.created_sets.append(name)
        return Rule(f"{_selector(kind, family)} vmap @{name}", sets=(name,))

    def body(self, plans: dict[int, Plan]) -> list[Rule]:
        """The NIC chain's lookups: per family that has rules, the peer exactly, then by
        interval (both maps are declared even when empty, so that a membership change only
        ever changes elements)."""
        self.objs.chains[self.tail_chain] = (None, tuple(self.tail_rules()))
        rules = []
        for layer, audits in enumerate(audit_layers(self.chain) if self.staged else ()):
            stage = AuditStage(self.chain, self.objs, layer, audits, self.groups)
            rules.append(Rule(f"jump {stage.base}", targets=(stage.base,)))
        for family in (4, 6):
            plan = plans[family]
            if not plan.segments and not plan.group_items:
                continue
            exact, interval = self.map_names(family)
            self.objs.sets[exact] = self.exact_map(plan)
            self.objs.sets[interval] = self.interval_map(plan)
            rules.append(Rule(f"{_IP[family]} {self.addr} vmap @{exact}", sets=(exact,)))
            rules.append(Rule(f"{_IP[family]} {self.addr} vmap @{interval}", sets=(interval,)))
            if plan.group_lookups:  # members in no network, found in their group's set
                for g in plan.group_items:
                    name = self.class_chain(family, plan.point_row((), (g,)))
                    self.objs.ref(name)
                    members = set_name(g, family)
                    rules.append(Rule(f"{_IP[family]} {self.addr} @{members} goto {name}",
                                      targets=(name,), sets=(members,)))
        return rules


class AuditStage(ChainRenderer):
    """A NIC chain's audit rules (SEMANTICS section 9), one *layer* of them: rules that never
    overlap.  Its own chain, which the NIC chain jumps to before its lookups, looks the peer
    up in its own address maps, painted by the layer's audit rules and every enforced decision
    (first match, in the NIC chain's order): where an audit rule comes first, its class chain
    counts it on the audit rule's counter and jumps to its log chain; anything else, and a miss,
    returns to the NIC chain.  So a packet is counted on exactly the audit rules it reaches, at
    the cost of two more lookups per layer, whatever the number of rules."""

    def __init__(self, chain: Chain, objs: Objects, layer: int, audits: frozenset[int],
                 groups: dict[str, GroupSet]) -> None:
        keep = audits | relevant(chain, audits)
        decisions = tuple(d if i in keep else d._replace(matches=())
                          for i, d in enumerate(chain.decisions))
        super().__init__(Chain(chain.nic, chain.role, chain.direction, decisions, (), None,
                               chain.default), objs, groups)
        self.base = f"u{layer}_{self.base}"
        self.tail_chain = tail_chain_name(self.base)
        self.objs.chains[self.base] = (None, tuple(self.body(plan_chain(self.chain, groups,
                                                                         audits=True))))

    staged = False  # no audit stages of its own

    def _decision(self, owner: int | None) -> Decision | None:
        d = super()._decision(owner)
        return d if d is not None and d.audit else None

    def wanted(self, row: Painted) -> bool:
        return any(self.chain.decisions[b[4]].audit for b in row if b[4] is not None)

    def tail_rules(self) -> list[Rule]:
        return []


Footprint = list[tuple[int, int, int, tuple]]  # (family, address lo, hi, rectangles)


def footprint(d: Decision) -> Footprint:
    """Where a decision may match: address spans (a group peer: its whole family) with the
    rectangles of the (protocol x value) plane they come with."""
    out = []
    for m in d.matches:
        rects = rects_of(m)
        if not rects:
            continue
        if m.group is not None:
            out.append((m.family, 0, ADDR_MAX[m.family], rects))
        else:
            out += [(m.family, int(n.network_address), int(n.broadcast_address), rects)
                    for n in m.nets]
    return out


def _overlap(a: Footprint, b: Footprint) -> bool:
    return any(fa == fb and lo <= bhi and blo <= hi and any(
        p[0] <= q[1] and q[0] <= p[1] and p[2] <= q[3] and q[2] <= p[3]
        for p in ra for q in rb)
        for fa, lo, hi, ra in a for fb, blo, bhi, rb in b)


def audit_layers(chain: Chain) -> list[frozenset[int]]:
    """The chain's audit decisions in layers of ones that cannot match the same packet
    (greedy, in order; group peers may hold any address of their family)."""
    layers: list[list[tuple[int, Footprint]]] = []
    for i, d in enumerate(chain.decisions):
        if not d.audit:
            continue
        fp = footprint(d)
        for layer in layers:
            if not any(_overlap(fp, other) for _, other in layer):
                layer.append((i, fp))
                break
        else:
            layers.append([(i, fp)])
    return [frozenset(i for i, _ in layer) for layer in layers]


def relevant(chain: Chain, audits: frozenset[int]) -> set[int]:
    """The enforced decisions whose addresses meet those of the ``audits``: only they can
    come before an audit rule of the layer on some packet (the others are left out of its
    stage's painting, where they would only paint rows no audit rule is in)."""
    spans: dict[int, list[tuple[int, int]]] = {}
    for i in audits:
        for fam, lo, hi, _ in footprint(chain.decisions[i]):
            spans.setdefault(fam, []).append((lo, hi))
    merged: dict[int, tuple[list[int], list[int]]] = {}
    for fam, xs in spans.items():
        starts: list[int] = []
        ends: list[int] = []
        for lo, hi in sorted(xs):
            if ends and lo <= ends[-1] + 1:
                ends[-1] = max(ends[-1], hi)
            else:
                starts.append(lo)
                ends.append(hi)
        merged[fam] = (starts, ends)
    out = set()
    for i, d in enumerate(chain.decisions):
        if d.audit:
            continue
        for fam, lo, hi, _ in footprint(d):
            if fam in merged:
                starts, ends = merged[fam]
                k = bisect.bisect_right(starts, hi) - 1
                if k >= 0 and ends[k] >= lo:
                    out.add(i)
                    break
    return out


def _dirty(old: Plan, new: Plan, stale: frozenset[int]) -> list[tuple[int, int]] | None:
    """Where the exact map of ``new``, re-planned from ``old`` (the decisions numbered in
    ``stale`` changed), may differ from that of ``old``: the re-swept spans and one address
    either side, widened to every segment and interval piece of either plan that meets them
    (a segment's neighbours may merge with it, an interval piece bridges singles), until
    none does.  Elsewhere every address has the same segment, groups and interval row, hence
    the same element.  None where that is not known: planned afresh, the groups, members or
    wide rows differ, a changed decision is a group's rule, or no record of the old map."""
    if new.spans is None or "exact" not in old.maps or old.group_items != new.group_items \
            or old.members != new.members:
        return None
    if new.group_items and (any(o in stale for items in new.group_items.values()
                                for o, _ in items) or old.wide_rows() != new.wide_rows()):
        return None
    top = ADDR_MAX[new.family]
    ranges = merge_spans([(max(lo - 1, 0), min(hi + 1, top)) for lo, hi in new.spans])
    pieces = [old.segments, old.intervals(), new.segments, new.intervals()]
    while True:
        grown = list(ranges)
        for lo, hi in ranges:
            for found in pieces:
                i = bisect.bisect_right(found, lo, key=_START) - 1
                if i >= 0 and found[i][1] >= lo:
                    grown.append(found[i][:2])
                j = bisect.bisect_right(found, hi, key=_START) - 1
                if j >= 0 and found[j][1] >= lo:
                    grown.append(found[j][:2])
        grown = merge_spans(grown)
        if grown == ranges:
            return ranges
        ranges = grown


def tail_chain_name(base: str) -> str:
    """The chain of a NIC chain's tail (inner access and the default)."""
    return "t_" + base


def exact_setdef(family: int, elements: dict[str, str]) -> SetDef:
    """The exact address map from its elements (address -> verdict)."""
    return SetDef(_ADDR_TYPE[family], frozenset(elements), tuple(elements.items()))


def chain_body(chain: Chain, objs: Objects, groups: dict[str, GroupSet],
               prior: dict[int, Plan] | None = None,
               stale: frozenset[int] = frozenset()) -> list[Rule]:
    """The NIC chain's rules, its maps and class chains into ``objs``.  With ``prior``, the
    plans this chain was rendered from before an edit that changed only the decisions
    numbered in ``stale``: planned and rendered again only where those decisions reach
    (:func:`sgagent.peerclass.plan_chain`, :class:`ChainRenderer`'s ``prior``), with exactly
    the result of rendering afresh."""
    plans = plan_chain(chain, groups, prior=prior, stale=stale)
    memo = next((p.rendered for p in prior.values()), None) if prior else None
    r = ChainRenderer(chain, objs, groups, memo, stale, prior)
    objs.plans[r.base] = plans
    rules = r.body(plans)
    for plan in plans.values():
        plan.rendered = r.made
    return rules


def edited(old: Chain, new: Chain) -> frozenset[int] | None:
    """The decisions (by number) that differ between two versions of a chain, if only some
    decisions changed and neither version has audit decisions (audit stages are rendered
    whole); None otherwise."""
    if len(old.decisions) != len(new.decisions) or any(
            d.audit for c in (old, new) for d in c.decisions):
        return None
    return frozenset(i for i, (a, b) in enumerate(zip(old.decisions, new.decisions))
                     if a is not b and a != b)


def decider(decision: Decision, objs: Objects, created: list[str] | None = None) -> str:
    """The small chain an element of a verdict map jumps to: it counts on the decision's named
    counter and gives its verdict (accept returns from the NIC's chain to the base chain).
    Added to ``objs`` (and its name to ``created``) if new."""
    name = "d" + counter_name(decision.counter)[1:]
    if name not in objs.chains:
        objs.chains[name] = (None, tuple(verdict_rules(decision.counter, decision.action, None,
                                                       log=decision.log, audit=decision.audit)))
        if created is not None:
            created.append(name)
    return name


def _split_by_kind(plo: int, phi: int, icmp: int):
    """A protocol range cut into the kinds that read different values."""
    cuts = sorted({TCP, UDP, icmp})
    lo = plo
    for c in cuts:
        if c < lo or c > phi:
            continue
        if lo < c:
            yield lo, c - 1, "other"
        yield c, c, {TCP: "tcp", UDP: "udp"}.get(c, "icmp")
        lo = c + 1
    if lo <= phi:
        yield lo, phi, "other"


def _selector(kind: str, family: int) -> str:
    if kind in ("tcp", "udp"):
        return f"{kind} dport"
    if kind == "icmp":
        return "icmp type" if family == 4 else "icmpv6 type"
    return "meta l4proto"


def _l4(kind: str, family: int) -> str:
    if kind == "icmp":
        return "icmp" if family == 4 else "ipv6-icmp"
    return kind


def _full(boxes, top: int) -> bool:
    spans = sorted((vlo, vhi) for _, _, vlo, vhi in boxes)
    return spans[0][0] == 0 and spans[-1][1] == top and all(
        a[1] + 1 == b[0] for a, b in zip(spans, spans[1:]))


def _digest(*parts: str | int) -> str:
    h = hashlib.sha1()
    for p in parts:
        h.update(f"{p}\n".encode())
    return h.hexdigest()[:12]


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


def member_update(old: Objects, old_rs: Ruleset, rs: Ruleset) -> Objects | None:
    """The objects for ``rs``, whose chains equal ``old_rs``'s and only members differ, built
    from ``old`` (what the kernel holds) by touching only the changed members: their element
    in the exact address map, the class chains of their new rows, the group's member set.
    Exactly what :func:`render` would give, without its cost; None where this cannot be done
    alone (a class chain left unused holds a verdict map), and the caller renders it all.
    Unchanged sets and chains are the very objects of ``old``, and the result names what it
    changed (``changed``), so that the diff against ``old``
    (:func:`sgagent.backend.transaction.diff`) is as small as the change."""
    before = {g.name: g for g in old_rs.groups}
    if set(before) != {g.name for g in rs.groups}:
        return None
    if any(d.audit for c in rs.chains for d in c.decisions):
        return None  # audit stages keep address maps of their own: rendered whole
    new = Objects(dict(old.counters), dict(old.sets), dict(old.chains), dict(old.refs),
                  dict(old.exact), dict(old.plans))
    new.changed = delta = Changed(old)
    changed: dict[str, GroupSet] = {}
    for g in rs.groups:
        o = before[g.name]
        if (o.v4, o.v6) != (g.v4, g.v6):
            changed[g.name] = g
            for family in (4, 6):
                name, s = set_name(g.name, family), member_set(g, family)
                gone, come = old.sets[name].elements - s.elements, s.elements - old.sets[name].elements
                if gone or come:
                    new.sets[name] = s
                    delta.sets[name] = None
    unused: set[str] = set()
    renderers: list[ChainRenderer] = []
    for chain in rs.chains:
        r = ChainRenderer(chain, new)
        plans = old.plans.get(r.base)
        if plans is None:
            return None
        renderers.append(r)
        for family, plan in plans.items():
            touched = [g for g in plan.members if g in changed]
            if not touched:
                continue
            members = dict(plan.members)
            for g in touched:
                addrs = changed[g].v4 if family == 4 else changed[g].v6
                members[g] = frozenset(int(a) for a in addrs)
            after = plan.with_members(members)
            new.plans[r.base] = {**new.plans[r.base], family: after}
            name = r.map_names(family)[0]
            elements = new.exact[name]
            gone_keys, come_items = [], []
            for a in sorted(set().union(*(plan.members[g] ^ members[g] for g in touched))):
                key = addr_range(a, a, family)
                gone = elements.get(key)
                row = after.exact_row(a)
                target = r.exact_chain(after, a, row) if row else None
                come = f"goto {target}" if target else None
                if come == gone:
                    continue
                if not gone_keys and not come_items:
                    elements = dict(elements)  # copied on the first change only
                if gone is not None:
                    del elements[key]
                    was = verdict_chain(gone)
                    new.ref(was, -1)
                    unused.add(was)
                    gone_keys.append(key)
                if come is not None:
                    elements[key] = come
                    new.ref(target)
                    come_items.append((key, come))
            if not gone_keys and not come_items:
                continue
            new.exact[name] = elements
            new.sets[name] = exact_setdef(family, elements)
            delta.sets[name] = None
    for r in renderers:
        delta.chains.update(dict.fromkeys(r.created_chains))
        delta.sets.update(dict.fromkeys(r.created_sets))
    removed: list[str] = []
    while unused:  # class chains nothing goes to any more, and what only they went to
        name = unused.pop()
        if new.refs.get(name, 0) > 0:
            continue
        rules = new.chains.pop(name)[1]
        new.refs.pop(name, None)
        removed.append(name)
        if any(new.sets[s].is_map for rule in rules for s in rule.sets):
            return None  # a verdict map that would fall out of use too
        for rule in rules:  # the class chains it went to (through its last rule)
            for target in rule.targets:
                if target.startswith("k_"):
                    new.ref(target, -1)
                    unused.add(target)
    delta.chains.update(dict.fromkeys(sorted(removed)))
    return new



def chain_update(old: Objects, old_rs: Ruleset, rs: Ruleset) -> Objects | None:
    """The objects for ``rs`` built from ``old`` (what the kernel holds, rendered from
    ``old_rs``) by rendering again only the NIC chains that changed: whose :class:`Chain`
    differs (the very same object when :func:`sgagent.compiler.compile_document` reused it),
    or that look up a group whose members changed.  Everything a NIC chain renders into --
    its class, tail and counting chains, its address and verdict maps, its counters -- is its
    own (their names hold the chain's or its counters' identity), so an unchanged chain's
    objects are kept as they are, the very objects of ``old``, and a changed chain's are
    taken out and rendered again.  The group sets and the base chains follow the ruleset.
    The result names what it changed (``changed``), so the diff against ``old`` is as large
    as the change.  Exactly what :func:`render` would give; None where a name rendered for
    one chain is found held by another (the caller then renders it all)."""
    old_chains = {chain_name(c.nic, c.direction): c for c in old_rs.chains}
    new_chains = {chain_name(c.nic, c.direction): c for c in rs.chains}
    if len(old_chains) != len(old_rs.chains) or len(new_chains) != len(rs.chains):
        return None
    before = {g.name: g for g in old_rs.groups}
    groups = {g.name: g for g in rs.groups}
    moved = {n for n, g in groups.items()
             if n not in before or (before[n].v4, before[n].v6) != (g.v4, g.v6)}
    dirty = [base for base, c in new_chains.items()
             if base not in old_chains or (old_chains[base] is not c and old_chains[base] != c)
             or moved and not moved.isdisjoint(_looked_up(c))]
    gone = [base for base in old_chains if base not in new_chains]
    group_sets = {set_name(g, f) for g in (*before, *groups) for f in (4, 6)}
    new = Objects(dict(old.counters), dict(old.sets), dict(old.chains), dict(old.refs),
                  dict(old.exact), dict(old.plans))
    new.changed = delta = Changed(old)
    for base in [b for b in dirty if b in old_chains] + gone:
        chains, sets = _owned(old, base, group_sets)
        chains += [n for n in log_objects(old_chains[base])[0]
                   if n in new.chains and n not in chains]
        for name in chains:
            del new.chains[name]
            new.refs.pop(name, None)
        for name in sets:
            del new.sets[name]
            new.exact.pop(name, None)
        new.plans.pop(base, None)
        delta.chains.update(dict.fromkeys(chains))
        delta.sets.update(dict.fromkeys(sets))
        for key in old_chains[base].counters:
            name = counter_name(key)
            new.counters.pop(name, None)
            delta.counters[name] = None
        for name in log_objects(old_chains[base])[1]:
            new.counters.pop(name, None)
            delta.counters[name] = None
    for base in dirty:
        chain = new_chains[base]
        part = Objects()
        prior, stale = old.plans.get(base), None
        if prior is not None and base in old_chains:
            stale = edited(old_chains[base], chain)
        if stale is None:
            prior = None
        rules = preamble(chain.direction) + \
            chain_body(chain, part, groups, prior, stale or frozenset()) + tail(chain)
        part.chains[base] = (None, tuple(rules))
        add_log_objects(chain, part)
        if any(n in new.chains for n in part.chains) or any(n in new.sets for n in part.sets):
            return None
        new.chains.update(part.chains)
        new.sets.update(part.sets)
        new.refs.update(part.refs)
        new.exact.update(part.exact)
        new.plans.update(part.plans)
        delta.chains.update(dict.fromkeys(part.chains))
        delta.sets.update(dict.fromkeys(part.sets))
        for key in chain.counters:
            name = counter_name(key)
            if name in new.counters:
                return None
            new.counters[name] = counter_comment(key)
            delta.counters[name] = None
        for name, comment in part.counters.items():  # suppressed-record counters
            if name in new.counters:
                return None
            new.counters[name] = comment
            delta.counters[name] = None
    for name in before.keys() - groups.keys():
        for family in (4, 6):
            new.sets.pop(set_name(name, family), None)
            delta.sets[set_name(name, family)] = None
    for name in moved:
        for family in (4, 6):
            new.sets[set_name(name, family)] = member_set(groups[name], family)
            delta.sets[set_name(name, family)] = None
    for hook, entry in base_chains(rs).items():
        if old.chains.get(hook) != entry:
            new.chains[hook] = entry
            delta.chains[hook] = None
    return new


def _looked_up(chain: Chain) -> set[str]:
    """The groups whose members a NIC chain's rendering reads."""
    return {*chain.inner_access,
            *(m.group for d in chain.decisions for m in d.matches if m.group is not None)}


def _owned(objs: Objects, base: str, shared: set[str]) -> tuple[list[str], list[str]]:
    """The chains and sets that NIC chain ``base`` reaches in ``objs`` (itself included),
    other than the ``shared`` group sets, and its tail chain (made even when nothing goes to
    it): what rendering it made."""
    chains: dict[str, None] = {base: None}
    todo = [base]
    tail_chain = tail_chain_name(base)
    if tail_chain in objs.chains:
        chains[tail_chain] = None
        todo.append(tail_chain)
    sets: dict[str, None] = {}
    while todo:
        name = todo.pop()
        own_tail = tail_chain_name(name)  # an audit stage's tail, which a miss never names
        if name.startswith("u") and own_tail in objs.chains and own_tail not in chains:
            chains[own_tail] = None
            todo.append(own_tail)
        for rule in objs.chains[name][1]:
            targets = list(rule.targets)
            for s in rule.sets:
                if s not in shared and s not in sets:
                    sets[s] = None
                    targets.extend(objs.sets[s].targets())
            for t in targets:
                if t not in chains:
                    chains[t] = None
                    todo.append(t)
    return list(chains), list(sets)
