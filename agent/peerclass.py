"""Peer classes: for every peer address of a chain, which decision decides each packet.

A chain's decisions are resolved, per address family, into a *plan*: the address axis cut into
disjoint pieces, each carrying a *row* -- the first-match painting of the (protocol x value)
plane by the decisions whose peers cover that piece (:mod:`sgagent.partition`).  Pieces with
the same row form one class.  A renderer looks the packet's peer address up once (which piece,
hence which row) and then its protocol and port or ICMP type once (which decision), so the
per-packet cost does not grow with the number of rules.

Literal peers (addresses and networks) are swept once into *segments*.  A group peer covers the
group's current members, which are points.  A renderer looks a peer up in two steps: exactly
(a hash of single addresses: single-address segments and member points, where a member's row
is its segment's row painted together with the rules of its groups), then by interval (the
longer segments).  A membership change therefore changes only the exact entries of the
changed points, whatever the number of rules.  Pure and backend-neutral.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from .ir import Chain, GroupSet, Match
from .partition import Entry, Painted, Rect, merge_spans, paint, resweep, sweep

TCP, UDP = 6, 17
ICMP = {4: 1, 6: 58}
ADDR_MAX = {4: 2**32 - 1, 6: 2**128 - 1}
PROTO_NUMBERS = {"tcp": TCP, "udp": UDP, "gre": 47, "icmp": 1, "icmpv6": 58}
GROUP_LOOKUPS_MAX = 8  # groups as peers in one chain and family, each a member-set lookup
WIDE = {4: 2**16, 6: 2**64}  # addresses a row of the interval lookup covers to count as wide

Piece = tuple[int, int, Painted]


@dataclass
class Plan:
    """One chain's peers in one family: literal segments, group rules and members."""
    family: int
    segments: list[Piece]                                   # sorted, disjoint, rows non-empty
    group_items: dict[str, tuple[tuple[int, tuple[Rect, ...]], ...]]  # group -> (owner, rects)
    members: dict[str, frozenset[int]]                      # group -> member addresses
    entries: list[Entry] = field(default_factory=list, repr=False)  # what segments sweep
    rendered: dict = field(default_factory=dict, repr=False, compare=False)
    #        a renderer's record of what it made of this plan's rows, which the renderer of
    #        the chain's next plan may take where the rows' decisions did not change
    _starts: list[int] = field(default_factory=list, repr=False)
    _rows: dict[tuple, Painted] = field(default_factory=dict, repr=False)
    _intervals: list[Piece] | None = field(default=None, repr=False)
    _wide: frozenset | None = field(default=None, repr=False)
    _interval_starts: list[int] = field(default_factory=list, repr=False)
    spans: list | None = field(default=None, repr=False, compare=False)
    #        where a re-plan swept the addresses again (None: planned afresh); elsewhere the
    #        segments are the prior plan's
    maps: dict = field(default_factory=dict, repr=False, compare=False)
    #        a renderer's record of the address maps it made of this plan, which the renderer
    #        of the chain's next plan may patch where its addresses did not change

    def __post_init__(self) -> None:
        if not self._starts:
            self._starts = [s[0] for s in self.segments]

    # -- lookups --------------------------------------------------------------------------
    def segment_at(self, a: int) -> Piece | None:
        k = bisect.bisect_right(self._starts, a) - 1
        if k >= 0 and self.segments[k][1] >= a:
            return self.segments[k]
        return None

    def groups_of(self, a: int) -> tuple[str, ...]:
        return tuple(g for g, ms in self.members.items() if a in ms)

    def points(self) -> list[int]:
        out: set[int] = set()
        for ms in self.members.values():
            out |= ms
        return sorted(out)

    def row_at(self, a: int) -> Painted:
        seg = self.segment_at(a)
        return self.point_row(seg[2] if seg else (), self.groups_of(a))

    def point_row(self, base: Painted, groups: tuple[str, ...]) -> Painted:
        """A member point's row: its segment's painting with its groups' rules (cached)."""
        if not groups:
            return base
        key = (base, groups)
        row = self._rows.get(key)
        if row is None:
            items = [(o, ((plo, phi, vlo, vhi),)) for plo, phi, vlo, vhi, o in base]
            for g in groups:
                items.extend(self.group_items[g])
            row = self._rows[key] = paint(items)
        return row

    def decide(self, a: int, proto: int, value: int) -> int | None:
        """The owner (decision index) that decides this packet, or None, as a renderer of the
        plan decides it (an exact lookup of the address, else by interval)."""
        for plo, phi, vlo, vhi, o in self.lookup(a):
            if plo <= proto <= phi and vlo <= value <= vhi:
                return o
        return None

    # -- what a renderer loads ----------------------------------------------------------
    def singles(self) -> dict[int, Painted]:
        return {lo: row for lo, hi, row in self.segments if lo == hi}

    def exact(self) -> dict[int, Painted]:
        """Addresses looked up exactly (a hash): single-address segments and member points,
        each with its row; empty rows left out."""
        out = {}
        for a in sorted(set(self.singles()) | set(self.points())):
            row = self.exact_row(a)
            if row:
                out[a] = row
        return out

    @property
    def group_lookups(self) -> bool:
        """Whether a member of one group that is no single address of a rule, and lies in no
        network or in a *wide* row (:meth:`wide_rows`), is found through its group's member
        set instead of the exact map: then adding or removing it changes only the member set,
        whose elements are plain addresses (elements jumping to chains make the kernel check
        the whole table's chain graph for loops at commit: milliseconds in a large table).  Used
        while the groups are few, as each costs such a packet one set lookup."""
        return len(self.group_items) <= GROUP_LOOKUPS_MAX

    def wide_rows(self) -> frozenset:
        """Rows of the interval lookup that cover many addresses (0.0.0.0/0, 10.0.0.0/8...):
        their class chains check the member sets first.  Members do not change them."""
        if self._wide is None:
            total: dict[Painted, int] = {}
            for lo, hi, row in self.intervals():
                total[row] = total.get(row, 0) + hi - lo + 1
            self._wide = frozenset(r for r, n in total.items() if n >= WIDE[self.family])
        return self._wide

    def exact_row(self, a: int) -> Painted:
        """The row of ``a`` if it is looked up exactly (else ``()``)."""
        seg = self.segment_at(a)
        groups = self.groups_of(a)
        if not groups and not (seg and seg[0] == seg[1]):
            return ()
        if len(groups) == 1 and self.group_lookups and (
                seg is None or seg[0] != seg[1] and self.interval_row(a) in self.wide_rows()):
            return ()  # found through its group's member set
        return self.point_row(seg[2] if seg else (), groups)

    def intervals(self) -> list[Piece]:
        """Addresses looked up by interval, after the exact lookup missed: the segments of more
        than one address; neighbours with the same row are merged across runs of
        single-address segments between them (those are always found exactly first).  Member
        points never cut them, so membership never changes this lookup.  (Made once; the
        list is the plan's own: not to be changed.)"""
        if self._intervals is not None:
            return self._intervals
        out: list[Piece] = []
        reach: int | None = None  # covered without a gap since the last piece began
        for lo, hi, row in self.segments:
            if lo == hi:
                reach = lo if reach is not None and reach + 1 == lo else None
                continue
            if out and out[-1][2] == row and reach is not None and reach + 1 == lo:
                out[-1] = (out[-1][0], hi, row)
            else:
                out.append((lo, hi, row))
            reach = hi
        self._intervals = out
        self._interval_starts = [p[0] for p in out]
        return out

    def interval_row(self, a: int) -> Painted:
        """The row the interval lookup finds for ``a`` (``()`` if none)."""
        if self._intervals is None:
            self.intervals()
        k = bisect.bisect_right(self._interval_starts, a) - 1
        if k >= 0 and self._intervals[k][1] >= a:
            return self._intervals[k][2]
        return ()

    def lookup(self, a: int) -> Painted:
        """The row a renderer of the plan finds for ``a``: exactly; else by interval, where a
        wide row's chain first checks the member sets; else in the member sets."""
        row = self.exact_row(a)
        if row:
            return row
        row = self.interval_row(a)
        if row and row not in self.wide_rows():
            return row
        if self.group_lookups:
            for g, ms in self.members.items():
                if a in ms:
                    return self.point_row(row, (g,))
        return row

    def with_members(self, members: dict[str, frozenset[int]]) -> "Plan":
        """The same plan with other members (rules unchanged); the row cache is shared."""
        return Plan(self.family, self.segments, self.group_items, members, self.entries,
                    self.rendered, self._starts, self._rows, self._intervals, self._wide,
                    self._interval_starts)


