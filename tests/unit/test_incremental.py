"""Incremental validation and compilation (issue 10): a document edited in a few groups is
validated group by group (load.DocumentCache) and compiled chain by chain (compile_document's
``previous``), with exactly the result of doing it whole -- the same Document, the same
errors in the same order, the same ruleset -- over random sequences of edits, valid or not."""

from __future__ import annotations

import copy
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sgagent.backend.fake import FakeKernel
from sgagent.backend.transaction import NO_TABLE, diff, replace
from sgagent.compiler import compile_document
from sgagent.load import DocumentCache, DocumentError, parse_data
from sgagent.nft.backend import NftBackend
from sgagent.nft.names import parse_comment
from sgagent.nft.render import render
from sgagent.nft.script import script

from .test_compiler import GROUPS, PORT_SPECS, V4_HOSTS, gen_document


def _rules(doc: dict) -> list[tuple[str, int]]:
    return [(g, i) for g, body in doc["security_groups"].items()
            for i in range(len(body.get("rules", ())))]


def edit(raw: dict, rnd: random.Random) -> dict:
    """``raw`` with one random edit: most keep it valid, some break it."""
    new = copy.deepcopy(raw)
    groups = new["security_groups"]
    kind = rnd.choice(["port", "port", "port", "policy", "drop_rule", "add_rule", "add_group",
                       "remove_group", "binding", "members", "members_and_rule", "type",
                       "bad_port", "bad_ref", "bad_peer", "bad_name", "dup_id", "bad_member",
                       "account", "add_nic", "remove_nic", "unchanged"])
    rules = _rules(new)
    if kind in ("port", "members_and_rule") and rules:
        g, i = rnd.choice(rules)
        rule = groups[g]["rules"][i]
        rule.pop("service", None)
        rule["protocol"] = rnd.choice(["tcp", "udp"])
        rule["ports"] = rnd.choice([p for p in PORT_SPECS if p is not None])
    if kind in ("members", "members_and_rule"):
        g = rnd.choice(list(groups))
        groups[g]["members"] = rnd.sample(V4_HOSTS, rnd.randint(0, 2))
    elif kind == "policy" and rules:
        g, i = rnd.choice(rules)
        groups[g]["rules"][i]["policy"] = rnd.choice(["accept", "drop", "reject"])
    elif kind == "drop_rule" and rules:
        g, i = rnd.choice(rules)
        del groups[g]["rules"][i]
    elif kind == "add_rule":
        g = rnd.choice(list(groups))
        peer = rnd.choice([{"group": rnd.choice(list(groups))}, "10.9.0.0/16"])
        rule = {"direction": "inbound", "protocol": "tcp", "ports": 8080, "source": [peer]}
        if new["host"].get("network") == "classic":
            rule["nic"] = "intranet"
            rule["source"] = ["10.1.2.3/32"]
        groups[g].setdefault("rules", []).insert(rnd.randint(0, len(groups[g]["rules"])), rule)
    elif kind == "add_group":
        name = f"new{rnd.randrange(3)}"
        target = rnd.choice(list(groups))
        groups[name] = {"members": ["10.7.0.1"], "rules": [
            {"direction": "outbound", "protocol": "udp", "ports": 53,
             "destination": [{"group": target}] if rnd.randrange(2) else ["10.7.0.0/24"],
             **({"nic": "intranet"} if new["host"].get("network") == "classic" else {})}]}
        if rnd.randrange(2):
            rnd.choice(list(groups.values())).setdefault("rules", [])
    elif kind == "remove_group" and len(groups) > 1:
        del groups[rnd.choice(list(groups))]  # may leave references or bindings dangling
    elif kind == "binding":
        nic = rnd.choice(new["host"]["nics"])
        nic["security_groups"] = rnd.sample(list(groups), rnd.randint(0, len(groups)))
    elif kind == "type":
        g = rnd.choice(list(groups))
        groups[g]["type"] = rnd.choice(["basic", "enterprise"])
        groups[g].pop("inner_access", None)
    elif kind == "bad_port" and rules:
        g, i = rnd.choice(rules)
        groups[g]["rules"][i]["ports"] = rnd.choice([70000, "x", [1, 99999]])
    elif kind == "bad_ref" and rules:
        g, i = rnd.choice(rules)
        rule = groups[g]["rules"][i]
        key = "source" if rule["direction"] == "inbound" else "destination"
        rule[key] = [{"group": rnd.choice(["nowhere", *GROUPS])}]
    elif kind == "bad_peer" and rules:
        g, i = rnd.choice(rules)
        rule = groups[g]["rules"][i]
        key = "source" if rule["direction"] == "inbound" else "destination"
        rule[key] = rnd.choice(["10.0.0.1/8", "2001:db8::/32", "nonsense"])
    elif kind == "bad_name":
        groups[rnd.choice(["bad name", "-x", "ok"])] = {"members": []}
    elif kind == "dup_id" and len(rules) >= 1:
        g, i = rnd.choice(rules)
        groups[g]["rules"][i]["id"] = "same"
        groups[g].setdefault("rules", []).append({**groups[g]["rules"][i]})
    elif kind == "bad_member":
        g = rnd.choice(list(groups))
        groups[g]["members"] = rnd.choice([["10.0.0.1", "x"], ["2001:db8::9"], "10.0.0.1"])
    elif kind == "add_nic" and new["host"].get("network") != "classic":
        new["host"]["nics"].append({"name": f"tap{rnd.randrange(3)}",  # may be there already
                                    "security_groups": rnd.sample(list(groups), 1)})
    elif kind == "remove_nic" and len(new["host"]["nics"]) > 1:
        del new["host"]["nics"][rnd.randrange(len(new["host"]["nics"]))]
    elif kind == "account":
        g = rnd.choice(list(groups))
        groups[g]["account"] = rnd.choice(["1", "2", None])
    return new


