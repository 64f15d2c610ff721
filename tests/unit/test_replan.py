"""Re-planning inside a chain (issue 10): when some decisions of a large NIC chain change, the
chain is swept again only where those decisions' peers lie (partition.resweep,
peerclass.plan_chain's ``prior``) and only the class chains of rows holding them are made
again (setrender.ChainRenderer's ``prior``).  The proof is identity with a fresh plan and a
fresh render of the new document, over generated entries, documents and edits."""

from __future__ import annotations

import copy
import random
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from sgagent.compiler import compile_document
from sgagent.load import DocumentCache
from sgagent.nft.names import chain_name
from sgagent.nft.render import render
from sgagent.nft.setrender import chain_update, edited
from sgagent.partition import Entry, merge_spans, resweep, sweep
from sgagent.peerclass import plan_chain

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import docgen  # noqa: E402

RECTS = [(6, 6, 0, 65535), (6, 6, 22, 22), (6, 6, 80, 90), (17, 17, 53, 53), (1, 1, 0, 255),
         (0, 255, 0, 0)]


@st.composite
def entry(draw, owner: int) -> Entry:
    addrs = []
    for _ in range(draw(st.integers(1, 2))):
        lo = draw(st.integers(0, 60))
        addrs.append((lo, lo + draw(st.sampled_from([0, 0, 1, 3, 7, 15]))))
    rects = tuple(draw(st.lists(st.sampled_from(RECTS), min_size=1, max_size=3, unique=True)))
    return Entry(owner, tuple(addrs), rects)


@st.composite
def edited_entries(draw):
    n = draw(st.integers(1, 12))
    old = [draw(entry(i)) for i in range(n)]
    stale = set(draw(st.lists(st.integers(0, n - 1), max_size=3)))
    new = [draw(entry(e.owner)) if e.owner in stale and draw(st.booleans()) else
           (e if e.owner not in stale else None) for e in old]
    return old, [e for e in new if e is not None], stale


@settings(max_examples=400, deadline=None, derandomize=True)
@given(edited_entries())
def test_resweep_is_a_fresh_sweep(case):
    old, new, stale = case
    spans = merge_spans([r for e in old + new if e.owner in stale for r in e.addrs])
    assert resweep(sweep(old), new, spans) == sweep(new)


def test_merge_spans():
    assert merge_spans([(5, 9), (0, 2), (3, 3), (20, 30), (25, 26)]) == [(0, 3), (5, 9), (20, 30)]


PEERS = ["10.1.2.3", "10.0.0.0/8", "0.0.0.0/0", "10.20.0.0/16", "198.51.100.7",
         "192.0.2.0/28", "2001:db8::/64", "2001:db8::5", {"group": "sg-peer-1"}, {"group": "sg-03"},
         ["10.3.0.0/24", "203.0.113.9"]]


def edit_rule(raw: dict, rnd: random.Random) -> dict:
    """One rule of ``raw`` edited as issue 10's target says: its port, peer or policy (or
    protocol); sometimes two rules at once."""
    new = copy.copy(raw)
    new["security_groups"] = dict(raw["security_groups"])
    for _ in range(rnd.choice([1, 1, 1, 2])):
        gname = rnd.choice(docgen.GROUPS)
        group = new["security_groups"][gname] = dict(new["security_groups"][gname])
        rules = group["rules"] = list(group["rules"])
        i = rnd.randrange(len(rules))
        rule = rules[i] = dict(rules[i])
        kind = rnd.choice(["port", "port", "peer", "peer", "policy", "protocol", "id"])
        if kind == "port":
            rule.pop("service", None)
            rule["protocol"] = rnd.choice(["tcp", "udp"])
            rule["ports"] = rnd.choice([22, 80, "1000/2000", 20000 + rnd.randrange(100)])
        elif kind == "peer":
            peer = rnd.choice(PEERS)
            if (isinstance(peer, str) and ":" in peer) and rule.get("protocol") not in \
                    ("tcp", "udp"):
                peer = "10.4.0.0/24"
            rule["source"] = peer
        elif kind == "policy":
            rule["policy"] = rnd.choice(["accept", "drop", "reject"])
        elif kind == "protocol":
            rule.pop("ports", None)
            rule.pop("service", None)
            rule["protocol"] = rnd.choice(["all", "tcp", "udp", "icmp"])
            if rule["protocol"] == "icmp" and ":" in str(rule.get("source")):
                rule["source"] = "10.5.0.0/16"
        else:
            rule["id"] = f"edited-{rnd.randrange(10**6)}"
    return new


