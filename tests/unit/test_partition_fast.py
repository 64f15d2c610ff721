"""paint/sweep with pruning equal a straightforward reference (the unpruned algorithm)."""

from hypothesis import given, settings, strategies as st

from sgagent.partition import Entry, paint, sweep


def ref_paint(items):
    """Point-wise first-match over every protocol/value boundary, no pruning."""
    rects = [(o, r) for o, rs in items for r in rs]
    pb = sorted({r[0] for _, r in rects} | {r[1] + 1 for _, r in rects})
    strips = []
    for plo, pnxt in zip(pb, pb[1:]):
        cov = [(o, r[2], r[3]) for o, r in rects if r[0] <= plo and pnxt - 1 <= r[1]]
        vb = sorted({c[1] for c in cov} | {c[2] + 1 for c in cov})
        line = []
        for vlo, vnxt in zip(vb, vb[1:]):
            owners = [o for o, a, b in cov if a <= vlo <= b]
            if not owners:
                continue
            o = min(owners)
            if line and line[-1][2] == o and line[-1][1] + 1 == vlo:
                line[-1] = (line[-1][0], vnxt - 1, o)
            else:
                line.append((vlo, vnxt - 1, o))
        if not line:
            continue
        line = tuple(line)
        if strips and strips[-1][2] == line and strips[-1][1] + 1 == plo:
            strips[-1] = (strips[-1][0], pnxt - 1, line)
        else:
            strips.append((plo, pnxt - 1, line))
    return tuple((a, b, c, d, o) for a, b, line in strips for c, d, o in line)


def ref_sweep(entries):
    pts = sorted({lo for e in entries for lo, _ in e.addrs} | {hi + 1 for e in entries for _, hi in e.addrs})
    out = []
    for p, nxt in zip(pts, pts[1:]):
        act = [e for e in entries if any(lo <= p <= hi for lo, hi in e.addrs)]
        if not act:
            continue
        painted = ref_paint([(e.owner, e.rects) for e in act])
        if not painted:
            continue
        if out and out[-1][2] == painted and out[-1][1] + 1 == p:
            out[-1] = (out[-1][0], nxt - 1, painted)
        else:
            out.append((p, nxt - 1, painted))
    return out


rect = st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 40), st.integers(0, 40)).map(
    lambda t: (min(t[0], t[1]), max(t[0], t[1]), min(t[2], t[3]), max(t[2], t[3])))
items = st.lists(st.tuples(st.integers(0, 30), st.lists(rect, min_size=1, max_size=3).map(tuple)),
                 min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(items)
def test_paint_matches_reference(its):
    assert paint(its) == ref_paint(its)


def nested(t):
    lo, size = t
    size = 1 << size
    lo = (lo // size) * size
    return (lo, lo + size - 1)


entries = st.lists(st.builds(Entry, st.integers(0, 30),
                             st.lists(st.tuples(st.integers(0, 63), st.integers(0, 6)).map(nested),
                                      min_size=1, max_size=2).map(tuple),
                             st.lists(rect, min_size=1, max_size=3).map(tuple)),
                   min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(entries)
def test_sweep_matches_reference(es):
    assert sweep(es) == ref_sweep(es)