def fresh_kernel(objs) -> FakeKernel:
    k = FakeKernel(parse_comment)
    k.execute(replace(NO_TABLE, objs))
    return k


def fresh(raw: dict):
    try:
        return parse_data(raw)
    except DocumentError as exc:
        return exc.errors


def cached(cache: DocumentCache, raw: dict):
    try:
        return cache.parse_data(raw)
    except DocumentError as exc:
        return exc.errors


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.integers(0, 2**32 - 1))
def test_edits_validate_as_a_whole_parse(seed):
    rnd = random.Random(seed)
    raw = gen_document(rnd)
    cache = DocumentCache()
    cache.parse_data(raw)
    for _ in range(6):
        new = edit(raw, rnd)
        want = fresh(new)
        assert cached(cache, new) == want
        if not isinstance(want, list):
            raw = new  # the cache moves on from an accepted document only


def test_an_unchanged_group_is_the_same_object():
    rnd = random.Random(11)
    raw = gen_document(rnd)
    while not any(g.get("rules") for g in raw["security_groups"].values()):
        raw = gen_document(rnd)
    cache = DocumentCache()
    old = cache.parse_data(raw)
    new = copy.deepcopy(raw)
    name = next(n for n, g in new["security_groups"].items() if g.get("rules"))
    new["security_groups"][name]["rules"][0]["priority"] = 3
    doc = cache.parse_data(new)
    assert doc == parse_data(new) and doc.host is old.host
    for n, g in doc.security_groups.items():
        assert (g is old.security_groups[n]) == (n != name)


def test_removing_a_referenced_group_is_refused_with_the_referrers_paths():
    raw = {"version": 1, "host": {"instance": "i", "account": "1",
                                  "nics": [{"name": "eth0", "security_groups": ["a"]}]},
           "security_groups": {
               "a": {"rules": [{"direction": "inbound", "protocol": "tcp", "ports": 22,
                                "source": {"group": "b"}}]},
               "b": {"members": ["10.0.0.1"]}}}
    cache = DocumentCache()
    cache.parse_data(raw)
    new = copy.deepcopy(raw)
    del new["security_groups"]["b"]
    with pytest.raises(DocumentError) as exc:
        cache.parse_data(new)
    assert exc.value.errors == fresh(new)
    assert exc.value.errors == ["security_groups.a.rules[0].source.group: group 'b' is not "
                                "defined in security_groups"]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.integers(0, 2**32 - 1))
def test_edits_compile_as_a_whole_compile(seed):
    rnd = random.Random(seed)
    raw = gen_document(rnd)
    cache = DocumentCache()
    doc = cache.parse_data(raw)
    rs = compile_document(doc)
    for _ in range(6):
        new = edit(raw, rnd)
        try:
            new_doc = cache.parse_data(new)
        except DocumentError:
            continue
        new_rs = compile_document(new_doc, (doc, rs))
        assert new_rs == compile_document(parse_data(new))
        raw, doc, rs = new, new_doc, new_rs


def test_only_the_chains_of_the_edited_group_are_compiled_again():
    raw = {"version": 1, "host": {"instance": "i", "account": "1", "nics": [
               {"name": "eth0", "security_groups": ["a"]},
               {"name": "eth1", "security_groups": ["b"]}]},
           "security_groups": {
               "a": {"members": ["10.0.0.1"], "rules": [
                   {"direction": "inbound", "protocol": "tcp", "ports": 22,
                    "source": {"group": "b"}}]},
               "b": {"members": ["10.0.0.2"], "rules": [
                   {"direction": "inbound", "protocol": "tcp", "ports": 80,
                    "source": "10.0.0.0/8"}]}}}
    cache = DocumentCache()
    old = cache.parse_data(raw)
    old_rs = compile_document(old)
    new = copy.deepcopy(raw)
    new["security_groups"]["b"]["rules"][0]["ports"] = 81
    doc = cache.parse_data(new)
    rs = compile_document(doc, (old, old_rs))
    assert rs == compile_document(parse_data(new))
    for direction in ("inbound", "outbound"):
        assert rs.chain("eth0", direction) is old_rs.chain("eth0", direction)
        assert rs.chain("eth1", direction) is not old_rs.chain("eth1", direction)
    assert rs.groups[0] is old_rs.groups[0]  # b's members: the same set


