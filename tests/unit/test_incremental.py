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

from sgagent.compiler import compile_document
from sgagent.load import DocumentCache, DocumentError, parse_data

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

