"""``sgagent lint``: what a valid document does that its author probably did not mean.

Findings (docs/LINT.md says each, with the vendors' limits it cites):

* ``shadowed``: a rule that can never decide a packet on a NIC, because the rules before it in
  the order that decides (failsafe, better priorities, earlier rules) already decide every
  packet it matches.  Taken from the partition the set rendering is built from
  (:mod:`sgagent.peerclass`): a decision that owns no box of any peer's row decides nothing.
* ``duplicate``: a rule with the same effect (direction, policy, protocol, ports, peers) as one
  before it on the same NIC.
* ``ordering``: in a sequential (Tencent) document, an accepting rule that an earlier drop or
  reject hides: wholly, or in part where the rule's own priority says it was meant to win
  (priority plays no part in sequential ordering).
* ``open-admin-port``: an accepting inbound rule that lets ``0.0.0.0/0`` or ``::/0`` reach an
  administration or database port (ssh, telnet, rdp, mysql, postgresql, redis, mssql, oracle).
* ``vendor-limit``: more rules or groups than the vendor whose ordering the document follows
  allows (Alibaba for ``priority``, Tencent for ``sequential``).

Group peers are judged with the groups' current members.  Audit rules (``mode: audit``)
decide nothing and are neither shadowed nor shadowing.  Pure: no kernel, no backend.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from .compiler import compile_document
from .ir import Chain, CounterKey, Decision
from .model import Document, GroupPeer
from .partition import Painted, Rect
from .peerclass import TCP, UDP, Plan, plan_chain, rects_of

KINDS = ("shadowed", "duplicate", "ordering", "open-admin-port", "vendor-limit")

ADMIN_PORTS = {22: "ssh", 23: "telnet", 1433: "mssql", 1521: "oracle", 3306: "mysql",
               3389: "rdp", 5432: "postgresql", 6379: "redis"}

# The vendors' quotas (docs/LINT.md cites where each is documented).
ALIBABA_RULES_PER_NIC = 1000
ALIBABA_GROUPS_PER_NIC = 10
ALIBABA_GROUP_REFERENCES = 20  # groups a basic group's rules may name as peers
TENCENT_RULES_PER_DIRECTION = 100
TENCENT_GROUPS_PER_NIC = 5


@dataclass(frozen=True)
class Finding:
    kind: str                      # one of KINDS
    path: str                      # where in the document: security_groups.G.rules[i], ...
    message: str
    group: str | None = None
    rule: str | None = None        # the rule's id (or <group>/<index>)
    nics: tuple[str, ...] = ()
    related: tuple[str, ...] = ()  # the other rules involved, by name

    def as_dict(self) -> dict:
        return {"kind": self.kind, "path": self.path, "group": self.group, "rule": self.rule,
                "nics": list(self.nics), "related": list(self.related),
                "message": self.message}


def lint(doc: Document) -> list[Finding]:
    """Every finding of ``doc``, rules in document order, then the limits."""
    rs = compile_document(doc)
    groups = {g.name: g for g in rs.groups}
    index = {(g, doc.rule_id(g, i)): i for g, sg in doc.security_groups.items()
             for i in range(len(sg.rules))}
    priority = {key: doc.security_groups[key[0]].rules[i].priority for key, i in index.items()}
    per_rule: dict[tuple[str, str], _RuleNotes] = {}
    for chain in rs.chains:
        _chain_notes(doc, Painting(chain, groups), per_rule, priority)
    findings = []
    for (g, rid), notes in sorted(per_rule.items(), key=lambda kv: (kv[0][0], index[kv[0]])):
        findings += notes.findings(doc, g, rid, index[(g, rid)])
    return findings + limits(doc)


def name_of(key: CounterKey) -> str:
    """A decision's rule as people name it: ``sg-web/web-http``, ``sg-web/0``, ``failsafe/0``."""
    if key.group is None or key.rule.startswith(key.group + "/"):
        return key.rule
    return f"{key.group}/{key.rule}"