def plan_chain(chain: Chain, groups: dict[str, GroupSet], audits: bool = False,
               prior: dict[int, Plan] | None = None,
               stale: frozenset[int] = frozenset()) -> dict[int, Plan]:
    """The chain's plan per family: of its enforced decisions, or with ``audits`` of all of
    them (an audit stage's plan, where audit decisions are painted in their place).

    With ``prior``, the plans of this chain before an edit that changed only the decisions
    numbered in ``stale`` (the same number of decisions, every other one equal): their
    entries are taken as they are and the address axis is swept again only where a stale
    decision's peers lie, before or after (:func:`sgagent.partition.resweep`).  The result is
    exactly that of planning afresh."""
    out = {}
    for family in (4, 6):
        old = prior.get(family) if prior is not None else None
        if old is not None and not old.entries and old.segments:
            old = None  # made without its entries: planned afresh
        entries: list[Entry] = []
        group_items: dict[str, list[tuple[int, tuple[Rect, ...]]]] = {}
        for owner, decision in enumerate(chain.decisions):
            if decision.audit and not audits:  # never decides: rendered in an audit stage
                continue
            for m in decision.matches:
                if m.family != family:
                    continue
                if m.group is None and old is not None and owner not in stale:
                    continue  # its entries are the prior plan's
                rects = rects_of(m)
                if not rects:
                    continue
                if m.group is None:
                    addrs = tuple((int(n.network_address), int(n.broadcast_address))
                                  for n in m.nets)
                    entries.append(Entry(owner, addrs, rects))
                else:
                    group_items.setdefault(m.group, []).append((owner, rects))
        members = {}
        for g in group_items:
            gs = groups.get(g)
            addrs = (gs.v4 if family == 4 else gs.v6) if gs else ()
            members[g] = frozenset(int(a) for a in addrs)
        items = {g: tuple(i) for g, i in group_items.items()}
        if old is None:
            out[family] = Plan(family, sweep(entries), items, members, entries)
            continue
        spans = merge_spans([r for e in (*entries, *(e for e in old.entries if e.owner in stale))
                             for r in e.addrs])
        if entries or spans:
            kept = [e for e in old.entries if e.owner not in stale]
            entries = sorted(kept + entries, key=lambda e: e.owner)  # stable: matches' order
        else:
            entries = old.entries
        segments = resweep(old.segments, entries, spans) if spans else old.segments
        plan = Plan(family, segments, items, members, entries, spans=spans)
        if items == old.group_items and len(old._rows) <= 2 * len(segments) + 256:
            plan._rows = old._rows  # a function of the rows and the items (bounded: no leak)
        out[family] = plan
    return out


