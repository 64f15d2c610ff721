"""First-match painting: ordered, overlapping matches resolved into disjoint pieces.

Set-compiled renderers need non-overlapping elements (nftables' interval sets refuse
overlaps), and every packet must be attributed to the first match that holds.  A match is an
:class:`Entry`: the addresses it covers and its rectangles in the (protocol x value) plane,
where ``value`` is the destination port (tcp/udp), the ICMP type, or 0 (other protocols).

:func:`sweep` runs along the address axis: at each elementary address interval only the
entries covering it take part, and the plane is painted first-match; neighbouring intervals
with the same painting are merged.  Cost grows with the entries covering each address, not
with the product of all of them.  :func:`paint` paints one plane.  Pure and backend-neutral.
"""

from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass
from functools import lru_cache

Range = tuple[int, int]
Rect = tuple[int, int, int, int]              # protocol lo, hi, value lo, hi
Painted = tuple[tuple[int, int, int, int, int], ...]  # disjoint (plo, phi, vlo, vhi, owner)


@dataclass(frozen=True, slots=True)
class Entry:
    """One match of a decision: the addresses it covers and its rectangles in the plane."""
    owner: int                 # the decision's index: lower indices win
    addrs: tuple[Range, ...]
    rects: tuple[Rect, ...]


def sweep(entries: list[Entry]) -> list[tuple[int, int, Painted]]:
    """Disjoint, sorted address intervals with the painting of the entries covering them;
    intervals no entry covers, or where nothing is painted, are left out."""
    points: dict[int, list[tuple[int, int]]] = {}
    for i, e in enumerate(entries):
        for lo, hi in e.addrs:
            points.setdefault(lo, []).append((i, 1))
            points.setdefault(hi + 1, []).append((i, -1))
    active: dict[int, int] = {}
    segments: list[tuple[int, int, Painted]] = []
    keys = sorted(points)

    @lru_cache(maxsize=4096)
    def plane(ids: tuple[int, ...]) -> Painted:
        return paint([(entries[i].owner, entries[i].rects) for i in ids])

    for n, p in enumerate(keys):
        for i, delta in points[p]:
            c = active.get(i, 0) + delta
            if c:
                active[i] = c
            else:
                active.pop(i, None)
        if not active or n + 1 == len(keys):
            continue
        painted = plane(tuple(sorted(active)))
        if not painted:
            continue
        end = keys[n + 1] - 1
        if segments and segments[-1][2] == painted and segments[-1][1] + 1 == p:
            segments[-1] = (segments[-1][0], end, painted)
        else:
            segments.append((p, end, painted))
    return segments


def resweep(segments: list[tuple[int, int, Painted]], entries: list[Entry],
            spans: list[Range]) -> list[tuple[int, int, Painted]]:
    """:func:`sweep` of ``entries``, given ``segments``, the sweep of entries that differ from
    them only on addresses in ``spans`` (sorted, disjoint): the old segments are kept outside
    the spans, only the entries meeting a span are swept, within it, and neighbours with the
    same painting are merged across the cuts.  Exactly what ``sweep(entries)`` gives (outside
    the spans the same entries cover each address), at the cost of the changed addresses."""
    pieces: list[tuple[int, int, Painted]] = []
    for lo, hi in spans:
        clipped = []
        for e in entries:
            for a, b in e.addrs:
                if a <= hi and lo <= b:
                    break
            else:
                continue
            addrs = tuple((max(a, lo), min(b, hi)) for a, b in e.addrs if a <= hi and lo <= b)
            clipped.append(Entry(e.owner, addrs, e.rects))
        pieces += sweep(clipped)
    ends = [hi for _, hi in spans]
    for lo, hi, row in segments:
        j = bisect.bisect_left(ends, lo)  # the first span ending at or after lo
        a = lo
        while j < len(spans) and spans[j][0] <= hi:
            if a < spans[j][0]:
                pieces.append((a, spans[j][0] - 1, row))
            a = spans[j][1] + 1
            j += 1
        if a <= hi:
            pieces.append((a, hi, row))
    pieces.sort(key=lambda p: p[0])
    out: list[tuple[int, int, Painted]] = []
    for lo, hi, row in pieces:
        if out and out[-1][2] == row and out[-1][1] + 1 == lo:
            out[-1] = (out[-1][0], hi, row)
        else:
            out.append((lo, hi, row))
    return out


def merge_spans(spans) -> list[Range]:
    """Address ranges as sorted, disjoint ones (overlapping or adjacent ones joined)."""
    out: list[list[int]] = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return [(lo, hi) for lo, hi in out]


def paint(items: list[tuple[int, tuple[Rect, ...]]]) -> Painted:
    """First-match painting of rectangles: ``items`` are (owner, rectangles); the lowest owner
    wins where they overlap.  Neighbouring protocol strips with the same line are merged."""
    bounds = sorted({r[0] for _, rs in items for r in rs} | {r[1] + 1 for _, rs in items for r in rs})
    strips: list[tuple[int, int, tuple]] = []
    for lo, nxt in zip(bounds, bounds[1:]):
        hi = nxt - 1
        covering = [(o, r[2], r[3]) for o, rs in items for r in rs if r[0] <= lo and hi <= r[1]]
        if not covering:
            continue
        line = paint_line(_winners(covering))
        if strips and strips[-1][2] == line and strips[-1][1] + 1 == lo:
            strips[-1] = (strips[-1][0], hi, line)
        else:
            strips.append((lo, hi, line))
    return tuple((plo, phi, vlo, vhi, o) for plo, phi, line in strips for vlo, vhi, o in line)