# --- per chain -------------------------------------------------------------------------------

@dataclass
class _RuleNotes:
    """What the chains say of one rule."""
    shadowed: dict[str, set[CounterKey]] = field(default_factory=dict)   # nic -> deciders
    never: set[str] = field(default_factory=set)                          # nics: no match at all
    duplicate: dict[str, CounterKey] = field(default_factory=dict)       # nic -> the original
    hidden: dict[str, set[CounterKey]] = field(default_factory=dict)     # nic -> refusing rules
    exposed: dict[str, set[tuple[int, str]]] = field(default_factory=dict)  # nic -> (port, net)

    def findings(self, doc: Document, group: str, rid: str, i: int) -> list[Finding]:
        path = f"security_groups.{group}.rules[{i}]"
        rule = doc.security_groups[group].rules[i]
        out = []
        me = name_of(CounterKey("", "inbound", group, rid, "accept"))
        if self.duplicate:
            originals = sorted({name_of(k) for k in self.duplicate.values()})
            out.append(Finding("duplicate", path, (
                f"{me} does the same as {_and(originals)} (same direction, policy, protocol, "
                f"ports and peers), which comes first and decides: it can go"),
                group, rid, _nics(self.duplicate), tuple(originals)))
        hidden = {n: ks for n, ks in self.hidden.items() if n not in self.duplicate}
        if hidden:
            refusing = sorted({name_of(k) for ks in hidden.values() for k in ks})
            whole = all(n in self.shadowed for n in hidden)
            what = "every packet it matches" if whole else "packets it was meant to let in"
            prio = (f"; its priority {rule.priority} plays no part" if "priority"
                    in rule.model_fields_set else "")
            out.append(Finding("ordering", path, (
                f"{me} accepts, but {_and(refusing)} before it refuses {what}: in sequential "
                f"ordering the first rule that matches decides{prio}; list it before "
                f"{_and(refusing)} if it should win"),
                group, rid, _nics(hidden), tuple(refusing)))
        shadowed = {n: ks for n, ks in self.shadowed.items()
                    if n not in self.duplicate and n not in hidden}
        if shadowed:
            deciders = sorted({name_of(k) for ks in shadowed.values() for k in ks})
            out.append(Finding("shadowed", path, (
                f"{me} never decides a packet on {_and(_nics(shadowed))}: "
                f"{_and(deciders)} before it decide{'s' if len(deciders) == 1 else ''} "
                f"everything it matches"),
                group, rid, _nics(shadowed), tuple(deciders)))
        never = sorted(self.never)
        if never:
            out.append(Finding("shadowed", path, (
                f"{me} can never match on {_and(never)}: its protocol is for the other "
                f"address family than every one of its peers (DECISIONS 9)"),
                group, rid, tuple(never)))
        if self.exposed:
            pairs = {p for ps in self.exposed.values() for p in ps}
            ports = sorted({p for p, _ in pairs})
            nets = sorted({n for _, n in pairs}, key=lambda n: ":" in n)
            said = ", ".join(f"{ADMIN_PORTS[p]} (tcp {p})" for p in ports)
            out.append(Finding("open-admin-port", path, (
                f"{me} lets {' and '.join(nets)} reach {said} on {_and(_nics(self.exposed))}: "
                f"the whole internet can try to log in; name the addresses that need it"),
                group, rid, _nics(self.exposed)))
        return out


def _nics(d: dict) -> tuple[str, ...]:
    return tuple(sorted(d))


def _and(names) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


