"""Render the IR as iptables chains and ipsets, per address family (iptables, ip6tables).

``sets`` renders the plan of the nftables set rendering (:mod:`sgagent.peerclass`): the peer
address is looked up in ipsets, then a short chain decides by protocol and port.  iptables has
no verdict maps, so the lookup is a tree over a *bucket* number: the buckets of a NIC chain and
family are numbered 1..N, and ipset ``b<k>`` (``hash:net``) holds the addresses whose bucket
has bit ``k``; a node chain tests two bits and goes on to the next (nf_tables refuses chains
nested more than 16 deep).  Single addresses and group members (looked up exactly in
nftables) are /32 (/128) elements, which ``hash:net`` finds before the networks around them
(longest prefix first); where such an address lacks a bit its network has, it is a
``nomatch`` element.  A bucket is one class of peers with a chain of its own, or up to
``BUCKET_RULES`` rules of several small classes, each rule under ``-s``/``-d`` of one of its
class's networks or addresses (which never overlap within a bucket: a cheap test, no set
lookup).  Few chains matter: iptables-nft-restore takes time in the number of rules times the
number of chains (10,000 rules made 16,000 chains with a chain per class: 31 s).  ``linear``
writes one rule per match of each decision, in order (kept for comparison, as for nftables).

Every deciding rule carries its decision's identity as a comment, counts, and gives the
verdict: accept is ``RETURN`` (back to the dispatch chain, so forwarded packets are still
judged on the NIC they leave by), drop ``DROP``, reject ``REJECT``.  A decision's counter is
the sum of its rules' kernel counters (an apply carries them over to the rules that replace
them, :func:`sgagent.ipt.rules.restore_script`).  Rules are written as ``iptables-save``
prints them, so that the live chains can be compared with them.
"""

from __future__ import annotations

import bisect
import ipaddress
from dataclasses import dataclass, field

from ..allowances import DHCP_PORTS, LINK_ICMPV6
from ..flowlog.prefix import encode as log_prefix
from ..ir import Chain, CounterKey, Decision, GroupSet, LogSpec, Match, Ruleset
from ..partition import Painted, overlay
from ..peerclass import ICMP, TCP, UDP, Plan, other_protocols, plan_chain
from .names import (ROOTS, comment_of, content_chain, content_set, iface_by_set,
                    interface_problem, nic_chain, suppressed_comment)

RENDERINGS = ("sets", "linear")
FAMILIES = (4, 6)
_ADDR = {"inbound": "src", "outbound": "dst"}
_IFACE = {"inbound": "-i", "outbound": "-o"}
_ICMP = {4: ("icmp", "--icmp-type", "icmp-admin-prohibited"),
         6: ("ipv6-icmp", "--icmpv6-type", "icmp6-adm-prohibited")}
_BITS = {4: 32, 6: 128}
SNAPLEN = 128  # bytes of each logged packet sent to the reader: the IP and L4 headers
_LIMIT_UNITS = (("day", 86400), ("hour", 3600), ("min", 60), ("sec", 1))  # as libxt_limit
_LIMIT_SCALE = 10000
BUCKET_RULES = 48  # rules of the small classes sharing one bucket chain
GUARDS_MAX = 8  # networks and addresses of a class written into a shared bucket chain


class RenderError(ValueError):
    """The ruleset cannot be written for iptables (e.g. an interface name it reads as a
    pattern)."""


@dataclass(frozen=True)
class IpSet:
    type: str                  # hash:net | hash:ip
    family: int
    elements: tuple[str, ...]  # as ``ipset save`` lists them; "ADDR nomatch" for exceptions

    def create(self, name: str) -> str:
        fam = "inet" if self.family == 4 else "inet6"
        size = max(1024, len(self.elements))
        return f"create {name} {self.type} family {fam} hashsize {size} maxelem {max(65536, 2 * size)}"