def _winners(items: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """``items`` without those that cannot win anywhere: in owner order, everything after an
    interval that spans the whole value range of all of them is painted over."""
    if len(items) <= 12:
        return items
    vlo = min(x[1] for x in items)
    vhi = max(x[2] for x in items)
    ordered = sorted(items)
    for n, (_, lo, hi) in enumerate(ordered):
        if lo <= vlo and vhi <= hi:
            return ordered[:n + 1]
    return ordered


def paint_line(items: list[tuple[int, int, int]]) -> tuple[tuple[int, int, int], ...]:
    """First-match painting of intervals (owner, lo, hi); the lowest owner wins.  A sweep with
    a heap of the active owners: O(n log n).  (Few intervals, the common case, go the direct
    way.)"""
    if len(items) == 1:
        return (items[0][1], items[0][2], items[0][0]),
    if len(items) <= 12:
        return _paint_few(items)
    events: dict[int, list[tuple[int, int]]] = {}
    for k, (owner, lo, hi) in enumerate(items):
        events.setdefault(lo, []).append((1, k))
        events.setdefault(hi + 1, []).append((-1, k))
    heap: list[tuple[int, int]] = []
    alive: set[int] = set()
    out: list[tuple[int, int, int]] = []
    keys = sorted(events)
    for n, x in enumerate(keys[:-1]):
        for kind, k in events[x]:
            if kind > 0:
                alive.add(k)
                heapq.heappush(heap, (items[k][0], k))
            else:
                alive.discard(k)
        while heap and heap[0][1] not in alive:
            heapq.heappop(heap)
        if not heap:
            continue
        owner, hi = heap[0][0], keys[n + 1] - 1
        if out and out[-1][2] == owner and out[-1][1] + 1 == x:
            out[-1] = (out[-1][0], hi, owner)
        else:
            out.append((x, hi, owner))
    return tuple(out)


def _paint_few(items: list[tuple[int, int, int]]) -> tuple[tuple[int, int, int], ...]:
    ordered = sorted(items)
    bounds = sorted({lo for _, lo, _ in items} | {hi + 1 for _, _, hi in items})
    out: list[tuple[int, int, int]] = []
    for lo, nxt in zip(bounds, bounds[1:]):
        for owner, a, b in ordered:
            if a <= lo <= b:
                if out and out[-1][2] == owner and out[-1][1] + 1 == lo:
                    out[-1] = (out[-1][0], nxt - 1, owner)
                else:
                    out.append((lo, nxt - 1, owner))
                break
    return tuple(out)


def overlay(top: Painted, under: Painted) -> tuple[tuple[int, int, int, int, int | None], ...]:
    """Where painting ``top`` differs from painting ``under``: disjoint boxes with top's owner
    there (None where top paints nothing but under does).  Everywhere else the two agree, so
    "the differing boxes, else ``under``" decides exactly as ``top``."""
    if top == under:
        return ()
    bounds = sorted({b[0] for b in top + under} | {b[1] + 1 for b in top + under})
    strips: list[tuple[int, int, tuple]] = []
    for lo, nxt in zip(bounds, bounds[1:]):
        t = sorted((b[2], b[3], b[4]) for b in top if b[0] <= lo <= b[1])
        u = sorted((b[2], b[3], b[4]) for b in under if b[0] <= lo <= b[1])
        if t == u:
            continue
        line = _line_diff(t, u)
        if not line:
            continue
        hi = nxt - 1
        if strips and strips[-1][2] == line and strips[-1][1] + 1 == lo:
            strips[-1] = (strips[-1][0], hi, line)
        else:
            strips.append((lo, hi, line))
    return tuple((plo, phi, vlo, vhi, o) for plo, phi, line in strips for vlo, vhi, o in line)


def _line_diff(t: list, u: list) -> tuple:
    """Two sorted, disjoint interval lines: where their owners differ, with t's owner."""
    vb = sorted({x[0] for x in t + u} | {x[1] + 1 for x in t + u})
    out: list[tuple[int, int, int | None]] = []
    i = j = 0
    for vlo, vnxt in zip(vb, vb[1:]):
        while i < len(t) and t[i][1] < vlo:
            i += 1
        while j < len(u) and u[j][1] < vlo:
            j += 1
        ot = t[i][2] if i < len(t) and t[i][0] <= vlo else None
        ou = u[j][2] if j < len(u) and u[j][0] <= vlo else None
        if ot == ou:
            continue
        if out and out[-1][2] == ot and out[-1][1] + 1 == vlo:
            out[-1] = (out[-1][0], vnxt - 1, ot)
        else:
            out.append((vlo, vnxt - 1, ot))
    return tuple(out)