class Painting:
    """A chain's enforced decisions painted first-match per family (the plans the set
    rendering is built from), and what lint and verify ask of it: which decisions decide some
    packet, and which decide the packets a given decision matches."""

    def __init__(self, chain: Chain, groups: dict) -> None:
        self.chain = chain
        self.plans: dict[int, Plan] = plan_chain(chain, groups)  # audit rules left out
        self._starts = {f: [s[0] for s in p.segments] for f, p in self.plans.items()}
        self._points = {f: p.points() for f, p in self.plans.items()}
        self.won: set[int] = set()
        for plan in self.plans.values():
            self.won |= winners(plan)

    def segments_over(self, family: int, lo: int, hi: int) -> list[tuple[int, int, Painted]]:
        """The plan's segments that meet addresses [lo, hi], cut to them."""
        plan, starts = self.plans[family], self._starts[family]
        out = []
        k = max(bisect.bisect_right(starts, lo) - 1, 0)
        while k < len(plan.segments) and plan.segments[k][0] <= hi:
            s_lo, s_hi, row = plan.segments[k]
            if s_hi >= lo:
                out.append((max(s_lo, lo), min(s_hi, hi), row))
            k += 1
        return out

    def points_in(self, family: int, lo: int, hi: int) -> list[int]:
        """Member addresses (with rows of their own) in [lo, hi]."""
        points = self._points[family]
        return points[bisect.bisect_left(points, lo):bisect.bisect_right(points, hi)]

    def deciders(self, i: int) -> set[int]:
        """The other decisions that decide some packet decision ``i`` matches."""
        out: set[int] = set()
        for m in self.chain.decisions[i].matches:
            plan = self.plans.get(m.family)
            if plan is None:
                continue
            rects = rects_of(m)
            if m.group is not None:
                for a in plan.members.get(m.group, ()):
                    out |= _owners_over(plan.row_at(a), rects)
                continue
            for net in m.nets:
                lo, hi = int(net.network_address), int(net.broadcast_address)
                for _, _, row in self.segments_over(m.family, lo, hi):
                    out |= _owners_over(row, rects)
                for a in self.points_in(m.family, lo, hi):
                    out |= _owners_over(plan.row_at(a), rects)
        return out - {i}


def _chain_notes(doc: Document, painting: Painting,
                 per_rule: dict[tuple[str, str], _RuleNotes],
                 priority: dict[tuple[str, str], int]) -> None:
    chain = painting.chain
    first_of: dict[tuple, int] = {}
    sequential = doc.host.ordering == "sequential"
    refusing_max = 0  # the worst priority of a refusing rule so far (sequential documents)
    for i, d in enumerate(chain.decisions):
        key = d.counter
        if key.group is None or d.audit:
            continue
        notes = per_rule.setdefault((key.group, key.rule), _RuleNotes())
        same = (d.action, frozenset(d.matches))
        if d.matches and same in first_of:
            notes.duplicate[chain.nic] = chain.decisions[first_of[same]].counter
        elif d.matches:
            first_of[same] = i
        if not d.matches:
            notes.never.add(chain.nic)
            continue
        over: set[int] | None = None
        if i not in painting.won:
            over = painting.deciders(i)
            if not over:
                continue  # its peers are groups without members (now): it matches nothing
            notes.shadowed[chain.nic] = {chain.decisions[j].counter for j in over}
        if sequential and d.action == "accept":
            mine = priority[key.group, key.rule]
            refusing: set[int] = set()
            if over is not None:  # hidden wholly: by the refusing rules among its deciders
                refusing = {j for j in over if chain.decisions[j].action != "accept"}
            elif refusing_max > mine:  # in part, by refusing rules its priority would beat
                refusing = {j for j in painting.deciders(i)
                            if chain.decisions[j].action != "accept"
                            and chain.decisions[j].counter.group is not None
                            and priority[chain.decisions[j].counter.group,
                                         chain.decisions[j].counter.rule] > mine}
            if refusing:
                notes.hidden[chain.nic] = {chain.decisions[j].counter for j in refusing}
        if sequential and d.action != "accept":
            refusing_max = max(refusing_max, priority[key.group, key.rule])
        if chain.direction == "inbound" and d.action == "accept":
            exposed = _exposed(painting.plans, i, d)
            if exposed:
                notes.exposed[chain.nic] = exposed


