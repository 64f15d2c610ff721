"""The input subset of SEMANTICS section 7: JSON, or YAML 1.2 without anchors, aliases or tags;
a key twice in one mapping is an error; an error quotes at most a short prefix of a value, and
an error report lists a bounded number of errors.  (Documents that would take gigabytes on the
old loader run under resource limits in tests/hostile/, not here.)"""

from __future__ import annotations

import json

import pytest
import yaml

from sgagent.daemon.config import EtcdSource as EtcdConfig
from sgagent.daemon.source_etcd import EtcdSource
from sgagent.daemon.sources import Invalid, Snapshot
from sgagent.load import MAX_ERRORS_SHOWN, DocumentError, format_loc, parse_bytes, parse_text
from sgagent.model import shown

from ._docs import raw, rule

HOST = """\
version: 1
host:
  instance: i-1
  nics: [{name: eth0, security_groups: [sg-web]}]
security_groups:
"""
WEB = """\
  sg-web:
    rules:
      - {direction: inbound, protocol: tcp, ports: 80, source: 0.0.0.0/0}
"""


def refused(text: str | bytes) -> list[str]:
    with pytest.raises(DocumentError) as info:
        parse_bytes(text.encode() if isinstance(text, str) else text, "doc")
    return info.value.errors


# --------------------------------------------------------------------------- anchors, aliases, tags

def test_an_alias_is_refused_where_it_is_with_line_and_column():
    errs = refused(HOST + "  sg-web:\n    rules:\n      - &r {direction: inbound, protocol: tcp,"
                   " source: 0.0.0.0/0}\n      - *r\n")
    assert errs == ["security_groups.sg-web.rules[0]: an anchor (&r) at line 8 column 9: "
                    "anchors and aliases are not accepted, write the value out"]


def test_a_merge_key_is_an_alias_too():
    errs = refused("base: &b {protocol: tcp}\nrule: {<<: *b, direction: inbound}\n")
    assert len(errs) == 1 and "anchor (&b)" in errs[0] and "line 1 column 7" in errs[0]


@pytest.mark.parametrize("text,tag", [
    ("version: !!int 1\n", "!!int"), ("version: !!str 1\n", "!!str"),
    ("a: !!python/object/apply:os.system [echo hi]\n", "!!python/object/apply:os.system"),
    ("a: !custom x\n", "!custom"), ("a: ! x\n", "(!)"), ("a: !!map {b: 1}\n", "!!map"),
    ("a: !!binary aGk=\n", "!!binary"), ("a: !!set {x}\n", "!!set"),
])
def test_tags_are_refused(text, tag):
    errs = refused(text)
    assert len(errs) == 1 and tag in errs[0] and "tags are not accepted" in errs[0]
    assert "line 1" in errs[0]


@pytest.mark.parametrize("text,words", [
    ("%TAG !e! tag:example.com,2000:\n---\na: 1\n", ["%TAG", "not accepted"]),
    ("%YAML 1.1\n---\na: 1\n", ["%YAML 1.1", "YAML 1.2"]),
])
def test_directives_other_than_yaml_1_2(text, words):
    errs = refused(text)
    assert len(errs) == 1 and all(w in errs[0] for w in words), errs


def test_yaml_1_2_directive_is_fine():
    assert parse_text("%YAML 1.2\n---\na: 1\n") == {"a": 1}


# --------------------------------------------------------------------------- duplicate keys

def test_a_group_defined_twice_in_yaml_is_refused():
    """The first group's rules used to vanish, and `validate` said valid."""
    errs = refused(HOST + WEB + WEB.replace("80", "443"))
    assert errs == ["security_groups: key 'sg-web' appears twice in one mapping "
                    "at line 9 column 3"]


def test_a_group_defined_twice_in_json_is_refused():
    data = json.dumps(raw({"sg-web": {"rules": [rule(ports=80)]}}), indent=1)
    data = data.replace('"security_groups": {', '"security_groups": {\n  "sg-web": {},', 1)
    errs = refused(data)
    assert len(errs) == 1 and errs[0].startswith("security_groups: key 'sg-web' appears twice")
    assert " at line " in errs[0]


