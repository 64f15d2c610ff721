"""Change-sized validation and compilation of the host section (issue 10): a binding added or
removed, a NIC added, removed, renamed or edited is validated NIC by NIC (load.DocumentCache)
and compiled chain by chain, with exactly the result of doing it whole -- the same Document,
the same errors in the same order, the same ruleset -- over random sequences of edits of the
NICs (valid or not) mixed with edits of the groups."""

from __future__ import annotations

import copy
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sgagent.compiler import compile_document
from sgagent.load import DocumentCache, DocumentError, parse_data, same_data

from .test_compiler import V4_HOSTS, gen_document
from .test_incremental import cached, edit, fresh


def host_edit(raw: dict, rnd: random.Random) -> dict:
    """``raw`` with one random edit of its NICs (most valid, some not), or now and then of
    another part of the host section or of a group."""
    new = copy.deepcopy(raw)
    host = new["host"]
    nics = host["nics"]
    groups = list(new["security_groups"])
    classic = host.get("network") == "classic"
    kind = rnd.choice(["bind", "bind", "unbind", "unbind", "reorder", "add_nic", "add_nic",
                       "remove_nic", "rename", "log_default", "addresses", "swap_nics",
                       "bad_name", "bad_role", "bad_field", "bad_log_default", "int_for_bool",
                       "bad_binding", "dup_binding", "dup_nic", "not_a_mapping", "no_nics",
                       "nics_not_a_list", "host_other", "group_edit", "unchanged"])
    nic = rnd.choice(nics)
    if kind == "bind":
        free = [g for g in groups if g not in nic["security_groups"]]
        if free:
            nic["security_groups"].insert(rnd.randint(0, len(nic["security_groups"])),
                                          rnd.choice(free))
    elif kind == "unbind" and nic["security_groups"]:
        nic["security_groups"].pop(rnd.randrange(len(nic["security_groups"])))
    elif kind == "reorder":
        rnd.shuffle(nic["security_groups"])
    elif kind == "add_nic" and not classic:
        nics.insert(rnd.randint(0, len(nics)),
                    {"name": f"tap{rnd.randrange(3)}",  # may be there already
                     "security_groups": rnd.sample(groups, rnd.randint(0, len(groups)))})
    elif kind == "remove_nic" and len(nics) > 1:
        nics.pop(rnd.randrange(len(nics)))
    elif kind == "rename":
        nic["name"] = rnd.choice(["eth0", "eth1", "eth9", "vm-7"])
    elif kind == "log_default":
        nic["log_default"] = not nic.get("log_default", False)
    elif kind == "addresses":
        nic["addresses"] = rnd.sample(V4_HOSTS + ["2001:db8::5"], rnd.randint(0, 2))
    elif kind == "swap_nics" and len(nics) > 1:
        nics.reverse()
    elif kind == "bad_name":
        nic["name"] = rnd.choice(["", "has space", "x" * 20, 7])
    elif kind == "bad_role":
        nic["role"] = rnd.choice(["internet", "intranet", "vpc", "router", 3])
    elif kind == "bad_field":
        nic["colour"] = "blue"
    elif kind == "bad_log_default":
        nic["log_default"] = rnd.choice(["yes", None, 2])
    elif kind == "int_for_bool":
        # equal by ==, not by type: a cache comparing with == alone would take 1 for true
        nic["log_default"] = True
        new2 = copy.deepcopy(new)
        new2["host"]["nics"][nics.index(nic)]["log_default"] = 1
        return new2 if rnd.randrange(2) else new
    elif kind == "bad_binding":
        nic["security_groups"] = rnd.choice([["nowhere"], "ga", [1], None])
    elif kind == "dup_binding" and nic["security_groups"]:
        nic["security_groups"].append(nic["security_groups"][0])
    elif kind == "dup_nic":
        nics.append(copy.deepcopy(nic))
    elif kind == "not_a_mapping":
        nics[rnd.randrange(len(nics))] = rnd.choice(["eth0", None, ["eth0"]])
    elif kind == "no_nics":
        host["nics"] = []
    elif kind == "nics_not_a_list":
        host["nics"] = rnd.choice([{"name": "eth0"}, "eth0", None])
    elif kind == "host_other":
        key = rnd.choice(["account", "ordering", "instance", "defaults"])
        host[key] = {"account": "2", "ordering": "sequential", "instance": "i-2",
                     "defaults": {"inbound": "accept"}}[key]
    elif kind == "group_edit":
        return edit(new, rnd)
    return new


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.integers(0, 2**32 - 1))
def test_host_edits_validate_as_a_whole_parse(seed):
    rnd = random.Random(seed)
    raw = gen_document(rnd)
    cache = DocumentCache()
    cache.parse_data(raw)
    for _ in range(8):
        new = host_edit(raw, rnd)
        want = fresh(new)
        assert cached(cache, new) == want
        if not isinstance(want, list):
            raw = new  # the cache moves on from an accepted document only


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.integers(0, 2**32 - 1))
def test_host_edits_compile_as_a_whole_compile(seed):
    rnd = random.Random(seed)
    raw = gen_document(rnd)
    cache = DocumentCache()
    doc = cache.parse_data(raw)
    rs = compile_document(doc)
    for _ in range(8):
        new = host_edit(raw, rnd)
        try:
            new_doc = cache.parse_data(new)
        except DocumentError:
            continue
        new_rs = compile_document(new_doc, (doc, rs))
        assert new_rs == compile_document(parse_data(new))
        raw, doc, rs = new, new_doc, new_rs