def rects_of(m: Match) -> tuple[Rect, ...]:
    """A match's rectangles in the (protocol x value) plane of its family."""
    icmp = ICMP[m.family]
    if m.proto is None:
        out: list[Rect] = [(TCP, TCP, 0, 65535), (UDP, UDP, 0, 65535), (icmp, icmp, 0, 255)]
        out += [(lo, hi, 0, 0) for lo, hi in other_protocols(m.family)]
        return tuple(out)
    if m.proto in ("tcp", "udp"):
        p = PROTO_NUMBERS[m.proto]
        return tuple((p, p, lo, hi) for lo, hi in (m.ports or ((0, 65535),)))
    if m.proto in ("icmp", "icmpv6"):
        if PROTO_NUMBERS[m.proto] != icmp:
            return ()
        t = (m.icmp_type, m.icmp_type) if m.icmp_type is not None else (0, 255)
        return ((icmp, icmp) + t,)
    p = PROTO_NUMBERS[m.proto]
    return ((p, p, 0, 0),)


def other_protocols(family: int) -> list[tuple[int, int]]:
    """0..255 without tcp, udp and the family's ICMP, whose values are ports and types."""
    cuts = sorted({TCP, UDP, ICMP[family]})
    out, lo = [], 0
    for c in cuts:
        if lo <= c - 1:
            out.append((lo, c - 1))
        lo = c + 1
    out.append((lo, 255))
    return out