def _same(a, b) -> bool:
    return (a.counters, a.sets, a.chains, a.refs, a.exact) == \
        (b.counters, b.sets, b.chains, b.refs, b.exact)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(st.integers(0, 2**32 - 1))
def test_edits_replan_and_render_as_a_fresh_plan_and_render(seed):
    """A sequence of rule edits of a 300-rule chain: each re-plan equals a fresh plan, each
    chain_update equals a fresh render; where one rule's port changed, most class chains are
    the very ones of the render before (taken, not made again)."""
    rnd = random.Random(seed)
    raw = docgen.generate(300, seed=rnd.randrange(1000), group_peers=0.1)
    cache = DocumentCache()
    doc = cache.parse_data(raw)
    rs = compile_document(doc)
    objs = render(rs)
    for _ in range(4):
        new_raw = edit_rule(raw, rnd)
        new_doc = cache.parse_data(new_raw)
        new_rs = compile_document(new_doc, (doc, rs))
        groups = {g.name: g for g in new_rs.groups}
        for old_chain, chain in zip(rs.chains, new_rs.chains):
            stale = edited(old_chain, chain)
            if stale is None:
                continue
            base = chain_name(chain.nic, chain.direction)
            again = plan_chain(chain, groups, prior=objs.plans[base], stale=stale)
            afresh = plan_chain(chain, groups)
            for family in (4, 6):
                a, b = again[family], afresh[family]
                assert (a.segments, a.group_items, a.members) == \
                    (b.segments, b.group_items, b.members)
                assert sorted(a.entries, key=repr) == sorted(b.entries, key=repr)
        new_objs = chain_update(objs, rs, new_rs)
        assert new_objs is not None
        assert _same(new_objs, render(new_rs))
        raw, doc, rs, objs = new_raw, new_doc, new_rs, new_objs


def test_a_port_edit_takes_the_other_class_chains_as_they_were():
    raw = docgen.generate(500, seed=3)
    cache = DocumentCache()
    doc = cache.parse_data(raw)
    rs = compile_document(doc)
    objs = render(rs)
    new_raw = copy.deepcopy(raw)
    rule = next(r for r in new_raw["security_groups"][docgen.GROUPS[0]]["rules"]
                if r.get("protocol") == "tcp" and "ports" in r)
    rule["ports"] = 20001
    new_rs = compile_document(cache.parse_data(new_raw), (doc, rs))
    new_objs = chain_update(objs, rs, new_rs)
    assert _same(new_objs, render(new_rs))
    classes = [n for n in new_objs.chains if n.startswith("k_")]
    taken = [n for n in classes if n in objs.chains and new_objs.chains[n][1] is objs.chains[n][1]]
    assert len(taken) >= 0.9 * len(classes)


