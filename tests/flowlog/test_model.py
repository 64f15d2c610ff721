"""SEMANTICS section 9 in the document and the oracle: log fields, audit rules, explain."""

from __future__ import annotations

import json

import pytest
import yaml

from sgagent.cli import main
from sgagent.compiler import compile_document
from sgagent.evaluator import AuditMatch, evaluate
from sgagent.ir import LogSpec
from sgagent.model import LogRate

from ..unit._docs import errors, load, pkt, raw, rule

WEB = "192.0.2.10"


def test_log_fields_default_and_spellings():
    doc = load(raw({"a": {"rules": [
        rule(id="plain"),
        rule(id="logged", log=True),
        rule(id="rate", log=True, log_rate="600/minute"),
        rule(id="burst", log=True, log_rate="5/s burst 7"),
        rule(id="map", log=True, log_rate={"rate": 3, "burst": 4}),
        rule(id="audit", mode="AUDIT", policy="drop"),
    ]}}, nics=[{"name": "eth0", "security_groups": ["a"], "log_default": True}]))
    rules = {r.id: r for r in doc.security_groups["a"].rules}
    assert (rules["plain"].log, rules["plain"].log_rate, rules["plain"].mode) == (False, None, "enforce")
    assert rules["rate"].log_rate == LogRate(600, "minute", 1200)
    assert rules["burst"].log_rate == LogRate(5, "second", 7)
    assert rules["map"].log_rate == LogRate(3, "second", 4)
    assert rules["audit"].mode == "audit"
    assert doc.host.nics[0].log_default is True


@pytest.mark.parametrize("fields,path,words", [
    ({"log": "yes"}, "rules[0].log", "true or false"),
    ({"log_rate": 10}, "rules[0].log_rate", "needs log: true or mode: audit"),
    ({"log": True, "log_rate": "5/day"}, "rules[0].log_rate", "is not a log rate"),
    ({"log": True, "log_rate": 0}, "rules[0].log_rate", "1..100000"),
    ({"log": True, "log_rate": {"rate": 5, "burst": 0}}, "rules[0].log_rate", "burst"),
    ({"log": True, "log_rate": {"rate": 5, "every": 1}}, "rules[0].log_rate", "log_rate is a rate"),
    ({"mode": "staged"}, "rules[0].mode", "mode"),
])
def test_log_field_errors_name_the_field(fields, path, words):
    errs = errors(raw({"a": {"rules": [rule(**fields)]}}))
    assert any(path in e and words in e for e in errs), errs


def test_log_default_must_be_a_bool():
    errs = errors(raw({}, nics=[{"name": "eth0", "log_default": "on"}]))
    assert any("log_default" in e for e in errs), errs


def test_logged_decision_and_default_in_the_verdict():
    doc = load(raw({"a": {"rules": [rule(id="ssh", ports=22, log=True),
                                    rule(id="web", ports=80)]}},
                   nics=[{"name": "eth0", "security_groups": ["a"], "log_default": True}]))
    assert evaluate(doc, pkt(WEB, port=22)).log is True
    assert evaluate(doc, pkt(WEB, port=80)).log is False
    v = evaluate(doc, pkt(WEB, port=81))
    assert (v.rule, v.verdict, v.log) == ("default", "drop", True)


def test_audit_rule_never_decides_and_is_reported_where_reached():
    doc = load(raw({"a": {"rules": [
        rule(id="trial-deny", policy="drop", mode="audit", ports="20-30", priority=1),
        rule(id="ssh", ports=22, priority=5),
        rule(id="early", ports=25, priority=1, policy="accept"),
    ]}}))
    v = evaluate(doc, pkt(WEB, port=22))  # the audit drop is reached first: would drop
    assert (v.verdict, v.rule) == ("accept", "ssh")
    assert v.audits == (AuditMatch("a", "trial-deny", "drop"),)
    v = evaluate(doc, pkt(WEB, port=23))  # the default decides; the audit rule is reported
    assert (v.verdict, v.rule, v.audits) == ("drop", "default",
                                              (AuditMatch("a", "trial-deny", "drop"),))
    # priority 1 both; drop comes before accept in order, so the audit drop is reached first
    v = evaluate(doc, pkt(WEB, port=25))
    assert (v.rule, v.audits) == ("early", (AuditMatch("a", "trial-deny", "drop"),))
    assert evaluate(doc, pkt(WEB, port=80)).audits == ()


def test_audit_rule_behind_a_deciding_rule_is_not_reached():
    doc = load(raw({"a": {"rules": [
        rule(id="ssh", ports=22, priority=1),
        rule(id="trial", policy="reject", mode="audit", ports=22, priority=2),
        rule(id="trial-2", policy="accept", mode="audit", ports="1-100", priority=3),
    ]}}))
    assert evaluate(doc, pkt(WEB, port=22)).audits == ()
    v = evaluate(doc, pkt(WEB, port=23))
    assert v.audits == (AuditMatch("a", "trial-2", "accept"),)


def test_audit_sequential_ordering_follows_the_list():
    doc = load(raw({"a": {"rules": [
        rule(id="first", ports=22),
        rule(id="trial", policy="drop", mode="audit", ports=22),
    ]}, "b": {"rules": [rule(id="later-trial", policy="drop", mode="audit")]}},
        ordering="sequential"))
    assert evaluate(doc, pkt(WEB, port=22)).audits == ()
    v = evaluate(doc, pkt(WEB, port=23))
    assert (v.rule, v.audits) == ("default", (AuditMatch("b", "later-trial", "drop"),))


def test_compiler_carries_log_and_audit():
    doc = load(raw({"a": {"rules": [
        rule(id="ssh", ports=22, log=True, log_rate="2/second"),
        rule(id="trial", policy="drop", mode="audit", ports=23),
    ]}}, nics=[{"name": "eth0", "security_groups": ["a"], "log_default": True}]))
    chain = compile_document(doc).chain("eth0", "inbound")
    d = {x.counter.rule: x for x in chain.decisions}
    assert d["ssh"].log == LogSpec(2, "second", 4) and not d["ssh"].audit
    assert d["trial"].audit and d["trial"].log == LogSpec(10, "second", 20)
    assert d["trial"].counter.mode == "audit" and d["ssh"].counter.mode == "enforce"
    assert chain.default.log == LogSpec(10, "second", 20)
    assert compile_document(doc).chain("eth0", "outbound").default.log is not None


def test_explain_lists_audit_matches(tmp_path, capsys):
    data = raw({"a": {"rules": [rule(id="trial", policy="drop", mode="audit", ports=22),
                                rule(id="ssh", ports=22, priority=2, log=True)]}})
    f = tmp_path / "host.yaml"
    f.write_text(yaml.safe_dump(data))
    args = ["explain", str(f), "--nic", "eth0", "--direction", "inbound", "--peer", WEB,
            "--protocol", "tcp", "--port", "22"]
    assert main(args + ["--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got == {"verdict": "accept", "group": "a", "rule": "ssh", "reason": "rule",
                   "log": True, "audit": [{"group": "a", "rule": "trial", "would": "drop"}]}
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == ["accept (decided by rule: a/ssh), logged",
                                "  audit: a/trial would drop"]