@pytest.mark.parametrize("text,path", [
    ('{"version": 1, "version": 1}', "(document)"),
    ('{"host": {"nics": [{"name": "a", "name": "b"}]}}', "host.nics[0]"),
    ("host: {instance: a, instance: b}", "host"),
    ("rules:\n  - direction: inbound\n    direction: outbound\n", "rules[0]"),
    ("a: 1\nb: 2\na: 3\n", "(document)"),
    ("1: a\n1: b\n", "(document)"),
    ("1: a\n0x1: b\n", "(document)"),          # the same integer, spelt differently
])
def test_duplicate_keys_anywhere(text, path):
    errs = refused(text)
    assert len(errs) == 1 and errs[0].startswith(f"{path}: key ") and "twice" in errs[0], errs


def test_keys_equal_as_values_but_of_different_type():
    errs = refused("1: a\ntrue: b\n")
    assert errs == ["(document): key True is the same as the key 1 before it in one mapping "
                    "at line 2 column 1"]


def test_same_key_in_different_mappings_is_fine():
    assert parse_text("a: {x: 1}\nb: {x: 2}\n") == {"a": {"x": 1}, "b": {"x": 2}}
    assert parse_text('{"a": {"x": 1}, "b": {"x": 2}}') == {"a": {"x": 1}, "b": {"x": 2}}


@pytest.mark.parametrize("text", ["? [a, b]\n: 1\n", "{[a]: 1}", "? {a: 1}\n: 2\n"])
def test_collection_keys_are_refused(text):
    errs = refused(text)
    assert len(errs) == 1 and "a mapping key is a collection" in errs[0] and "line 1" in errs[0]


# --------------------------------------------------------------------------- YAML 1.2 core schema

@pytest.mark.parametrize("text,value", [
    ("yes", "yes"), ("no", "no"), ("on", "on"), ("off", "off"), ("y", "y"), ("Yes", "Yes"),
    ("0755", 755), ("0o17", 15), ("0x1F", 31), ("-1", -1), ("+5", 5), ("1:20", "1:20"),
    ("1_000", "1_000"), ("2024-01-01", "2024-01-01"), ("1e3", 1000.0), ("1.5", 1.5),
    (".5", 0.5), ("-.inf", float("-inf")), (".Inf", float("inf")), ("null", None),
    ("~", None), ("", None), ("NULL", None), ("true", True), ("False", False),
    ("TRUE", True), ("tRUE", "tRUE"), ("0b11", "0b11"), ("10.0.0.5", "10.0.0.5"),
    ("0.0.0.0/0", "0.0.0.0/0"), ("80-443", "80-443"), ("-1/-1", "-1/-1"), ("=", "="),
    ("'0755'", "0755"), ('"true"', "true"), ("|\n  yes\n", "yes\n"),
])
def test_plain_scalars_resolve_by_the_yaml_1_2_core_schema(text, value):
    assert parse_text(f"v: {text}\n") == {"v": value}


def test_nan_is_a_float():
    v = parse_text("v: .nan\n")["v"]
    assert v != v


def test_examples_of_the_readme_still_mean_the_same():
    doc = parse_bytes((HOST + "  sg-web:\n    account: 1001\n    rules:\n      - direction: in\n"
                       "        protocol: tcp\n        ports: 22,3389\n"
                       "        source: 0.0.0.0/0\n").encode())
    assert doc.security_groups["sg-web"].rules[0].ports == ((22, 22), (3389, 3389))
    assert doc.security_groups["sg-web"].account == "1001"


# --------------------------------------------------------------------------- JSON

@pytest.mark.parametrize("const", ["NaN", "Infinity", "-Infinity"])
def test_json_non_numbers_are_refused(const):
    errs = refused('{"version": %s}' % const)
    assert errs == [f"(document): not valid JSON: {const} is not a JSON number"]


@pytest.mark.parametrize("text", [
    '{"version": 1, "p": ' + "9" * 5000 + "}",
    "version: 1\np: " + "9" * 5000 + "\n",
    "version: 1\np: 0x" + "f" * 4000 + "\n",
])
def test_integers_too_long_to_read_are_refused_briefly(text):
    errs = refused(text)
    assert errs == ["p: an integer of more than 4300 digits at line " + errs[0].split(" line ")[1]]
    assert len(errs[0]) < 100


