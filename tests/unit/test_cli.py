"""The command line, through ``sgagent.cli.main``: exit codes, stdout, and one-line errors."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import pytest
import yaml

from sgagent.cli import main

from ._docs import raw, rule

ROOT = Path(__file__).resolve().parents[2]

DOC = raw({
    "sg-web": {"members": ["10.0.0.5"], "rules": [
        rule(id="web", ports="80,443", source=["0.0.0.0/0", "::/0"], priority=10),
        rule(id="no-ssh", policy="drop", ports=22, priority=5),
        rule(id="office-ssh", ports=22, source="198.51.100.0/24", priority=1),
    ]},
    "sg-ops": {"rules": [rule(id="ops-ssh", ports=22, source="203.0.113.9", priority=5),
                         {"direction": "inbound", "service": "ping", "source": "0.0.0.0/0"}]},
}, nics=[{"name": "eth0", "security_groups": ["sg-web", "sg-ops"]}])

BAD = raw({"sg-web": {"rules": [rule(ports=70000), rule(protocol="icmp", ports=22),
                                rule(source="10.0.0.1/8")]}})


@pytest.fixture
def doc_file(tmp_path):
    p = tmp_path / "host.yaml"
    p.write_text(yaml.safe_dump(DOC))
    return p


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# --------------------------------------------------------------------------- validate


def test_validate_ok(capsys, doc_file):
    rc, out, err = run(capsys, "validate", doc_file)
    assert rc == 0 and err == ""
    assert out.strip() == f"{doc_file}: valid (1 NICs, 2 groups, 5 rules)"


def test_validate_lists_every_error(capsys, tmp_path):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(BAD))
    rc, out, err = run(capsys, "validate", p)
    assert rc == 1 and out == ""
    lines = err.strip().splitlines()
    assert lines[0] == f"{p}: refused, 3 errors"
    body = [line.strip() for line in lines[1:]]
    assert body[0] == "security_groups.sg-web.rules[0].ports: 70000 is not a port (1..65535)"
    assert body[1].startswith("security_groups.sg-web.rules[1].ports: ")
    assert body[2].startswith("security_groups.sg-web.rules[2].source: ")
    assert "Traceback" not in err


def test_validate_document_stage_errors(capsys, tmp_path):
    data = raw({"a": {"rules": [rule(nic="internet"), rule(source={"group": "nope"})]}},
               nics=[{"name": "eth0", "security_groups": ["a", "b"]}])
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(data))
    rc, _, err = run(capsys, "validate", p)
    assert rc == 1
    assert err.splitlines()[0] == f"{p}: refused, 3 errors"
    for path in ("host.nics[0].security_groups[1]:", "security_groups.a.rules[0].nic:",
                 "security_groups.a.rules[1].source.group:"):
        assert any(line.strip().startswith(path) for line in err.splitlines()), path


@pytest.mark.parametrize("content", [b"version: 1\nhost: [\n", b"\xff\xfe", b"- a\n", b""])
def test_validate_unparseable(capsys, tmp_path, content):
    p = tmp_path / "x.yaml"
    p.write_bytes(content)
    rc, out, err = run(capsys, "validate", p)
    assert rc == 1 and out == ""
    lines = err.strip().splitlines()
    assert lines[0] == f"{p}: refused, 1 error" and lines[1].strip().startswith("(document): ")
    assert "Traceback" not in err


def test_validate_missing_file(capsys, tmp_path):
    rc, out, err = run(capsys, "validate", tmp_path / "nope.yaml")
    assert rc == 1 and out == ""
    line = one_line_error(err)
    assert "nope.yaml" in line and "no such file" in line


def test_validate_a_directory(capsys, tmp_path):
    rc, _, err = run(capsys, "validate", tmp_path)
    assert rc == 1
    assert "directory" in one_line_error(err)


# --------------------------------------------------------------------------- schema


def test_schema(capsys):
    rc, out, err = run(capsys, "schema")
    assert rc == 0 and err == ""
    schema = json.loads(out)
    assert schema["type"] == "object"
    assert {"version", "host", "security_groups"} <= set(schema["properties"])
    assert {"version", "host"} <= set(schema["required"])
    assert schema.get("additionalProperties") is False


def test_schema_in_docs_is_the_one_the_cli_prints(capsys):
    """docs/host-document.schema.json is generated (`sgagent schema > docs/...`): kept current."""
    _, out, _ = run(capsys, "schema")
    committed = Path(__file__).resolve().parents[2] / "docs" / "host-document.schema.json"
    assert json.loads(committed.read_text()) == json.loads(out), \
        "regenerate it: sgagent schema > docs/host-document.schema.json"


def test_schema_accepts_what_the_agent_accepts(capsys):
    jsonschema = pytest.importorskip("jsonschema")
    _, out, _ = run(capsys, "schema")
    schema = json.loads(out)
    jsonschema.Draft202012Validator.check_schema(schema)
    v = jsonschema.Draft202012Validator(schema)
    aliases = raw({"a": {"account": 1001, "inner_access": "Accept", "type": "Basic",
                         "members": ["10.0.0.1"], "rules": [
        {"direction": "Ingress", "policy": "ALLOW", "protocol": -1, "source": "0.0.0.0/0",
         "priority": "5"},
        {"direction": "ingress", "protocol": "TCP", "ports": 80, "policy": "DROP",
         "source": ["10.0.0.0/8", {"group": "a", "account": 1001}]},
        {"direction": "egress", "service": "SSH", "destination": "10.0.0.0/8",
         "nic": "Intranet"}]}}, account=1001, network="VPC", ordering="Priority")
    assert [e.message for e in v.iter_errors(aliases)] == []
    # and still refuses what is plainly wrong
    wrong = raw({"a": {"rules": [rule(policy="maybe", colour=1)]}})
    assert len(list(v.iter_errors(wrong))) >= 2


def test_examples_validate_and_match_the_schema(capsys):
    files = sorted(glob.glob(str(ROOT / "examples" / "**" / "*.yaml"), recursive=True))
    if not files:
        pytest.skip("no examples")
    try:
        import jsonschema
    except ImportError:
        v = None
    else:
        _, out, _ = run(capsys, "schema")
        v = jsonschema.Draft202012Validator(json.loads(out))
    for f in files:
        rc, _, err = run(capsys, "validate", f)
        assert rc == 0, err
        if v is not None:
            errs = [f"{list(e.path)}: {e.message}" for e in v.iter_errors(yaml.safe_load(
                Path(f).read_text()))]
            assert errs == [], (f, errs)


# --------------------------------------------------------------------------- compile


def test_compile_without_root(capsys, doc_file):
    rc, out, err = run(capsys, "compile", doc_file)
    assert rc == 0 and err == ""
    assert out.startswith("table inet sgagent {\n") and out.endswith("}\n")
    assert '"eth0" : jump' in out
    assert "ct state established,related" in out


def test_compile_refuses_a_bad_document(capsys, tmp_path):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(BAD))
    rc, out, err = run(capsys, "compile", p)
    assert rc == 1 and out == "" and "refused, 3 errors" in err


# --------------------------------------------------------------------------- explain


def explain(capsys, doc_file, *args):
    rc, out, err = run(capsys, "explain", doc_file, "--json", *args)
    assert rc == 0, err
    got = json.loads(out)
    # nothing here logs or audits (tests/flowlog/test_model.py shows both)
    assert got.pop("log") is False and got.pop("audit") == []
    return got


@pytest.mark.parametrize("args,expected", [
    # priority 1 accept beats priority 5 drop
    (["--peer", "198.51.100.7", "--protocol", "tcp", "--port", "22"],
     {"verdict": "accept", "group": "sg-web", "rule": "office-ssh", "reason": "rule"}),
    # at priority 5 the drop in sg-web beats the accept in sg-ops
    (["--peer", "203.0.113.9", "--protocol", "tcp", "--port", "22"],
     {"verdict": "drop", "group": "sg-web", "rule": "no-ssh", "reason": "rule"}),
    (["--peer", "2001:db8::1", "--protocol", "TCP", "--port", "443"],
     {"verdict": "accept", "group": "sg-web", "rule": "web", "reason": "rule"}),
    (["--peer", "192.0.2.1", "--protocol", "icmp"],  # echo request by default
     {"verdict": "accept", "group": "sg-ops", "rule": "sg-ops/1", "reason": "rule"}),
    (["--peer", "192.0.2.1", "--protocol", "udp", "--port", "53"],
     {"verdict": "drop", "group": None, "rule": "default", "reason": "default"}),
    (["--peer", "10.0.0.5", "--protocol", "udp", "--port", "53"],
     {"verdict": "accept", "group": None, "rule": "default", "reason": "inner-access"}),
])
def test_explain_json(capsys, doc_file, args, expected):
    got = explain(capsys, doc_file, "--nic", "eth0", "--direction", "inbound", *args)
    assert got == expected
    assert set(got) == {"verdict", "group", "rule", "reason"}


@pytest.mark.parametrize("spelling", ["inbound", "ingress", "in", "Ingress"])
def test_explain_direction_spellings(capsys, doc_file, spelling):
    got = explain(capsys, doc_file, "--nic", "eth0", "--direction", spelling, "--peer",
                  "192.0.2.1", "--protocol", "tcp", "--port", "80")
    assert got["rule"] == "web"


def test_explain_outbound_default(capsys, doc_file):
    got = explain(capsys, doc_file, "--nic", "eth0", "--direction", "egress", "--peer",
                  "192.0.2.1", "--protocol", "gre")
    assert got == {"verdict": "accept", "group": None, "rule": "default", "reason": "default"}


def test_explain_text(capsys, doc_file):
    rc, out, _ = run(capsys, "explain", doc_file, "--nic", "eth0", "--direction", "inbound",
                     "--peer", "203.0.113.9", "--protocol", "tcp", "--port", "22")
    assert rc == 0
    assert out.startswith("drop") and "no-ssh" in out


EXPLAIN = ["--nic", "eth0", "--direction", "inbound", "--peer", "192.0.2.1", "--protocol",
           "tcp", "--port", "80"]


def with_opt(name, value):
    args = list(EXPLAIN)
    i = args.index(name)
    if value is None:
        del args[i:i + 2]
    else:
        args[i + 1] = value
    return args


@pytest.mark.parametrize("args,words", [
    (with_opt("--nic", "eth9"), ["--nic", "eth9", "eth0"]),
    (with_opt("--nic", "lo"), ["--nic", "lo"]),
    (with_opt("--peer", "1.2.3.999"), ["--peer", "1.2.3.999"]),
    (with_opt("--peer", "example.com"), ["--peer", "example.com"]),
    (with_opt("--peer", "10.0.0.0/8"), ["--peer"]),
    (with_opt("--port", "abc"), ["--port"]),
    (with_opt("--port", "0"), ["--port", "0"]),
    (with_opt("--port", "65536"), ["--port", "65536"]),
    (with_opt("--port", "-5"), ["--port"]),
    (with_opt("--port", None), ["--port"]),
    (with_opt("--direction", "sideways"), ["--direction", "sideways"]),
    (with_opt("--protocol", "sctp"), ["--protocol", "sctp"]),
    (with_opt("--nic", None), ["--nic"]),
    (with_opt("--protocol", "icmpv6"), ["--protocol"]),  # a v6 protocol with a v4 peer
    (EXPLAIN + ["--icmp-type", "8"], ["--icmp-type"]),
])
def test_explain_bad_options(capsys, doc_file, args, words):
    rc, out, err = run(capsys, "explain", doc_file, *args)
    assert rc == 1 and out == ""
    line = one_line_error(err)
    assert line.startswith("error: ")
    for w in words:
        assert w in line, (w, line)


def test_explain_missing_file(capsys, tmp_path):
    rc, out, err = run(capsys, "explain", tmp_path / "nope.yaml", *EXPLAIN)
    assert rc == 1 and out == ""
    assert "no such file" in one_line_error(err)


# --------------------------------------------------------------------------- usage


@pytest.mark.parametrize("argv,words", [
    (["frobnicate"], ["frobnicate"]),
    (["validate"], ["FILE"]),
    (["validate", "a.yaml", "b.yaml"], ["b.yaml"]),
    (["compile", "--bogus"], ["--bogus"]),
])
def test_usage_errors(capsys, argv, words):
    rc, out, err = run(capsys, *argv)
    assert rc == 1
    line = one_line_error(err)
    assert line.startswith("error: ")
    for w in words:
        assert w in line


# --------------------------------------------------------------------------- explain: in words


def explain_text(capsys, data, *args) -> list[str]:
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "host.yaml"
        p.write_text(yaml.safe_dump(data))
        rc, out, err = run(capsys, "explain", p, *args)
    assert rc == 0, err
    return out.splitlines()


def inbound(peer, protocol="tcp", port="8080", nic="eth0"):
    args = ["--nic", nic, "--direction", "inbound", "--peer", peer, "--protocol", protocol]
    return args + (["--port", port] if protocol in ("tcp", "udp") else [])


def test_explain_says_inner_access_decided_and_of_which_group(capsys):
    data = raw({"sg-a": {"members": ["10.0.0.7"], "inner_access": "drop", "rules": []},
                "sg-b": {"members": ["10.0.0.7", "10.0.0.8"], "rules": []}})
    assert explain_text(capsys, data, *inbound("10.0.0.7")) == [
        "accept (decided by inner access of sg-b: no rule matched, and 10.0.0.7 is a member "
        "of sg-b, whose members may reach each other)"]


def test_explain_says_the_group_types_default_decided(capsys):
    data = raw({"sg": {"members": ["10.0.0.7"], "rules": []}})
    assert explain_text(capsys, data, *inbound("192.0.2.1")) == [
        "drop (decided by the default of basic groups: no rule matched, and basic groups drop "
        "inbound traffic)"]
    out = explain_text(capsys, data, "--nic", "eth0", "--direction", "outbound", "--peer",
                       "192.0.2.1", "--protocol", "udp", "--port", "53")
    assert out == ["accept (decided by the default of basic groups: no rule matched, and "
                   "basic groups accept outbound traffic)"]
    data["security_groups"]["sg"] = {"type": "enterprise", "members": ["10.0.0.7"], "rules": []}
    assert explain_text(capsys, data, *inbound("10.0.0.7")) == [
        "drop (decided by the default of enterprise groups: no rule matched, and enterprise "
        "groups drop inbound and outbound traffic)",
        "  note: 10.0.0.7 is a member of sg, but enterprise groups have no inner access"]


def test_explain_says_host_defaults_decided_and_why_inner_access_did_not(capsys):
    data = raw({"sg": {"members": ["10.0.0.7"], "inner_access": "drop", "rules": []}},
               defaults={"inbound": "drop"})
    assert explain_text(capsys, data, *inbound("10.0.0.7")) == [
        "drop (decided by host.defaults.inbound: no rule matched)",
        "  note: 10.0.0.7 is a member of sg, but its inner_access is drop"]


def test_explain_on_a_classic_internet_nic_says_inner_access_does_not_apply(capsys):
    data = raw({"sg": {"members": ["10.0.0.7"], "rules": [
        rule(nic="intranet", ports=22, source="198.51.100.7/32")]}},
        network="classic", nics=[{"name": "eth0", "role": "intranet", "security_groups": ["sg"]},
                                 {"name": "eth1", "role": "internet", "security_groups": ["sg"]}])
    out = explain_text(capsys, data, *inbound("10.0.0.7", nic="eth1"))
    assert out[0].startswith("drop (decided by the default of basic groups")
    assert out[1] == ("  note: 10.0.0.7 is a member of sg, but inner access applies on vpc and "
                      "intranet NICs only, not on the internet NIC eth1")
    assert explain_text(capsys, data, *inbound("10.0.0.7", nic="eth0"))[0].startswith(
        "accept (decided by inner access of sg")


def test_explain_names_the_failsafe_entry_and_the_allowances(capsys):
    data = raw({"sg": {"rules": []}},
               failsafe=[{"direction": "inbound", "service": "ssh", "source": "10.0.0.0/8"}])
    assert explain_text(capsys, data, *inbound("10.1.2.3", port="22")) == [
        "accept (decided by the host's failsafe: host.failsafe[0])"]
    assert explain_text(capsys, data, "--nic", "eth0", "--direction", "inbound", "--peer",
                        "fe80::1", "--protocol", "icmpv6", "--icmp-type", "135") == [
        "accept (always allowed: DHCP and link-local ICMPv6 (SEMANTICS §5))"]