@dataclass
class Tables:
    """What sgagent loads: per family, chains (name -> rules, each as ``iptables-save``
    prints it after ``-A NAME``), and the ipsets they look up."""
    chains: dict[int, dict[str, tuple[str, ...]]] = field(
        default_factory=lambda: {4: {}, 6: {}})
    sets: dict[str, IpSet] = field(default_factory=dict)
    counters: dict[str, CounterKey] = field(default_factory=dict)  # comment -> key
    suppressed: dict[str, CounterKey] = field(default_factory=dict)  # comment -> logged key

    def add_chain(self, family: int, rules: list[str] | tuple[str, ...], kind: str) -> str:
        rules = tuple(rules)
        name = content_chain(kind, rules)
        self.chains[family].setdefault(name, rules)
        return name

    def add_set(self, s: IpSet) -> str:
        name = content_set(s.type, str(s.family), *s.elements)
        self.sets.setdefault(name, s)
        return name

    def listing(self) -> list[str]:
        """Every chain and set, one line per rule and element, in an order that does not
        depend on the order they were made in (what ``diff`` and drift compare)."""
        out = []
        for family in FAMILIES:
            tool = "iptables" if family == 4 else "ip6tables"
            for name in sorted(self.chains[family]):
                out.append(f"{tool} chain {name}\n")
                out += [f"  {r}\n" for r in self.chains[family][name]]
        for name in sorted(self.sets):
            s = self.sets[name]
            out.append(f"ipset {name} {s.type} family {s.family}\n")
            out += [f"  {e}\n" for e in sorted(s.elements)]
        return out

    def text(self) -> str:
        """``iptables-restore`` and ``ipset restore`` input for a first load (what ``sgagent
        compile --backend iptables`` prints)."""
        lines = ["# ipset restore"]
        for name, s in self.sets.items():
            lines.append(s.create(name))
            lines += [f"add {name} {e}" for e in s.elements]
        for family in FAMILIES:
            lines.append(f"# {'iptables' if family == 4 else 'ip6tables'}-restore --noflush")
            lines.append("*filter")
            lines += [f":{n} - [0:0]" for n in self.chains[family]]
            for n, rules in self.chains[family].items():
                lines += [f"-A {n} {r}" for r in rules]
            lines += [f"-I {hook} 1 -j {root}" for hook, root in ROOTS.items()]
            lines.append("COMMIT")
        return "\n".join(lines) + "\n"


def render(rs: Ruleset, rendering: str = "sets") -> Tables:
    if rendering not in RENDERINGS:
        raise ValueError(f"unknown rendering {rendering!r} (one of {', '.join(RENDERINGS)})")
    for chain in rs.chains:
        problem = interface_problem(chain.nic)
        if problem:
            raise RenderError(f"host.nics: {chain.nic!r} cannot be matched exactly by "
                              f"iptables: {problem}")
    t = Tables()
    groups = {g.name: g for g in rs.groups}
    for chain in rs.chains:
        plans = plan_chain(chain, groups) if rendering == "sets" else None
        for family in FAMILIES:
            r = _ChainRenderer(t, chain, family, groups)
            body = r.lookup(plans[family]) if plans else r.linear()
            t.chains[family][nic_chain(chain.nic, chain.direction)] = \
                tuple(preamble(chain.direction, family) + r.audit_stages() + body)
    # Decisions no rule renders (painted over everywhere by those before them) still have a
    # counter, at zero: a chain nothing jumps to holds a rule with their comment each.
    missing = [k for c in rs.chains for k in c.counters if comment_of(k) not in t.counters]
    if missing:
        rules = [f"-m comment --comment {comment_of(k)} -j RETURN" for k in missing]
        t.add_chain(4, rules, "z")
        t.counters.update((comment_of(k), k) for k in missing)
    # so do logged decisions whose log chain nothing reaches: their suppressed counter
    gone = [k for c in rs.chains for k, _ in logged(c)
            if suppressed_comment(k) not in t.suppressed]
    if gone:
        t.add_chain(4, [f"-m comment --comment {suppressed_comment(k)} -j RETURN"
                        for k in gone], "z")
        t.suppressed.update((suppressed_comment(k), k) for k in gone)
    for family in FAMILIES:
        for hook, dirs in (("INPUT", ["inbound"]), ("FORWARD", ["inbound", "outbound"]),
                           ("OUTPUT", ["outbound"])):
            t.chains[family][ROOTS[hook]] = tuple(
                f"{_interface(t, c.nic, c.direction, family)} -j {nic_chain(c.nic, c.direction)}"
                for d in dirs for c in rs.chains if c.direction == d)
    return t


