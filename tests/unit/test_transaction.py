"""One transaction (sgagent.backend): the diff and the full replacement, executed by the
in-memory fake kernel, which refuses what the kernel refuses.  Without root.

Every transaction the diff produces must be accepted by the fake and leave exactly the table a
fresh full load of the same objects leaves; kept counters keep their counts; a refused
transaction changes nothing."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sgagent.backend.fake import FakeKernel
from sgagent.backend.faults import Faulty
from sgagent.backend.kernel import ApplyError, Refused
from sgagent.backend.objects import Rule, SetDef
from sgagent.backend.transaction import (NO_TABLE, AddChain, AddCounter, AddElements, AddRules,
                                         AddSet, AddTable, DeleteChain, DeleteCounter,
                                         DeleteElements, DeleteSet, FlushChain, Transaction,
                                         diff, replace)
from sgagent.compiler import compile_document
from sgagent.load import parse_data
from sgagent.nft.backend import NftBackend
from sgagent.nft.names import parse_comment
from sgagent.nft.render import render
from sgagent.nft.script import script

from .test_compiler import gen_document


def fresh(objs) -> FakeKernel:
    k = FakeKernel(parse_comment)
    k.execute(replace(NO_TABLE, objs))
    return k


def members_changed(raw: dict, rnd: random.Random) -> dict:
    import copy
    raw = copy.deepcopy(raw)
    for g in raw["security_groups"].values():
        members = list(g.get("members", []))
        if members and rnd.randrange(2):
            members.pop(rnd.randrange(len(members)))
        if rnd.randrange(2):
            members.append(f"10.{rnd.randrange(4)}.0.{rnd.randrange(1, 250)}")
        g["members"] = members
    return raw


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.integers(0, 2**32 - 1), st.sampled_from(["sets", "linear"]))
def test_a_diff_is_accepted_and_leaves_what_a_fresh_load_leaves(seed, rendering):
    rnd = random.Random(seed)
    a_raw, b_raw = gen_document(rnd), gen_document(rnd)
    steps = [a_raw, b_raw, members_changed(b_raw, rnd), a_raw]
    kernel = FakeKernel(parse_comment)
    be = NftBackend(rendering=rendering, kernel=kernel)
    before = None
    for raw in steps:
        rs = compile_document(parse_data(raw))
        result = be.apply(rs)
        assert result.mode == ("full" if before is None else "delta")
        assert kernel.listing() == fresh(render(rs, rendering)).listing()
        assert be.diff(rs) == ""  # (loaded into a scratch fake, listed and compared)
        before = kernel.listing()
    assert be.diff(compile_document(parse_data(b_raw))).startswith("--- live\n+++ apply\n")


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.integers(0, 2**32 - 1))
def test_a_membership_change_names_what_it_changed_and_nothing_else(seed):
    """member_update says which names it touched, and the diff then compares only those: it
    must find exactly what the diff over the whole table finds."""
    import copy as copy_mod
    from sgagent.nft.setrender import member_update
    rnd = random.Random(seed)
    raw = gen_document(rnd)
    old_rs = compile_document(parse_data(raw))
    old = render(old_rs, "sets")
    rs = compile_document(parse_data(members_changed(raw, rnd)))
    if rs.chains != old_rs.chains:
        return
    new = member_update(old, old_rs, rs)
    if new is None:
        return
    assert new.changed is not None and new.changed.relative_to(old)
    unhinted = copy_mod.copy(new)
    unhinted.changed = None
    hinted, whole = diff(old, new), diff(old, unhinted)
    assert sorted(script(hinted).splitlines()) == sorted(script(whole).splitlines())
    assert [type(op) for op in hinted] == [type(op) for op in whole]  # the same order of kinds
    assert not new.changed.relative_to(render(old_rs, "sets"))  # only about that very object


def test_counters_of_kept_rules_keep_counting_across_diffs_and_replacements():
    rnd = random.Random(7)
    raw = gen_document(rnd)
    kernel = FakeKernel(parse_comment)
    be = NftBackend(kernel=kernel)
    be.apply(compile_document(parse_data(raw)))
    for name in kernel.values():
        kernel.count(name, 3)
    seen = kernel.values()
    for full in (False, True, False):
        be.apply(compile_document(parse_data(members_changed(raw, rnd))), full=full)
        now = kernel.values()
        for name, value in now.items():
            assert value >= seen.get(name, (0, 0))
        kept = set(seen) & set(now)
        assert kept and all(now[n] == seen[n] for n in kept)
        seen = now


def test_the_text_of_a_transaction_is_one_command_a_line():
    s = SetDef("ipv4_addr", frozenset({"192.0.2.1"}))
    tx = Transaction([AddChain("k_x"), AddCounter("c_1", "eth0|in|a|g|r"), AddSet("g4_a", s),
                      AddElements("g4_a", "ipv4_addr", (("192.0.2.2", None),)),
                      DeleteElements("g4_a", "ipv4_addr", ("192.0.2.1",)),
                      AddRules("k_x", (Rule("ip saddr @g4_a counter name c_1 return",
                                           sets=("g4_a",), counters=("c_1",)),)),
                      FlushChain("k_y"), DeleteChain("k_y"), DeleteSet("m_z", True),
                      DeleteCounter("c_2")])
    assert script(tx).splitlines() == [
        "add chain inet sgagent k_x",
        'add counter inet sgagent c_1 { comment "eth0|in|a|g|r"; }',
        "add set inet sgagent g4_a { type ipv4_addr; elements = { 192.0.2.1 }; }",
        "add element inet sgagent g4_a { 192.0.2.2 }",
        "delete element inet sgagent g4_a { 192.0.2.1 }",
        "add rule inet sgagent k_x ip saddr @g4_a counter name c_1 return",
        "flush chain inet sgagent k_y",
        "delete chain inet sgagent k_y",
        "delete map inet sgagent m_z",
        "delete counter inet sgagent c_2"]


def test_a_full_replacement_is_the_compiled_text_after_the_deletions():
    objs = render(compile_document(parse_data(gen_document(random.Random(3)))), "sets")
    text = script(replace(NO_TABLE, objs))
    assert text == "add table inet sgagent\nflush table inet sgagent\n" + objs.text()


def test_an_element_only_change_is_a_transaction_of_elements():
    rnd = random.Random(11)
    for _ in range(40):
        raw = gen_document(rnd)
        kernel = FakeKernel(parse_comment)
        be = NftBackend(kernel=kernel)
        first = be.apply(compile_document(parse_data(raw))).objects
        rs = compile_document(parse_data(members_changed(raw, rnd)))
        tx = diff(first, be.apply(rs).objects)
        if tx.elements_only:  # no chain, set or rule came or went: the netlink batch's case
            assert all(isinstance(op, (AddElements, DeleteElements)) for op in tx)
            assert tx.element_count == sum(len(op.items) if isinstance(op, AddElements)
                                           else len(op.keys) for op in tx)
            return
    pytest.skip("no members-only change among the generated documents")


# -- the fake refuses what the kernel refuses (tests/kernel/test_fake_agrees.py holds the real
# kernel to the same lists) ---------------------------------------------------------------------
def base_ops() -> list:
    return [AddTable(), AddCounter("c_1", "x"), AddChain("k_a"),
            AddSet("g4_a", SetDef("ipv4_addr", frozenset({"192.0.2.1"}))),
            AddSet("h4", SetDef("ipv4_addr", frozenset({"192.0.2.9"}),
                                (("192.0.2.9", "goto k_a"),))),
            AddChain("in_eth0"),
            AddRules("in_eth0", (Rule("ip saddr @g4_a counter name c_1 goto k_a",
                                      targets=("k_a",), sets=("g4_a",), counters=("c_1",)),))]


def base() -> FakeKernel:
    k = FakeKernel()
    k.execute(Transaction(base_ops()))
    return k


REFUSED = [
    [AddRules("in_eth0", (Rule("goto k_missing", targets=("k_missing",)),))],
    [AddRules("in_eth0", (Rule("ip saddr @g4_missing drop", sets=("g4_missing",)),))],
    [AddRules("in_eth0", (Rule("counter name c_missing drop", counters=("c_missing",)),))],
    [AddRules("no_chain", (Rule("drop"),))],
    [AddElements("h4", "ipv4_addr", (("192.0.2.7", "goto k_missing"),))],
    [AddElements("g4_missing", "ipv4_addr", (("192.0.2.7", None),))],
    [DeleteElements("g4_a", "ipv4_addr", ("192.0.2.77",))],
    [DeleteElements("g4_a", "ipv4_addr", ("192.0.2.1",)),   # the first goes, the second is
     DeleteElements("g4_a", "ipv4_addr", ("192.0.2.77",))],  # not there: neither goes
    [DeleteChain("k_a")],                         # a rule and a map element go to it
    [FlushChain("in_eth0"), DeleteChain("k_a")],  # the map element still does
    [DeleteSet("g4_a")],                          # a rule looks it up
    [DeleteCounter("c_1")],                       # a rule counts on it
    [DeleteChain("k_missing")],
    [FlushChain("k_missing")],
    [AddSet("g4_a", SetDef("ipv6_addr", frozenset()))],
]
ACCEPTED = [  # and what is left of the table
    ([FlushChain("in_eth0"), DeleteElements("h4", "ipv4_addr", ("192.0.2.9",)),
      DeleteChain("k_a"), DeleteSet("g4_a"), DeleteCounter("c_1")], {"in_eth0", "map h4"}),
    # a chain goes with its rules (and what they referred to is free); "delete set" takes a map
    ([DeleteChain("in_eth0"), DeleteSet("h4", is_map=False), DeleteChain("k_a"),
      DeleteCounter("c_1")], {"set g4_a"}),
]


@pytest.mark.parametrize("ops", REFUSED)
def test_the_fake_refuses_what_the_kernel_refuses_and_changes_nothing(ops):
    k = base()
    listing, gen = k.listing(), k.generation()
    k.count("c_1", 5)
    with pytest.raises(Refused):
        k.execute(Transaction([AddChain("k_new"), *ops]))
    assert (k.listing(), k.generation(), k.values()["c_1"]) == (listing, gen, (5, 320))


@pytest.mark.parametrize("ops,left", ACCEPTED)
def test_the_fake_takes_what_the_kernel_takes(ops, left):
    k = base()
    k.execute(Transaction(ops))
    assert k.live().chains | k.live().sets | k.live().counters == left


def test_a_transaction_from_an_older_generation_is_refused():
    k = base()
    gen = k.generation()
    k.foreign_commit()
    with pytest.raises(Refused, match="generation"):
        k.execute(Transaction([AddChain("k_b")]), genid=gen)


def test_the_faults_wrapper_refuses_the_chosen_transactions_after_the_rest():
    raw = gen_document(random.Random(5))
    kernel = Faulty(FakeKernel(parse_comment), refuse=[2, 3])
    be = NftBackend(kernel=kernel)
    be.apply(compile_document(parse_data(raw)))
    before = kernel.listing()
    other = gen_document(random.Random(6))
    with pytest.raises(ApplyError, match="nothing was changed"):
        be.apply(compile_document(parse_data(other)))  # the delta (2), then the full (3)
    assert kernel.listing() == before and kernel.refused == 2
    be.apply(compile_document(parse_data(other)))
    assert kernel.listing() == fresh(render(compile_document(parse_data(other)), "sets")).listing()


def test_watchers_hear_of_tampering_until_closed():
    k = base()
    heard = []
    w = k.watch(lambda: heard.append(1))
    k.tamper(FlushChain("in_eth0"))
    w.close()
    k.tamper(AddChain("k_z"))
    assert heard == [1]


class TextKernel(FakeKernel):
    """The fake, telling the applier it took each transaction as text (as libnftables)."""

    def execute(self, tx, *, genid=None, dry_run=False):
        done = super().execute(tx, genid=genid, dry_run=dry_run)
        return done._replace(channel="libnftables")


def rebuilt_tables():
    from sgagent.backend.objects import Objects

    def table(prefix: str, chains: int, extra: str = "") -> Objects:
        objs = Objects()
        objs.counters["c_1"] = "x"
        objs.chains["in_eth0"] = (None, tuple(Rule(f"goto {prefix}{i}", targets=(f"{prefix}{i}",))
                                              for i in range(chains)))
        for i in range(chains):
            objs.chains[f"{prefix}{i}"] = (None, (Rule(f"counter name c_1 drop{extra}",
                                                       counters=("c_1",)),))
        return objs
    return table


def test_a_difference_that_rebuilds_much_of_the_table_as_text_is_a_full_replacement():
    """Replacing most chains one by one costs libnftables several times loading the table
    whole: past a share of the chains the applier replaces the table instead; a change of a
    few chains stays a difference."""
    from sgagent.backend.applier import REPLACE_MIN_CHAINS, Applier
    table = rebuilt_tables()
    n = 2 * REPLACE_MIN_CHAINS
    kernel = TextKernel()
    applier = Applier(kernel, lambda objs, *_: objs)
    assert applier.apply(table("k_a", n)).mode == "full"
    kernel.count("c_1", 7)
    edit = table("k_a", n)
    edit.chains["k_a0"] = (None, (Rule("counter name c_1 accept", counters=("c_1",)),))
    assert applier.apply(edit).mode == "delta"
    result = applier.apply(table("k_b", n))  # every chain another
    assert result.mode == "full" and kernel.values()["c_1"] == (7, 448)
    assert kernel.listing() == fresh(table("k_b", n)).listing()


def test_a_kernel_that_takes_batches_takes_a_rebuild_as_a_difference():
    """A kernel that took the whole table as one batch (not text) takes a difference that
    rebuilds most chains as a difference too (cheaper than the table whole); kept counters
    keep counting; a refused one still falls back to the whole table."""
    from sgagent.backend.applier import REPLACE_MIN_CHAINS, Applier
    table = rebuilt_tables()
    n = 2 * REPLACE_MIN_CHAINS
    kernel = FakeKernel()
    applier = Applier(kernel, lambda objs, *_: objs)
    assert applier.apply(table("k_a", n)).mode == "full" and applier.batches
    kernel.count("c_1", 7)
    result = applier.apply(table("k_b", n))  # every chain another
    assert result.mode == "delta" and kernel.values()["c_1"] == (7, 448)
    assert kernel.listing() == fresh(table("k_b", n)).listing()
    faulty = Faulty(kernel, refuse=[1])
    applier.kernel = faulty
    result = applier.apply(table("k_c", n))
    assert faulty.refused == 1
    assert result.mode == "full" and kernel.values()["c_1"] == (7, 448)
    assert kernel.listing() == fresh(table("k_c", n)).listing()


def interval_table(peers: list[str]):
    from sgagent.backend.objects import Objects
    objs = Objects()
    objs.sets["a4"] = SetDef("ipv4_addr", frozenset(peers), interval=True)
    objs.sets["other"] = SetDef("ipv4_addr", frozenset(peers), interval=True)
    objs.chains["in_eth0"] = (None, (Rule("ip saddr @a4 accept", sets=("a4",)),
                                     Rule("ip saddr @other drop", sets=("other",))))
    objs.chains["in_eth1"] = (None, (Rule("ip saddr @a4 drop", sets=("a4",)),))
    objs.chains["in_eth2"] = (None, (Rule("drop"),))
    return objs


def test_whole_intervals_adds_a_changed_interval_set_again_with_its_chains():
    """``whole_intervals``: an interval set whose prefixes change is deleted and added again
    whole; every chain that looks it up is flushed before and gets its rules back after;
    the fake (which refuses deleting a set in use) takes it and the table is what a fresh
    load leaves; nothing else is touched."""
    old = interval_table(["10.0.0.0/24", "10.1.0.0/16"])
    new = interval_table(["10.0.0.0/24", "10.2.0.0/16"])
    new.sets["other"] = old.sets["other"]
    k = fresh(old)
    tx = diff(old, new, whole_intervals=True)
    assert not any(isinstance(op, (AddElements, DeleteElements)) for op in tx)
    assert {type(op).__name__ for op in tx} == {"FlushChain", "DeleteSet", "AddSet", "AddRules"}
    assert sorted(op.name for op in tx if isinstance(op, FlushChain)) == ["in_eth0", "in_eth1"]
    assert [op.name for op in tx if isinstance(op, (DeleteSet, AddSet))] == ["a4", "a4"]
    k.execute(tx)
    assert k.listing() == fresh(new).listing()
    plain = diff(old, new)
    assert {type(op).__name__ for op in plain} == {"AddElements", "DeleteElements"}


def test_a_large_element_change_goes_in_pieces():
    """Each element operation carries at most PIECE elements (one netlink attribute each)."""
    from sgagent.backend.objects import Objects
    from sgagent.backend.transaction import PIECE

    def objs(keys):
        o = Objects()
        o.sets["h4"] = SetDef("ipv4_addr", frozenset(keys))
        return o
    a = objs(f"10.0.{i // 250}.{i % 250}" for i in range(3 * PIECE))
    b = objs(f"10.1.{i // 250}.{i % 250}" for i in range(3 * PIECE + 1))
    tx = diff(a, b)
    sizes = [len(op.keys) if isinstance(op, DeleteElements) else len(op.items) for op in tx]
    assert max(sizes) == PIECE and sum(sizes) == 6 * PIECE + 1
    k = fresh(a)
    k.execute(tx)
    assert k.listing() == fresh(b).listing()


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.integers(0, 2**32 - 1))
def test_a_diff_with_whole_intervals_leaves_what_a_fresh_load_leaves(seed):
    rnd = random.Random(seed)
    a_raw, b_raw = gen_document(rnd), gen_document(rnd)
    for x, y in ((a_raw, b_raw), (b_raw, members_changed(b_raw, rnd))):
        old = render(compile_document(parse_data(x)), "sets")
        new = render(compile_document(parse_data(y)), "sets")
        k = fresh(old)
        tx = diff(old, new, whole_intervals=True)
        assert not any(isinstance(op, (AddElements, DeleteElements))
                       and (new.sets.get(op.set) or old.sets[op.set]).interval for op in tx)
        k.execute(tx)
        assert k.listing() == fresh(new).listing()