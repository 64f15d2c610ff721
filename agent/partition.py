"""First-match resolution of an ordered run of matches into disjoint boxes.

Set-compiled renderers need non-overlapping elements (nftables' concatenated interval sets
refuse overlaps), and every packet must be attributed to the first match that holds.  Given
entries in decision order, :func:`resolve` returns disjoint boxes
``address range x protocol range x value range -> entry``, where ``value`` is the destination
port (tcp/udp), the ICMP type, or unused.  Pure and backend-neutral.

The sweep runs along the address axis: at each elementary address interval only the entries
covering it take part, and the (protocol x value) plane is painted first-match; intervals with
the same painting are merged.  Cost grows with the entries covering each address, not with the
product of all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

Range = tuple[int, int]


@dataclass(frozen=True)
class Entry:
    """One match: the addresses it covers and its rectangles in the (protocol, value) plane."""
    addrs: tuple[Range, ...]
    rects: tuple[tuple[int, int, int, int], ...]  # (proto lo, proto hi, value lo, value hi)


@dataclass(frozen=True)
class Box:
    alo: int
    ahi: int
    plo: int
    phi: int
    vlo: int
    vhi: int
    entry: int  # index into the entries given to resolve()


def resolve(entries: list[Entry]) -> list[Box]:
    points: dict[int, list[tuple[int, int]]] = {}
    for i, e in enumerate(entries):
        for lo, hi in e.addrs:
            points.setdefault(lo, []).append((i, 1))
            points.setdefault(hi + 1, []).append((i, -1))
    active: dict[int, int] = {}
    segments: list[tuple[int, int, tuple]] = []
    keys = sorted(points)
    rects = tuple(e.rects for e in entries)

    @lru_cache(maxsize=4096)
    def plane(ids: tuple[int, ...]) -> tuple:
        return _paint_plane([(i, rects[i]) for i in ids])

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
    out = []
    for alo, ahi, painted in segments:
        for plo, phi, vlo, vhi, entry in painted:
            out.append(Box(alo, ahi, plo, phi, vlo, vhi, entry))
    return out


def _paint_plane(items: list[tuple[int, tuple]]) -> tuple:
    """First-match painting of rectangles; ``items`` in priority order."""
    bounds = sorted({r[0] for _, rs in items for r in rs} | {r[1] + 1 for _, rs in items for r in rs})
    strips: list[tuple[int, int, tuple]] = []
    for lo, nxt in zip(bounds, bounds[1:]):
        hi = nxt - 1
        covering = [(i, (r[2], r[3])) for i, rs in items for r in rs if r[0] <= lo and hi <= r[1]]
        if not covering:
            continue
        line = _paint_line(covering)
        if strips and strips[-1][2] == line and strips[-1][1] + 1 == lo:
            strips[-1] = (strips[-1][0], hi, line)
        else:
            strips.append((lo, hi, line))
    return tuple((plo, phi, vlo, vhi, entry) for plo, phi, line in strips for vlo, vhi, entry in line)


def _paint_line(items: list[tuple[int, Range]]) -> tuple:
    """First-match painting of intervals; ``items`` in priority order (duplicates allowed)."""
    bounds = sorted({lo for _, (lo, _) in items} | {hi + 1 for _, (_, hi) in items})
    out: list[tuple[int, int, int]] = []
    for lo, nxt in zip(bounds, bounds[1:]):
        hi = nxt - 1
        for entry, (a, b) in items:
            if a <= lo and hi <= b:
                if out and out[-1][2] == entry and out[-1][1] + 1 == lo:
                    out[-1] = (out[-1][0], hi, entry)
                else:
                    out.append((lo, hi, entry))
                break
    return tuple(out)