def _interface(t: Tables, nic: str, direction: str, family: int) -> str:
    """The match of the packet's interface: ``-i``/``-o``, or for a name iptables would read
    as a pattern (a trailing '+') an ipset holding the name, which ipset compares whole
    (its second dimension: the incoming interface for ``src``, the outgoing for ``dst``)."""
    if not iface_by_set(nic):
        return f"{_IFACE[direction]} {nic}"
    s = t.add_set(IpSet("hash:net,iface", family,
                        (f"{'0.0.0.0/0' if family == 4 else '::/0'},{nic}",)))
    d = _ADDR[direction]
    return f"-m set --match-set {s} {d},{d}"


def logged(chain: Chain) -> list[tuple[CounterKey, LogSpec]]:
    """The chain's logged decisions, with their log: a default's log also reports what inner
    access accepts (both are what the default decides)."""
    out = [(d.counter, d.log) for d in chain.decisions if d.log is not None]
    if chain.default.log is not None:
        if chain.inner_counter is not None:
            out.append((chain.inner_counter, chain.default.log))
        out.append((chain.default.counter, chain.default.log))
    return out


def limit_match(log: LogSpec) -> str:
    """``-m limit`` as ``iptables-save`` prints it: the rate in the largest unit that keeps
    it whole (libxt_limit's print_rate), the burst only where it is not the default 5."""
    period = _LIMIT_SCALE * dict(second=1, minute=60, hour=3600)[log.unit] // log.rate
    if period == 0:
        raise RenderError(f"log_rate {log.rate}/{log.unit} is too fast for iptables' limit")
    i = 1
    while i < len(_LIMIT_UNITS):
        mult = _LIMIT_UNITS[i][1] * _LIMIT_SCALE
        if period > mult or mult // period < mult % period:
            break
        i += 1
    name, secs = _LIMIT_UNITS[i - 1]
    burst = f" --limit-burst {log.burst}" if log.burst != 5 else ""
    return f"-m limit --limit {secs * _LIMIT_SCALE // period}/{name}{burst}"


def preamble(direction: str, family: int) -> list[str]:
    """State and the always-allowed traffic of SEMANTICS sections 4 and 5."""
    client, server = DHCP_PORTS[family]
    sport, dport = (server, client) if direction == "inbound" else (client, server)
    rules = ["-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
             f"-p udp -m udp --sport {sport} --dport {dport} -j RETURN"]
    if family == 6:
        rules += [f"-p ipv6-icmp -m icmp6 --icmpv6-type {t} -j RETURN" for t in sorted(LINK_ICMPV6)]
    rules.append("-m conntrack --ctstate INVALID -j DROP")
    return rules