def _same_objects(a, b) -> bool:
    return (a.counters, a.sets, a.chains, a.refs, a.exact, a.plans.keys()) == \
        (b.counters, b.sets, b.chains, b.refs, b.exact, b.plans.keys())


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.integers(0, 2**32 - 1))
def test_edits_render_as_a_whole_render_and_diff_in_their_size(seed):
    """The backend renders again only the NIC chains that changed (chain_update): the objects
    are those of a fresh render; the diff over the names it says it changed finds what the
    diff over the whole table finds; the fake kernel takes it and is left with what a fresh
    load leaves."""
    rnd = random.Random(seed)
    raw = gen_document(rnd)
    if rnd.randrange(2):  # more NICs, so that some chains stay as they were
        names = list(raw["security_groups"])
        if raw["host"].get("network") != "classic":
            raw["host"]["nics"] += [{"name": f"vm{i}", "security_groups": [names[i % len(names)]]}
                                    for i in range(3)]
    cache = DocumentCache()
    doc = cache.parse_data(raw)
    rs = compile_document(doc)
    kernel = FakeKernel(parse_comment)
    be = NftBackend(kernel=kernel)
    be.apply(rs)
    objs = be.render(rs)
    for _ in range(5):
        new = edit(raw, rnd)
        try:
            new_doc = cache.parse_data(new)
        except DocumentError:
            continue
        new_rs = compile_document(new_doc, (doc, rs))
        new_objs = be.render(new_rs, objs, rs)
        assert _same_objects(new_objs, render(new_rs, "sets"))
        if new_objs.changed is not None:
            unhinted = copy.copy(new_objs)
            unhinted.changed = None
            hinted, whole = diff(objs, new_objs), diff(objs, unhinted)
            assert sorted(script(hinted).splitlines()) == sorted(script(whole).splitlines())
        assert be.apply(new_rs).mode == "delta"
        assert kernel.listing() == fresh_kernel(render(new_rs, "sets")).listing()
        raw, doc, rs, objs = new, new_doc, new_rs, new_objs


def test_an_edit_renders_only_its_nics_chains():
    raw = {"version": 1, "host": {"instance": "i", "account": "1", "nics": [
               {"name": f"vm{i}", "security_groups": [f"g{i}"]} for i in range(3)]},
           "security_groups": {f"g{i}": {"members": [f"10.0.0.{i + 1}"], "rules": [
               {"direction": "inbound", "protocol": "tcp", "ports": 22 + i,
                "source": ["10.1.0.0/16", {"group": f"g{(i + 1) % 3}"}]}]}
               for i in range(3)}}
    cache = DocumentCache()
    old_doc = cache.parse_data(raw)
    old_rs = compile_document(old_doc)
    be = NftBackend(kernel=FakeKernel(parse_comment))
    old = be.render(old_rs)
    new = copy.deepcopy(raw)
    new["security_groups"]["g1"]["rules"][0]["ports"] = 99
    rs = compile_document(cache.parse_data(new), (old_doc, old_rs))
    objs = be.render(rs, old, old_rs)
    assert _same_objects(objs, render(rs, "sets"))
    changed = set(objs.changed.chains)
    assert "in_vm1" in changed and not {"in_vm0", "in_vm2", "out_vm0"} & changed
    for name, entry in objs.chains.items():  # the others' are the very objects
        if name not in changed:
            assert entry is old.chains[name]


def test_a_chain_looking_up_a_group_whose_members_changed_is_rendered_again():
    """vm0's chain is the same object, but g1's members it looks up changed along with a
    rule of g1: vm0's address maps are made again too."""
    raw = {"version": 1, "host": {"instance": "i", "account": "1", "nics": [
               {"name": "vm0", "security_groups": ["g0"]},
               {"name": "vm1", "security_groups": ["g1"]}]},
           "security_groups": {
               "g0": {"rules": [{"direction": "inbound", "protocol": "tcp", "ports": 22,
                                 "source": {"group": "g1"}}]},
               "g1": {"members": ["10.0.0.1"], "rules": [
                   {"direction": "inbound", "protocol": "tcp", "ports": 80,
                    "source": "10.1.0.0/16"}]}}}
    cache = DocumentCache()
    old_doc = cache.parse_data(raw)
    old_rs = compile_document(old_doc)
    be = NftBackend(kernel=FakeKernel(parse_comment))
    old = be.render(old_rs)
    new = copy.deepcopy(raw)
    new["security_groups"]["g1"]["members"] = ["10.0.0.2"]
    new["security_groups"]["g1"]["rules"][0]["ports"] = 81
    rs = compile_document(cache.parse_data(new), (old_doc, old_rs))
    assert rs.chain("vm0", "inbound") is old_rs.chain("vm0", "inbound")
    objs = be.render(rs, old, old_rs)
    assert _same_objects(objs, render(rs, "sets"))