def _hypervisor(nics: int = 4) -> dict:
    groups = {f"g{i}": {"members": [f"10.0.{i}.1"], "rules": [
        {"direction": "inbound", "protocol": "tcp", "ports": 22 + i,
         "source": ["10.1.0.0/16", {"group": f"g{(i + 1) % nics}"}]},
        {"direction": "outbound", "protocol": "udp", "ports": 53,
         "destination": "10.2.0.0/16"}]} for i in range(nics)}
    return {"version": 1, "host": {"instance": "i", "account": "1", "nics": [
        {"name": f"vm{i}", "security_groups": [f"g{i}"]} for i in range(nics)]},
        "security_groups": groups}


def test_a_binding_change_keeps_every_group_and_the_other_nics_and_chains():
    raw = _hypervisor()
    cache = DocumentCache()
    old = cache.parse_data(raw)
    old_rs = compile_document(old)
    new = copy.deepcopy(raw)
    new["host"]["nics"][1]["security_groups"].append("g3")
    doc = cache.parse_data(new)
    assert doc == parse_data(new)
    assert all(doc.security_groups[n] is g for n, g in old.security_groups.items())
    assert [a is b for a, b in zip(doc.host.nics, old.host.nics)] == [True, False, True, True]
    assert doc.host.failsafe is old.host.failsafe
    rs = compile_document(doc, (old, old_rs))
    assert rs == compile_document(parse_data(new))
    for nic in ("vm0", "vm2", "vm3"):
        for direction in ("inbound", "outbound"):
            assert rs.chain(nic, direction) is old_rs.chain(nic, direction)
    assert rs.chain("vm1", "inbound") is not old_rs.chain("vm1", "inbound")


def test_a_nic_added_and_removed_keeps_the_others():
    raw = _hypervisor()
    cache = DocumentCache()
    old = cache.parse_data(raw)
    new = copy.deepcopy(raw)
    del new["host"]["nics"][0]
    new["host"]["nics"].append({"name": "vm9", "security_groups": ["g0", "g1"]})
    doc = cache.parse_data(new)
    assert doc == parse_data(new)
    assert doc.host.nics[:3] == old.host.nics[1:]
    assert all(a is b for a, b in zip(doc.host.nics[:3], old.host.nics[1:]))