class _ChainRenderer:
    def __init__(self, t: Tables, chain: Chain, family: int, groups: dict[str, GroupSet]):
        self.t, self.chain, self.family, self.groups = t, chain, family, groups
        self.addr = _ADDR[chain.direction]
        self._tail: str | None = None
        self.logs = dict(logged(chain))

    # -- counting and the tail ---------------------------------------------------------------
    def verdict(self, key: CounterKey, action: str, proto: str | None, addr: str = "",
                rest: str = "") -> list[str]:
        """Rules matching ``addr`` (-s/-d), then ``proto`` and ``rest``, counting under the
        decision's comment and giving its verdict: accept returns to the dispatch chain
        (forwarded packets are still judged on the NIC they leave by), reject answers tcp
        with a reset and anything else with admin-prohibited (``proto`` None: both rules)."""
        c = comment_of(key)
        self.t.counters[c] = key
        c = f"-m comment --comment {c}"

        def rule(p: str | None, target: str) -> str:
            p = None if p == "*" else p  # "*": what is left after tcp, udp and ICMP
            return " ".join(x for x in (addr, p and f"-p {p}", rest, c, target) if x)
        if key.mode == "audit":  # counts, reports "would ...", decides nothing
            return [rule(proto, f"-j {self.log_chain(key, action)}")]
        if key in self.logs:
            return [rule(proto, f"-g {self.log_chain(key, action)}")]
        if action == "accept":
            return [rule(proto, "-j RETURN")]
        if action == "drop":
            return [rule(proto, "-j DROP")]
        icmp = f"-j REJECT --reject-with {_ICMP[self.family][2]}"
        if proto == "tcp":
            return [rule(proto, "-j REJECT --reject-with tcp-reset")]
        if proto is None:
            return [rule("tcp", "-j REJECT --reject-with tcp-reset"), rule(None, icmp)]
        return [rule(proto, icmp)]

    def targets(self, action: str) -> list[str]:
        """The verdict of a log chain, for any protocol: reject answers tcp with a reset
        first, anything else with admin-prohibited."""
        if action == "accept":
            return ["-j RETURN"]
        if action == "drop":
            return ["-j DROP"]
        return ["-p tcp -j REJECT --reject-with tcp-reset",
                f"-j REJECT --reject-with {_ICMP[self.family][2]}"]

    def log_chain(self, key: CounterKey, action: str) -> str:
        """A logged decision's chain (SEMANTICS section 9): under its rate limit (evaluated
        once per packet) the packet goes on to a chain that sends it to the NFLOG group with
        the decision's tag and decides; over it, a rule carrying the decision's suppressed
        comment counts it and decides."""
        log = self.logs[key]
        prefix = log_prefix(key)
        if '"' in prefix or "\\" in prefix:
            raise RenderError(f"{key.nic} {key.direction}: the flow log tag {prefix!r} cannot "
                              f"be written for iptables")
        nflog = (f'-j NFLOG --nflog-prefix "{prefix}"'
                 + (f" --nflog-group {log.group}" if log.group else "")
                 + f" --nflog-size {SNAPLEN}")
        # an audit decision's chains end without a verdict: back to the rule that jumped
        verdict = [] if key.mode == "audit" else self.targets(action)
        report = self.t.add_chain(self.family, [nflog, *verdict], "f")
        s = suppressed_comment(key)
        self.t.suppressed[s] = key
        rules = [f"{limit_match(log)} -g {report}",
                 *(_with(v, f"-m comment --comment {s}")
                   for v in verdict or ["-j RETURN"])]
        return self.t.add_chain(self.family, rules, "l")

    def member_set(self, group: str) -> str:
        g = self.groups.get(group)
        addrs = (g.v4 if self.family == 4 else g.v6) if g else ()
        return self.t.add_set(IpSet("hash:ip", self.family, tuple(sorted(map(str, set(addrs))))))

    def tail(self) -> str:
        """Inner access, then the default."""
        if self._tail is None:
            ch = self.chain
            rules = []
            if ch.inner_counter is not None:
                # as nftables: inner access looks at the source, in either direction
                for g in ch.inner_access:
                    rules += self.verdict(ch.inner_counter, "accept", None,
                                          rest=f"-m set --match-set {self.member_set(g)} src")
            rules += self.verdict(ch.default.counter, ch.default.action, None)
            self._tail = self.t.add_chain(self.family, rules, "t")
        return self._tail

    def decide(self, owner: int | None, proto: str | None, rest: str = "") -> list[str]:
        """What decides a box of a class chain: the owner's verdict, or (None) the tail."""
        if owner is None:
            return [" ".join(x for x in (proto and f"-p {proto}", rest, f"-g {self.tail()}")
                             if x)]
        d = self.chain.decisions[owner]
        return self.verdict(d.counter, d.action, proto, rest=rest)

    # -- sets -------------------------------------------------------------------------------
    def lookup(self, plan: Plan) -> list[str]:
        """Look the peer up: the bucket number's bits in ipsets, then the bucket chain.  A
        class is a row, or -- for a single address inside a range -- the row where it differs
        from the range's, then the range's class (as nftables' overlay chains).  A bucket is
        one class with its own chain, or several small classes whose rules are written one
        after the other, each under ``-s``/``-d`` of its own networks and addresses."""
        points = sorted(set(plan.singles()) | set(plan.points()))
        intervals = plan.intervals()
        index: dict[tuple, int] = {}
        ranges = [(lo, hi, self._number(index, (row, ()))) for lo, hi, row in intervals]
        starts = [lo for lo, _, _ in intervals]
        points_out = []  # (address, class, class of the range around it)
        for a in points:
            i = bisect.bisect_right(starts, a) - 1
            inside = i >= 0 and intervals[i][1] >= a
            base = intervals[i][2] if inside else ()
            row = plan.row_at(a)
            n = self._number(index, (row, base) if row != base else (row, ()))
            points_out.append((ntoa(a, self.family), n, ranges[i][2] if inside else 0))
        if not index:
            return [f"-g {self.tail()}"]
        nets = [cidrs(lo, hi, self.family) for lo, hi, _ in ranges]  # once for every use
        guards: dict[int, list[str]] = {}  # class -> its networks and addresses
        for (_, _, n), ns in zip(ranges, nets):
            guards.setdefault(n, []).extend(ns)
        for addr, n, around in points_out:
            if n and n != around:  # (a point of its range's class is in the range's nets)
                guards.setdefault(n, []).append(addr)
        bucket = self._buckets(index, guards)
        # the peers' own networks, each with the bucket of what it alone covers
        tree = self._prefixes(plan, set(points))
        own = [bucket.get(index.get((row, ()), 0), 0) if row is not None else None
               for _, _, _, row, _ in tree]
        top = max(bucket.values())
        bits = top.bit_length()
        point_class = {a: n for a, (_, n, _) in zip(points, points_out)}
        sets = [self._bit_set(k, tree, own, point_class, bucket) for k in range(bits)]
        # an odd number of bits: the root tests one, every node below two
        return [f"-g {self._node(bits - 1, 0, sets, self._leaves, top, one=bits % 2 == 1)}"]

    def _buckets(self, index: dict[tuple, int], guards: dict[int, list[str]]) -> dict[int, int]:
        """Number the buckets (1..M) and make their chains (``self._leaves``): class -> bucket.
        Classes without a base first (an overlay class goes on to its base's bucket), each
        kind in buckets of its own, so the networks of one bucket never overlap: a packet
        matches the guards of its own class only, and what none of its rules decides goes on
        (to the tail, or from an overlay class's last rules to its base's chain)."""
        self._leaves: dict[int, str] = {}
        out: dict[int, int] = {}
        flag = "-s" if self.addr == "src" else "-d"
        of_base: dict[Painted, str] = {}  # a base row -> the chain deciding its class
        for overlays in (False, True):
            pending: list[str] = []
            members: list[int] = []

            def close() -> None:
                if members:
                    b = len(self._leaves) + 1
                    self._leaves[b] = self.t.add_chain(
                        self.family, pending + [f"-g {self.tail()}"], "b")
                    out.update((m, b) for m in members)
                    if not overlays:
                        of_base.update((keys[m][0], self._leaves[b]) for m in members)
                    pending.clear()
                    members.clear()
            keys = {n: key for key, n in index.items() if bool(key[1]) == overlays}
            for n in sorted(keys):
                row, base = keys[n]
                gs = [g if "/" in g else f"{g}/{_BITS[self.family]}" for g in guards.get(n, ())]
                after = of_base[base] if overlays else self.tail()
                rules = self.class_rules(overlay(row, base) if overlays else row, after)
                body = rules if overlays else rules[:-1]  # the bucket's last rule: -g tail
                if len(gs) > GUARDS_MAX or len(gs) * len(body) > BUCKET_RULES // 2:
                    chain = self.t.add_chain(self.family, rules, "k")
                    b = len(self._leaves) + 1
                    self._leaves[b] = chain
                    out[n] = b
                    if not overlays:
                        of_base[row] = chain
                    continue
                if len(pending) + len(gs) * len(body) > BUCKET_RULES:
                    close()
                pending += [f"{flag} {g} {r}" for g in gs for r in body]
                members.append(n)
            close()
        return out

    @staticmethod
    def _number(index: dict[tuple, int], key: tuple) -> int:
        if not key[0] and not key[1]:
            return 0
        return index.setdefault(key, len(index) + 1)

    def _prefixes(self, plan: Plan, points: set[int]) -> list[tuple]:
        """The networks the chain's rules name (a /0 as its two halves), parents before
        children: (lo, hi, text, row of the addresses it covers and
        none inside it does -- None if there are none but points --, index of its parent or
        -1).  All those addresses have one row: the same networks of the rules cover them."""
        nets: set[tuple[int, int]] = set()
        for d in self.chain.decisions:
            if d.audit:
                continue
            for m in d.matches:
                if m.family != self.family or m.group is not None:
                    continue
                for n in m.nets:
                    for sub in (n.subnets(1) if n.prefixlen == 0 else (n,)):
                        nets.add((int(sub.network_address), sub.prefixlen))
        width = _BITS[self.family]
        order = sorted(nets)  # by start, then the wider first: parents before children
        out: list[tuple] = []
        children: list[list[int]] = []
        stack: list[int] = []
        for lo, plen in order:
            hi = lo + (1 << (width - plen)) - 1
            while stack and out[stack[-1]][1] < lo:
                stack.pop()
            parent = stack[-1] if stack else -1
            if parent >= 0:
                children[parent].append(len(out))
            out.append((lo, hi, f"{ntoa(lo, self.family)}/{plen}", None, parent))
            children.append([])
            stack.append(len(out) - 1)
        for i, (lo, hi, text, _, parent) in enumerate(out):
            a = lo  # an address of its own that is no point
            for c in children[i] + [None]:
                end = out[c][0] - 1 if c is not None else hi
                while a <= end and a in points:
                    a += 1
                if a <= end:
                    out[i] = (lo, hi, text, plan.interval_row(a), parent)
                    break
                if c is not None:
                    a = max(a, out[c][1] + 1)
        return out

    def _bit_set(self, k: int, tree: list[tuple], own: list, points: dict[int, int],
                 bucket: dict[int, int]) -> str:
        """The addresses whose bucket has bit ``k``: a network where its bit differs from
        what the network around it answers (as such, or ``nomatch``), and so each single
        address (``hash:net`` answers with the longest prefix holding the address)."""
        elements = []
        answer: list[int] = []  # per network: what the set answers inside it
        for (lo, hi, text, _, parent), b in zip(tree, own):
            around = answer[parent] if parent >= 0 else 0
            mine = around if b is None else b >> k & 1
            if mine != around:
                elements.append(text if mine else f"{text} nomatch")
            answer.append(mine)
        starts = [lo for lo, _, _, _, _ in tree]
        for a, n in points.items():
            i = bisect.bisect_right(starts, a) - 1
            while i >= 0 and tree[i][1] < a:  # the innermost network holding it
                i = tree[i][4]
            around = answer[i] if i >= 0 else 0
            mine = bucket.get(n, 0) >> k & 1
            if mine != around:
                addr = ntoa(a, self.family)
                elements.append(addr if mine else f"{addr} nomatch")
        return self.t.add_set(IpSet("hash:net", self.family, tuple(sorted(elements))))

    def _node(self, k: int, value: int, sets: list[str], leaves: dict[int, str],
              top: int, one: bool = False) -> str:
        """The chain deciding bits k..0 of the bucket number, bits above being ``value``:
        bit k alone (``one``), else bits k and k - 1."""
        if k < 0:
            return leaves.get(value) or self.tail()
        if one or k == 0:
            rules = []
            if value | 1 << k <= top:
                rules.append(f"-m set --match-set {sets[k]} {self.addr} "
                             f"-g {self._node(k - 1, value | 1 << k, sets, leaves, top)}")
            rules.append(f"-g {self._node(k - 1, value, sets, leaves, top)}")
        else:
            # two bits per node: nf_tables refuses chains more than 16 jumps deep, so the
            # tree is kept shallow (at most 3 set lookups per 2 bits)
            hi, lo = f"-m set --match-set {sets[k]} {self.addr}", \
                f"-m set --match-set {sets[k - 1]} {self.addr}"
            b = 1 << (k - 1)
            rules = [f"{m} -g {self._node(k - 2, v, sets, leaves, top)}".lstrip()
                     for v, m in ((value | 1 << k | b, f"{hi} {lo}"), (value | 1 << k, hi),
                                  (value | b, lo), (value, "")) if v <= top]
        if len(rules) == 1:
            return rules[0][3:]
        return self.t.add_chain(self.family, rules, "n")

    def class_chain(self, row: Painted) -> str:
        return self.t.add_chain(self.family, self.class_rules(row), "k")

    def class_rules(self, row, after: str | None = None) -> list[str]:
        """Decide by protocol and port or ICMP type; what no box covers goes on to ``after``
        (the tail by default).  A box's owner None: the tail."""
        after = after or self.tail()
        icmp = ICMP[self.family]
        l4 = _ICMP[self.family][0]
        tcpudp: list[str] = []
        icmps: list[str] = []
        other: dict[int | None, list[tuple[int, int]]] = {}
        for plo, phi, vlo, vhi, owner in row:
            for p in (TCP, UDP, icmp):
                if not plo <= p <= phi:
                    continue
                if p == icmp:
                    if (vlo, vhi) == (0, 255):
                        icmps += self.decide(owner, l4)
                    else:
                        for m in icmp_matches(self.family, vlo, vhi):
                            icmps += self.decide(owner, l4, m)
                else:
                    name = "tcp" if p == TCP else "udp"
                    if (vlo, vhi) == (0, 65535):
                        tcpudp += self.decide(owner, name)
                    else:
                        port = str(vlo) if vlo == vhi else f"{vlo}:{vhi}"
                        tcpudp += self.decide(owner, name, f"-m {name} --dport {port}")
            for lo, hi in _others(plo, phi, icmp):
                other.setdefault(owner, []).append((lo, hi))
        rules = tcpudp + icmps
        if other:
            rules += [f"-p {p} -g {after}" for p in ("tcp", "udp", l4)]
            full = other_protocols(self.family)
            for owner, spans in other.items():
                if sorted(spans) == full:
                    # every other protocol: nothing else is left here (reject: admin-prohibited)
                    rules += self.decide(owner, None) if owner is None else \
                        self.verdict(self.chain.decisions[owner].counter,
                                     self.chain.decisions[owner].action, "*")
                    break
                # protocol 0 cannot be named to iptables (-p 0 is any protocol)
                for lo, hi in spans:
                    for p in range(max(lo, 1), hi + 1):
                        rules += self.decide(owner, str(p))
        rules.append(f"-g {after}")
        return rules

    # -- linear -----------------------------------------------------------------------------
    def linear(self) -> list[str]:
        rules = []
        for d in self.chain.decisions:
            if d.audit:  # never decides: see audit_stages
                continue
            for m in d.matches:
                if m.family == self.family:
                    rules += self._match_rules(m, d)
        return rules + [f"-g {self.tail()}"]

    # -- audit rules ------------------------------------------------------------------------
    def audit_stages(self) -> list[str]:
        """A jump per audit decision (SEMANTICS section 9), in the chain's order, before the
        lookup: its stage chain returns on what an enforced decision before it would decide
        (uncounted), and goes on, for what it matches, to a chain that counts it once and
        jumps to its log chain ("would ..."); either way evaluation goes on in the NIC
        chain, which decides as if the audit rule were not there."""
        out = []
        for i, d in enumerate(self.chain.decisions):
            if not d.audit:
                continue
            own = [r for m in d.matches if m.family == self.family
                   for r in self._match_rules(m, d, lambda: ["-g HIT"])]
            if not own:
                continue  # nothing of this family: its counter is made as any unrendered one
            hit = self.t.add_chain(self.family, self.verdict(d.counter, d.action, None), "a")
            rules = [r for e in self.chain.decisions[:i] if not e.audit for m in e.matches
                     if m.family == self.family
                     for r in self._match_rules(m, e, lambda: ["-j RETURN"])]
            rules += [r[:-len("HIT")] + hit for r in own]
            out.append(f"-j {self.t.add_chain(self.family, rules, 'a')}")
        return out

    def _match_rules(self, m: Match, d: Decision, target=None) -> list[str]:
        flag = "-s" if self.addr == "src" else "-d"
        if m.group is not None:
            peers = [("", f"-m set --match-set {self.member_set(m.group)} {self.addr}")]
        else:
            peers = [("" if n.prefixlen == 0 else f"{flag} {n.with_prefixlen}", "")
                     for n in m.nets]
        l4 = _ICMP[self.family][0]
        if m.proto is None:
            protos: list[tuple[str | None, str]] = [(None, "")]
        elif m.proto in ("tcp", "udp"):
            protos = [(m.proto, "")] if m.ports is None else \
                [(m.proto, f"-m {m.proto} --dport {lo if lo == hi else f'{lo}:{hi}'}")
                 for lo, hi in m.ports]
        elif m.proto in ("icmp", "icmpv6"):
            if (m.proto == "icmp") != (self.family == 4):
                return []
            protos = [(l4, "")] if m.icmp_type is None else \
                [(l4, x) for x in icmp_matches(self.family, m.icmp_type, m.icmp_type)]
        else:
            protos = [(m.proto, "")]
        if target is not None:  # the rule's matches, then the targets ``target`` gives
            return [" ".join(x for x in (addr, proto and f"-p {proto}", port, peer, t) if x)
                    for addr, peer in peers for proto, port in protos for t in target()]
        return [r for addr, peer in peers for proto, port in protos
                for r in self.verdict(d.counter, d.action, proto, addr,
                                      " ".join(x for x in (port, peer) if x))]


