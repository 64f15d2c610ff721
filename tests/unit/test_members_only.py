"""A document that differs from the last one only in members (load.DocumentCache and
compile_document's ``previous``): validated and compiled by touching the members only, with
exactly the result of doing it whole, and the same refusals."""

from __future__ import annotations

import copy
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sgagent.compiler import compile_document
from sgagent.load import DocumentCache, DocumentError, parse_data

from .test_compiler import HOSTS, gen_document


def other_members(raw: dict, rnd: random.Random) -> dict:
    new = copy.deepcopy(raw)
    for g in new["security_groups"].values():
        g["members"] = [str(h) for h in HOSTS if rnd.randrange(2)
                        and (h.version == 4 or raw["host"].get("network") != "classic")]
    return new


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.integers(0, 2**32 - 1))
def test_same_document_and_ruleset_as_a_whole_parse(seed):
    rnd = random.Random(seed)
    raw = gen_document(rnd)
    cache = DocumentCache()
    old = cache.parse_data(raw)
    old_rs = compile_document(old)
    new_raw = other_members(raw, rnd)
    doc = cache.parse_data(new_raw)
    assert doc == parse_data(new_raw)
    assert doc.host is old.host  # the shortcut was taken: nothing else was made again
    rs = compile_document(doc, (old, old_rs))
    assert rs == compile_document(parse_data(new_raw))
    same_inner = all(bool(g.members) == bool(old.security_groups[n].members)
                     for n, g in doc.security_groups.items())
    assert (rs.chains is old_rs.chains) == same_inner


def test_bad_members_are_refused_with_their_path():
    rnd = random.Random(7)
    raw = gen_document(rnd)
    cache = DocumentCache()
    cache.parse_data(raw)
    bad = copy.deepcopy(raw)
    name = next(iter(bad["security_groups"]))
    bad["security_groups"][name]["members"] = ["10.0.0.1", "not-an-address"]
    with pytest.raises(DocumentError) as exc:
        cache.parse_data(bad)
    assert exc.value.errors == [f"security_groups.{name}.members[1]: 'not-an-address' is not an "
                                "address"]


def test_ipv6_member_on_a_classic_network_is_refused():
    raw = {"version": 1, "host": {"instance": "i", "account": "1", "network": "classic",
                                  "nics": [{"name": "eth0", "role": "intranet",
                                            "security_groups": ["a"]}]},
           "security_groups": {"a": {"members": ["10.0.0.1"]}}}
    cache = DocumentCache()
    cache.parse_data(raw)
    bad = copy.deepcopy(raw)
    bad["security_groups"]["a"]["members"].append("2001:db8::1")
    with pytest.raises(DocumentError) as exc:
        cache.parse_data(bad)
    assert "security_groups.a.members[1]: IPv6 2001:db8::1 on a classic network" in exc.value.errors


def test_any_other_change_is_parsed_and_compiled_whole():
    rnd = random.Random(3)
    raw = gen_document(rnd)
    cache = DocumentCache()
    old = cache.parse_data(raw)
    old_rs = compile_document(old)
    changed = other_members(raw, rnd)
    changed["host"]["ordering"] = "sequential" if raw["host"].get("ordering") == "priority" \
        else "priority"
    doc = cache.parse_data(changed)
    assert doc.host is not old.host and doc == parse_data(changed)
    assert compile_document(doc, (old, old_rs)) == compile_document(parse_data(changed))


def test_a_rule_changed_beside_unchanged_members_is_seen():
    raw = {"version": 1, "host": {"instance": "i", "account": "1", "network": "vpc",
                                  "nics": [{"name": "eth0", "role": "vpc",
                                            "security_groups": ["a", "b"]}]},
           "security_groups": {
               "a": {"members": ["10.0.0.1"], "rules": [
                   {"direction": "inbound", "protocol": "tcp", "ports": 22,
                    "source": "10.0.0.0/8"}]},
               "b": {"members": ["10.0.0.2"]}}}
    cache = DocumentCache()
    old = cache.parse_data(raw)
    old_rs = compile_document(old)
    new = copy.deepcopy(raw)
    new["security_groups"]["a"]["rules"][0]["ports"] = 23   # a's members stay
    new["security_groups"]["b"]["members"].append("10.0.0.3")  # b's change
    doc = cache.parse_data(new)
    assert doc == parse_data(new) and doc.security_groups["a"].rules[0].ports == ((23, 23),)
    assert compile_document(doc, (old, old_rs)) == compile_document(parse_data(new))
