"""Peer classes (peerclass.py), without root: the plan the set rendering is built from decides
every packet as the oracle does, and a membership change recomputed around the changed points
gives exactly the pieces a fresh plan has."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from sgagent.compiler import compile_document
from sgagent.ir import GroupSet
from sgagent.load import parse_data
from sgagent.nft.render import render
from sgagent.nft.setrender import member_update
from sgagent import peerclass
from sgagent.peerclass import PROTO_NUMBERS, plan_chain

from .test_compiler import HOSTS, always_allowed, expected_key, gen_document, gen_packet

_NUMBERS = dict(PROTO_NUMBERS, sctp=132)


def run_plan(rs, plans, p):
    """What the set rendering does with a packet: state and allowances aside, one lookup of the
    peer (its row), one of protocol and port or type; then inner access, then the default."""
    fam = p.peer.version
    if always_allowed(p):  # the preamble's rules, before any lookup
        return "accept", None
    chain = rs.chain(p.nic, p.direction)
    proto = _NUMBERS[p.protocol]
    value = p.port if p.protocol in ("tcp", "udp") else p.icmp_type if p.icmp_type is not None \
        and proto == {4: 1, 6: 58}[fam] else 0
    owner = plans[(p.nic, p.direction)][fam].decide(int(p.peer), proto, value)
    if owner is not None:
        d = chain.decisions[owner]
        return d.action, d.counter
    if chain.inner_counter is not None:
        sets = {g.name: g for g in rs.groups}
        if any(p.peer in sets[g].v4 + sets[g].v6 for g in chain.inner_access):
            return "accept", chain.inner_counter
    return chain.default.action, chain.default.counter


class few_group_lookups:
    """Odd seeds run with no group-set lookups: every member goes into the exact map, as when
    a chain has more groups as peers than GROUP_LOOKUPS_MAX."""

    def __init__(self, seed: int) -> None:
        self.limit = 0 if seed % 2 else peerclass.GROUP_LOOKUPS_MAX

    def __enter__(self):
        self.saved, peerclass.GROUP_LOOKUPS_MAX = peerclass.GROUP_LOOKUPS_MAX, self.limit

    def __exit__(self, *exc):
        peerclass.GROUP_LOOKUPS_MAX = self.saved


def plans_of(rs):
    groups = {g.name: g for g in rs.groups}
    return {(c.nic, c.direction): plan_chain(c, groups) for c in rs.chains}


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.integers(0, 2**32 - 1))
def test_plans_agree_with_the_oracle(seed):
    with few_group_lookups(seed):
        _test_plans_agree_with_the_oracle(seed)


def _test_plans_agree_with_the_oracle(seed):
    rnd = random.Random(seed)
    raw_doc = gen_document(rnd)
    doc = parse_data(raw_doc)
    rs = compile_document(doc)
    plans = plans_of(rs)
    for _ in range(24):
        p = gen_packet(rnd, raw_doc)
        if p.protocol == "sctp" or p.protocol == "icmp" and p.peer.version == 6:
            continue
        got, want = run_plan(rs, plans, p), expected_key(doc, p)
        assert got == want, f"\nplan:   {got}\noracle: {want}\n{p}\n{raw_doc}"


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.integers(0, 2**32 - 1))
def test_lookup_finds_the_row_of_every_address(seed):
    with few_group_lookups(seed):
        _test_lookup_finds_the_row_of_every_address(seed)


def _test_lookup_finds_the_row_of_every_address(seed):
    """Exact, then interval (merged across single addresses): the same row as the first-match
    truth at every address where something changes, and just beside it."""
    rnd = random.Random(seed)
    rs = compile_document(parse_data(gen_document(rnd)))
    for plans in plans_of(rs).values():
        for plan in plans.values():
            edges = {x for lo, hi, _ in plan.segments for x in (lo - 1, lo, hi, hi + 1)}
            edges |= {x for p in plan.points() for x in (p - 1, p, p + 1)}
            for a in sorted(x for x in edges if x >= 0):
                assert plan.lookup(a) == plan.row_at(a), a


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.integers(0, 2**32 - 1))
def test_membership_change_touches_only_the_changed_members(seed):
    with few_group_lookups(seed):
        _test_membership_change_touches_only_the_changed_members(seed)


def _test_membership_change_touches_only_the_changed_members(seed):
    rnd = random.Random(seed)
    rs = compile_document(parse_data(gen_document(rnd)))
    for chain in rs.chains:
        before = plan_chain(chain, {g.name: g for g in rs.groups})
        new = {}  # other members for every group: some kept, some gone, some new
        for g in rs.groups:
            pool = [h for h in HOSTS if rnd.randrange(2)]
            new[g.name] = GroupSet(g.name, tuple(sorted(h for h in pool if h.version == 4)),
                                   tuple(sorted(h for h in pool if h.version == 6)))
        fresh = plan_chain(chain, new)
        for fam, plan in before.items():
            after = plan.with_members(fresh[fam].members)
            assert after.intervals() == plan.intervals() == fresh[fam].intervals()
            changed = set()
            for g, ms in plan.members.items():
                changed |= ms ^ after.members[g]
            exact = plan.exact()
            for a in changed:  # what the backend's fast path does
                exact.pop(a, None)
                if after.exact_row(a):
                    exact[a] = after.exact_row(a)
            assert exact == fresh[fam].exact()


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.integers(0, 2**32 - 1))
def test_member_update_renders_what_a_full_render_would(seed):
    with few_group_lookups(seed):
        _test_member_update_renders_what_a_full_render_would(seed)


def _test_member_update_renders_what_a_full_render_would(seed):
    """The backend's membership fast path, without the kernel: from the objects of one
    document to those of the same document with other members, touching only the changed
    members, gives exactly the objects a fresh render gives."""
    rnd = random.Random(seed)
    raw_doc = gen_document(rnd)
    old_rs = compile_document(parse_data(raw_doc))
    old = render(old_rs, "sets")
    for g in raw_doc["security_groups"].values():
        g["members"] = [str(h) for h in HOSTS if rnd.randrange(2)
                        and (h.version == 4 or raw_doc["host"].get("network") != "classic")]
    rs = compile_document(parse_data(raw_doc))
    if rs.chains != old_rs.chains:  # inner access follows members: not a members-only change
        return
    got, want = member_update(old, old_rs, rs), render(rs, "sets")
    if got is None:  # (a class chain with a verdict map fell out of use: rendered whole)
        return
    assert got.counters == want.counters
    assert got.chains == want.chains
    assert {n: (s.type, s.interval, s.mapping() if s.is_map else s.elements)
            for n, s in got.sets.items()} == \
        {n: (s.type, s.interval, s.mapping() if s.is_map else s.elements)
         for n, s in want.sets.items()}
    assert got.refs == want.refs and got.exact == want.exact