def _with(rule: str, match: str) -> str:
    """``rule`` with ``match`` added where iptables-save prints it: after -p."""
    if rule.startswith("-p "):
        p, _, rest = rule[3:].partition(" ")
        return f"-p {p} {match} {rest}"
    return f"{match} {rule}"


def icmp_matches(family: int, lo: int, hi: int) -> list[str]:
    """The matches of ICMP types ``lo``..``hi`` (not all 256), one per rule, as
    ``iptables-save`` prints them.  iptables' icmp match takes type 255 for any type (and
    prints it back as ``any``), so IPv4 names a range, or 255, by the u32 match: the type
    byte at the end of the IP header (its length from IHL), of a first fragment only (the
    icmp match skips the others, as nftables' ``icmp type`` does); a single type below 255
    stays the icmp match.  ip6tables' icmp6 match compares 255 as a type, and u32 reads a
    fixed offset where extension headers move the ICMPv6 header, so IPv6 keeps one icmp6
    rule per type."""
    if family == 6:
        return [f"-m icmp6 --icmpv6-type {t}" for t in range(lo, hi + 1)]
    if lo == hi < 255:
        return [f"-m icmp --icmp-type {lo}"]
    value = f"{lo:#x}" if lo == hi else f"{lo:#x}:{hi:#x}"
    return [f'-m u32 --u32 "0x4&0x1fff=0x0&&0x0>>0x16&0x3c@0x0>>0x18={value}"']


def _others(plo: int, phi: int, icmp: int):
    """The parts of a protocol range other than tcp, udp and the family's ICMP."""
    lo = plo
    for c in sorted({TCP, UDP, icmp}):
        if c < lo or c > phi:
            continue
        if lo < c:
            yield lo, c - 1
        lo = c + 1
    if lo <= phi:
        yield lo, phi


def ntoa(a: int, family: int) -> str:
    return str(ipaddress.ip_address(a) if family == 4 else ipaddress.IPv6Address(a))


def cidrs(lo: int, hi: int, family: int) -> list[str]:
    """[lo, hi] as networks; ``hash:net`` takes no /0, so the whole space is two halves."""
    ip = ipaddress.IPv4Address if family == 4 else ipaddress.IPv6Address
    out = []
    for net in ipaddress.summarize_address_range(ip(lo), ip(hi)):
        if net.prefixlen == 0:
            out += [str(s) for s in net.subnets(1)]
        elif net.prefixlen == _BITS[family]:
            out.append(str(net.network_address))
        else:
            out.append(str(net))
    return out