def winners(plan: Plan) -> set[int]:
    """Owners that decide some packet somewhere in the plan (a tcp/udp port 0 is no packet)."""
    out: set[int] = set()
    rows: set[Painted] = {row for _, _, row in plan.segments}
    for a in plan.points():
        rows.add(plan.row_at(a))
    for row in rows:
        for plo, phi, vlo, vhi, o in row:
            if not (plo == phi and plo in (TCP, UDP) and vlo == vhi == 0):
                out.add(o)
    return out


def _owners_over(row: Painted, rects: tuple[Rect, ...]) -> set[int]:
    out = set()
    for plo, phi, vlo, vhi, o in row:
        if plo == phi and plo in (TCP, UDP) and vlo == vhi == 0:
            continue
        for rp_lo, rp_hi, rv_lo, rv_hi in rects:
            if plo <= rp_hi and rp_lo <= phi and vlo <= rv_hi and rv_lo <= vhi:
                out.add(o)
                break
    return out


def _exposed(plans: dict[int, Plan], i: int, d: Decision) -> set[tuple[int, str]]:
    """(admin port, "0.0.0.0/0" or "::/0") that decision ``i`` lets the world reach."""
    out = set()
    for m in d.matches:
        wide = [n for n in m.nets if n.prefixlen == 0]
        if not wide or m.family not in plans:
            continue
        for _, _, row in plans[m.family].segments:
            for plo, phi, vlo, vhi, o in row:
                if o == i and plo <= TCP <= phi:
                    out |= {(p, str(wide[0])) for p in ADMIN_PORTS if vlo <= p <= vhi}
    return out


# --- limits ----------------------------------------------------------------------------------

def limits(doc: Document) -> list[Finding]:
    """The vendor quotas of the ordering the document follows."""
    out = []
    tencent = doc.host.ordering == "sequential"
    vendor = "Tencent" if tencent else "Alibaba"
    groups_max = TENCENT_GROUPS_PER_NIC if tencent else ALIBABA_GROUPS_PER_NIC
    for k, nic in enumerate(doc.host.nics):
        n = len(nic.security_groups)
        if n > groups_max:
            out.append(Finding("vendor-limit", f"host.nics[{k}].security_groups", (
                f"{nic.name} is bound to {n} groups; {vendor} allows {groups_max} per "
                f"{'NIC' if tencent else 'ENI'}"), nics=(nic.name,)))
        if not tencent:
            rules = sum(len(doc.security_groups[g].rules) for g in nic.security_groups)
            if rules > ALIBABA_RULES_PER_NIC:
                out.append(Finding("vendor-limit", f"host.nics[{k}]", (
                    f"{nic.name}'s groups hold {rules:,} rules; Alibaba allows "
                    f"{ALIBABA_RULES_PER_NIC:,} across the groups of one ENI"), nics=(nic.name,)))
    for name, g in doc.security_groups.items():
        if tencent:
            for direction in ("inbound", "outbound"):
                n = sum(r.direction == direction for r in g.rules)
                if n > TENCENT_RULES_PER_DIRECTION:
                    out.append(Finding("vendor-limit", f"security_groups.{name}.rules", (
                        f"{name} has {n} {direction} rules; Tencent allows "
                        f"{TENCENT_RULES_PER_DIRECTION} per direction in a group"), group=name))
        elif g.type == "basic":
            refs = {p.group for r in g.rules for p in (r.peer or ()) if isinstance(p, GroupPeer)}
            if len(refs) > ALIBABA_GROUP_REFERENCES:
                out.append(Finding("vendor-limit", f"security_groups.{name}.rules", (
                    f"{name}'s rules name {len(refs)} groups as peers; Alibaba allows a "
                    f"basic group {ALIBABA_GROUP_REFERENCES}"), group=name))
    return out


def summary(findings: list[Finding]) -> str:
    if not findings:
        return "no findings"
    counts = {k: sum(f.kind == k for f in findings) for k in KINDS}
    parts = [f"{n} {k}" for k, n in counts.items() if n]
    return f"{len(findings)} finding{'s' if len(findings) != 1 else ''} ({', '.join(parts)})"