def test_a_binding_of_an_undefined_group_is_refused_with_its_path():
    raw = _hypervisor()
    cache = DocumentCache()
    cache.parse_data(raw)
    new = copy.deepcopy(raw)
    new["host"]["nics"][2]["security_groups"] += ["nowhere", "g2"]
    with pytest.raises(DocumentError) as exc:
        cache.parse_data(new)
    assert exc.value.errors == fresh(new) == [
        "host.nics[2].security_groups[1]: group 'nowhere' is not defined in security_groups",
        "host.nics[2].security_groups[2]: group 'g2' is bound twice"]


def test_a_nic_listed_twice_is_refused_though_each_is_valid_by_itself():
    raw = _hypervisor()
    cache = DocumentCache()
    cache.parse_data(raw)
    new = copy.deepcopy(raw)
    new["host"]["nics"].append({"name": "vm0", "security_groups": []})
    with pytest.raises(DocumentError) as exc:
        cache.parse_data(new)
    assert exc.value.errors == fresh(new) == ["host.nics[4].name: NIC 'vm0' is listed twice"]


def test_an_integer_for_true_is_refused_as_a_whole_parse_refuses_it():
    raw = _hypervisor()
    raw["host"]["nics"][0]["log_default"] = True
    cache = DocumentCache()
    cache.parse_data(raw)
    new = copy.deepcopy(raw)
    new["host"]["nics"][0]["log_default"] = 1
    assert new == raw  # by == alone, the same document
    with pytest.raises(DocumentError) as exc:
        cache.parse_data(new)
    assert exc.value.errors == fresh(new)
    assert exc.value.errors[0].startswith("host.nics[0].log_default:")


def test_same_data_tells_types_apart():
    assert same_data({"a": [1, "x", None]}, {"a": [1, "x", None]})
    assert not same_data({"a": 1}, {"a": True})
    assert not same_data([1], [1.0])
    assert not same_data([1], (1,))
    assert not same_data({"a": 1}, {"a": 1, "b": 2})


def test_the_rules_around_an_edited_one_are_the_same_objects():
    raw = _hypervisor()
    rules = raw["security_groups"]["g1"]["rules"]
    rules += [{"direction": "inbound", "protocol": "tcp", "ports": 1000 + i,
               "source": "10.3.0.0/16"} for i in range(6)]
    cache = DocumentCache()
    old = cache.parse_data(raw)
    old_rs = compile_document(old)
    for change in ("edit", "insert", "delete"):
        new = copy.deepcopy(raw)
        new_rules = new["security_groups"]["g1"]["rules"]
        if change == "edit":
            new_rules[3]["ports"] = 99
        elif change == "insert":
            new_rules.insert(3, {"direction": "outbound", "protocol": "udp", "ports": 7,
                                 "destination": "10.4.0.0/16"})
        else:
            del new_rules[3]
        doc = cache.parse_data(new)
        assert doc == parse_data(new)
        was, now = old.security_groups["g1"].rules, doc.security_groups["g1"].rules
        same = [any(r is w for w in was) for r in now]
        assert same == [i != 3 for i in range(len(now))] if change != "delete" \
            else all(same)
        assert compile_document(doc, (old, old_rs)) == compile_document(parse_data(new))
        assert all(doc.security_groups[n] is g for n, g in old.security_groups.items()
                   if n != "g1")
        raw, old, old_rs = new, doc, compile_document(doc, (old, old_rs))


def test_a_rule_whose_true_became_1_is_refused_as_a_whole_parse_refuses_it():
    raw = _hypervisor()
    raw["security_groups"]["g0"]["rules"][0]["log"] = True
    cache = DocumentCache()
    cache.parse_data(raw)
    new = copy.deepcopy(raw)
    new["security_groups"]["g0"]["rules"][0]["log"] = 1
    new["security_groups"]["g0"]["rules"][1]["ports"] = 54  # so that the group changed
    with pytest.raises(DocumentError) as exc:
        cache.parse_data(new)
    assert exc.value.errors == fresh(new)
    assert exc.value.errors[0].startswith("security_groups.g0.rules[0].log:")