def test_a_port_edit_patches_the_exact_map_where_its_addresses_lie():
    """The exact address map of a re-planned chain is the previous one patched only around
    the re-swept addresses: equal to a fresh render's (maps, their elements, the chains'
    reference counts), with most elements the very ones of the render before."""
    raw = docgen.generate(2000, seed=5)
    cache = DocumentCache()
    doc = cache.parse_data(raw)
    rs = compile_document(doc)
    objs = render(rs)
    new_raw = copy.deepcopy(raw)
    rule = next(r for r in new_raw["security_groups"][docgen.GROUPS[0]]["rules"]
                if r.get("protocol") == "tcp" and "ports" in r
                and "/" not in str(r.get("source", "/")))
    rule["ports"] = 20001
    new_rs = compile_document(cache.parse_data(new_raw), (doc, rs))
    new_objs = chain_update(objs, rs, new_rs)
    assert _same(new_objs, render(new_rs))
    carried = total = 0
    for base, plans in new_objs.plans.items():
        for family, plan in plans.items():
            before = objs.plans[base][family].maps.get("exact")
            if before is None or not plan.maps.get("exact"):
                continue
            old_ids = {id(item) for item in before[1]}
            total += len(plan.maps["exact"][1])
            carried += sum(id(item) in old_ids for item in plan.maps["exact"][1])
    assert total > 500
    assert carried >= 0.9 * total


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.integers(0, 2**32 - 1))
def test_many_small_edits_patch_the_maps_as_a_fresh_render(seed):
    """Longer edit sequences of small chains, with many group peers (members found exactly
    and through their group's set, wide rows): each chain_update equals a fresh render."""
    rnd = random.Random(seed)
    raw = docgen.generate(rnd.choice([40, 120]), seed=rnd.randrange(1000),
                          group_peers=rnd.choice([0.0, 0.3]))
    cache = DocumentCache()
    doc = cache.parse_data(raw)
    rs = compile_document(doc)
    objs = render(rs)
    for _ in range(8):
        new_raw = edit_rule(raw, rnd)
        new_doc = cache.parse_data(new_raw)
        new_rs = compile_document(new_doc, (doc, rs))
        new_objs = chain_update(objs, rs, new_rs)
        assert new_objs is not None
        assert _same(new_objs, render(new_rs))
        raw, doc, rs, objs = new_raw, new_doc, new_rs, new_objs


def _dense_peer(rnd: random.Random) -> str:
    """A peer among a few dozen neighbouring addresses: single addresses and small networks
    side by side, so that interval pieces merge across runs of single addresses."""
    size = rnd.choice([32, 32, 32, 31, 30, 29, 28])
    x = rnd.randrange(64) & ~((1 << (32 - size)) - 1)
    return f"10.0.0.{x}/{size}"


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.integers(0, 2**32 - 1))
def test_dense_peer_edits_patch_the_maps_as_a_fresh_render(seed):
    """Edits among densely packed peers (where a change cuts or joins interval pieces far
    from the edited addresses): each chain_update equals a fresh render."""
    rnd = random.Random(seed)
    raw = docgen.generate(rnd.choice([30, 80]), seed=rnd.randrange(1000), group_peers=0.1)
    for group in raw["security_groups"].values():
        for rule in group["rules"]:
            if isinstance(rule.get("source"), str) and ":" not in rule["source"] \
                    and rule["source"] != "0.0.0.0/0":
                rule["source"] = _dense_peer(rnd)
    cache = DocumentCache()
    doc = cache.parse_data(raw)
    rs = compile_document(doc)
    objs = render(rs)
    for _ in range(6):
        new_raw = copy.deepcopy(raw)
        for _ in range(rnd.choice([1, 1, 2])):
            rules = new_raw["security_groups"][rnd.choice(docgen.GROUPS)]["rules"]
            rule = rules[rnd.randrange(len(rules))]
            if rnd.random() < 0.7:
                rule["source"] = _dense_peer(rnd) if rnd.random() < 0.8 else \
                    [_dense_peer(rnd), _dense_peer(rnd)]
                if rule.get("protocol") not in ("tcp", "udp", "all") and "service" not in rule:
                    rule["protocol"] = "tcp"
            else:
                rule.pop("service", None)
                rule["protocol"] = "udp"
                rule["ports"] = rnd.choice([53, "1000/1010"])
        new_doc = cache.parse_data(new_raw)
        new_rs = compile_document(new_doc, (doc, rs))
        new_objs = chain_update(objs, rs, new_rs)
        assert new_objs is not None
        assert _same(new_objs, render(new_rs))
        raw, doc, rs, objs = new_raw, new_doc, new_rs, new_objs