@pytest.mark.parametrize("opening,closing", [("[", "]"), ('{"a": ', "}")])
def test_json_nesting_is_bounded_like_yaml(opening, closing):
    """json.loads alone takes ~1000 levels; what comes after it (deepcopy, comparisons)
    recursed past the interpreter's limit."""
    text = '{"version": 1, "x": ' + opening * 300 + "1" + closing * 300 + "}"
    assert refused(text) == ["(document): nested more than 200 levels deep"]
    ok = '{"version": 1, "x": ' + opening * 150 + "1" + closing * 150 + "}"
    assert "nested" not in refused(ok)[0]


def test_deep_json_in_a_rule_with_an_error_does_not_crash():
    bad = raw({"sg-web": {"rules": [rule(ports=70000, description="PLACEHOLDER")]}})
    text = json.dumps(bad).replace('"PLACEHOLDER"', "[" * 600 + "]" * 600)
    errs = refused(text)
    assert errs == ["(document): nested more than 200 levels deep"]


# --------------------------------------------------------------------------- echoed values

def test_shown_cuts_long_values():
    assert shown("x" * 40) == repr("x" * 40)
    assert shown("x" * 1000) == repr("x" * 40) + "... (1000 characters)"
    assert shown(10 ** 100) == "1" + "0" * 39 + "... (101 digits)"
    assert shown(-(10 ** 100)).startswith("-100")
    assert shown(1 << 20000) == "an integer of 20001 bits"
    assert shown(12345) == "12345" and shown(None) == "None" and shown(True) == "True"
    assert len(shown(list(range(100000)))) < 120 and "(100000 items)" in shown(list(range(100000)))
    assert len(shown({"a" * 1000: ["b" * 1000] * 1000})) < 120
    assert shown("a\nb\x00") == repr("a\nb\x00")


HUGE = "7" * 1_000_000


@pytest.mark.parametrize("where", [
    lambda: raw({"sg-web": {"rules": [rule(ports=HUGE)]}}),
    lambda: raw({"sg-web": {"rules": [rule(ports="80," + HUGE)]}}),
    lambda: raw({"sg-web": {"rules": [rule(ports=int(HUGE[:4000]))]}}),
    lambda: raw({"sg-web": {"rules": [rule(ports=[HUGE])]}}),
    lambda: raw({"sg-web": {"rules": [rule(source=HUGE)]}}),
    lambda: raw({"sg-web": {"rules": [rule(source=[HUGE, HUGE])]}}),
    lambda: raw({"sg-web": {"rules": [rule(protocol=HUGE)]}}),
    lambda: raw({"sg-web": {"rules": [rule(direction=HUGE)]}}),
    lambda: raw({"sg-web": {"rules": [rule(policy=HUGE)]}}),
    lambda: raw({"sg-web": {"rules": [rule(priority=HUGE)]}}),
    lambda: raw({"sg-web": {"rules": [rule(priority=int(HUGE[:4000]))]}}),
    lambda: raw({"sg-web": {"rules": [rule(id=HUGE)]}}),
    lambda: raw({"sg-web": {"rules": [{"direction": "inbound", "service": HUGE,
                                       "source": "0.0.0.0/0"}]}}),
    lambda: raw({"sg-web": {"rules": [rule(source={"group": HUGE})]}}),
    lambda: raw({"sg-web": {"rules": [rule(source={"group": "sg-web", "account": HUGE})]}}),
    lambda: raw({"sg-web": {"members": [HUGE]}}),
    lambda: raw({"sg-web": {"members": [int(HUGE[:4000])]}}),
    lambda: raw({HUGE: {}}),
    lambda: raw({"sg-web": {HUGE: 1}}),
    lambda: raw({}, nics=[{"name": HUGE}]),
    lambda: raw({}, nics=[{"name": "eth0", "security_groups": [HUGE]}]),
    lambda: raw({}, nics=[{"name": "eth0", "role": HUGE}]),
    lambda: raw({}, network=HUGE),
    lambda: {"version": HUGE, "host": {}},
    lambda: {HUGE: 1},
])
def test_no_error_echoes_a_value_whole(where):
    text = json.dumps(where())
    errs = refused(text)
    assert errs and all(len(e) < 400 for e in errs), [e[:400] for e in errs]
    rendered = DocumentError(errs, "doc").render()
    assert len(rendered) < 400 * (len(errs) + 1)


def test_format_loc_cuts_long_and_odd_keys():
    assert format_loc(("security_groups", "sg-web", "rules", 3, "ports")) == \
        "security_groups.sg-web.rules[3].ports"
    long = format_loc(("security_groups", "k" * 10000))
    assert len(long) < 100 and long.endswith("... (10000 characters)")
    assert format_loc(("a\nb",)) == repr("a\nb")


# --------------------------------------------------------------------------- the error list is capped

def test_error_list_is_capped_when_shown():
    rules = [rule(ports=70000 + i) for i in range(1000)]
    with pytest.raises(DocumentError) as info:
        parse_bytes(json.dumps(raw({"sg-web": {"rules": rules}})).encode(), "doc")
    exc = info.value
    assert len(exc.errors) == 1000                       # all of them are kept ...
    lines = exc.render().splitlines()
    assert lines[0] == "doc: refused, 1000 errors"     # ... counted ...
    assert len(lines) == 1 + MAX_ERRORS_SHOWN + 1       # ... and the first few shown
    assert lines[-1] == f"  ... and {1000 - MAX_ERRORS_SHOWN} more errors"
    assert str(exc).count(";") == MAX_ERRORS_SHOWN


def test_a_short_error_list_is_shown_whole():
    exc = DocumentError(["a: x", "b: y"], "doc")
    assert exc.render() == "doc: refused, 2 errors\n  a: x\n  b: y"
    assert exc.lines() == ["a: x", "b: y"]


# --------------------------------------------------------------------------- etcd values

def _etcd(host: str, groups: dict[str, str], emitted: list | None = None) -> EtcdSource:
    src = EtcdSource(EtcdConfig(host="h1"), (emitted.append if emitted is not None
                                             else lambda ev: None))
    src._host_value = host.encode()
    src._groups = {k: v.encode() for k, v in groups.items()}
    return src


BINDING = "instance: i-1\nnics: [{name: eth0, security_groups: [sg-web]}]\n"
GROUP = "rules:\n  - {direction: inbound, protocol: tcp, ports: 80, source: 0.0.0.0/0}\n"


def test_etcd_values_refuse_aliases_before_anything_is_expanded():
    bomb = 'a: &a ["x","x","x","x","x","x","x","x","x"]\n' + "".join(
        f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi"))
    src = _etcd(BINDING, {"sg-web": GROUP + bomb})
    with pytest.raises(DocumentError) as info:
        src.assemble()
    assert info.value.errors == ["security_groups.sg-web.a: an anchor (&a) at line 3 column 4: "
                                 "anchors and aliases are not accepted, write the value out"]


def test_etcd_values_refuse_duplicate_keys():
    with pytest.raises(DocumentError) as info:
        _etcd(BINDING + "instance: i-2\n", {"sg-web": GROUP}).assemble()
    assert info.value.errors == ["host: key 'instance' appears twice in one mapping at line 3 "
                                 "column 1"]
    with pytest.raises(DocumentError) as info:
        _etcd(BINDING, {"sg-web": '{"rules": [], "rules": []}'}).assemble()
    assert info.value.errors[0].startswith("security_groups.sg-web: key 'rules' appears twice")


def test_etcd_publish_survives_keys_that_are_not_text():
    """`json.dumps(sort_keys=True)` of an assembled document raised TypeError on `1: x`."""
    emitted: list = []
    _etcd(BINDING, {"sg-web": GROUP + "1: x\n"}, emitted)._publish(False)
    assert len(emitted) == 1 and isinstance(emitted[0], Invalid)
    assert any("security_groups.sg-web" in e for e in emitted[0].error.errors)


def test_etcd_publish_of_a_good_document_is_a_snapshot_of_plain_json():
    emitted: list = []
    _etcd(BINDING, {"sg-web": GROUP}, emitted)._publish(False)
    assert len(emitted) == 1 and isinstance(emitted[0], Snapshot)
    assert json.loads(emitted[0].raw)["security_groups"]["sg-web"]["rules"][0]["ports"] == 80
    assert yaml.safe_load(emitted[0].raw) == json.loads(emitted[0].raw)
