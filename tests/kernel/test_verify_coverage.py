"""``sgagent verify`` says what it proved and what it did not (issue 13), with real packets in
its throw-away sandbox, through the installed command as a user runs it.

The issue's case: a document that refuses 203.0.113.0/24 (where verify used to take its far
peer from) with ``0.0.0.0/0`` rules: those rules are now probed from outside the refused
network, the kernel agrees with the evaluator on both sides (the refused network dropped, the
rest let in), and the summary states the coverage.  A rule no probe can reach (gre, a rule
shadowed by another) is listed with its reason; ``--strict`` fails on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SGAGENT = Path(sys.executable).with_name("sgagent")


def sgagent(*args) -> subprocess.CompletedProcess:
    if os.geteuid() != 0:
        pytest.skip("verify needs root (network namespaces, nftables)")
    if not SGAGENT.exists():
        pytest.skip(f"sgagent is not installed next to {sys.executable}")
    return subprocess.run([str(SGAGENT), *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


def document(*rules: dict) -> dict:
    return {"version": 1,
            "host": {"instance": "i-1", "nics": [{"name": "eth0", "security_groups": ["sg"]}]},
            "security_groups": {"sg": {"rules": list(rules)}}}


REFUSE_DOC3 = {"id": "no-doc3", "direction": "inbound", "policy": "drop", "protocol": "all",
               "source": "203.0.113.0/24", "priority": 1}
WEB = {"id": "web", "direction": "inbound", "protocol": "tcp", "ports": 80,
       "source": "0.0.0.0/0", "priority": 5}
PING = {"id": "ping", "direction": "inbound", "service": "ping", "source": "0.0.0.0/0",
        "priority": 5}


def write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "host.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def entries(out: dict) -> dict[str, dict]:
    return {e["rule"]: e for e in out["coverage"]["entries"] if e["direction"] == "inbound"}


def test_wide_rules_behind_a_refused_network_are_probed(tmp_path):
    f = write(tmp_path, document(REFUSE_DOC3, WEB, PING))
    r = sgagent("verify", "--json", "--strict", f)
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] and out["coverage"]["complete"]
    assert (out["coverage"]["probed"], out["coverage"]["rules"]) == (3, 3)
    cov = entries(out)
    assert cov["web"]["probed"] and cov["web"]["verdicts"].get("open", 0) >= 1
    assert cov["ping"]["probed"] and cov["ping"]["verdicts"] == {"open": cov["ping"]["probes"]}
    assert cov["no-doc3"]["verdicts"].get("dropped", 0) >= 1  # the refused side, refused
    rows = out["rows"]
    web_peers = {r["peer"] for r in rows if r["rule"] == "web" and r["observed"] == "open"}
    assert web_peers and not any(p.startswith("203.0.113.") for p in web_peers)
    # port 80 from inside the refused network is probed too, and dropped by the kernel
    assert any(r["peer"].startswith("203.0.113.") and r["port"] == 80
               and r["observed"] == "dropped" and r["rule"] == "no-doc3" for r in rows)
    assert out["summary"].endswith("0 mismatches; 3 of 3 rules probed")


def test_text_report_ends_with_the_coverage(tmp_path):
    f = write(tmp_path, document(REFUSE_DOC3, WEB))
    r = sgagent("verify", f)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[-1].endswith("0 mismatches; 2 of 2 rules probed")
    start = lines.index("coverage")
    assert lines[start + 1].split() == ["RULE", "NIC", "DIR", "POLICY", "PROBES", "KERNEL",
                                        "RESULT"]
    web = next(line for line in lines[start:] if line.startswith("sg/web "))
    assert web.split()[-1] == "." and "open" in web


def test_strict_fails_on_a_rule_that_cannot_be_probed(tmp_path):
    gre = {"id": "tunnel", "direction": "inbound", "protocol": "gre",
           "source": "198.51.100.0/24", "priority": 5}
    hidden = {"id": "hidden", "direction": "inbound", "protocol": "tcp", "ports": 80,
              "source": "10.0.0.0/8", "priority": 6}
    f = write(tmp_path, document(REFUSE_DOC3, WEB, gre, hidden))
    r = sgagent("verify", f)
    assert r.returncode == 0, r.stdout + r.stderr  # nothing disagrees: not --strict
    assert r.stdout.splitlines()[-1].endswith(
        "0 mismatches; 2 of 4 rules probed (2 not: see the coverage table)")
    r = sgagent("verify", "--strict", "--json", f)
    assert r.returncode == 1
    assert r.stderr.strip() == "--strict: 2 of 4 rules not probed"
    cov = entries(json.loads(r.stdout))
    assert not cov["tunnel"]["probed"] and "does not probe" in cov["tunnel"]["reason"]
    assert not cov["hidden"]["probed"] and cov["hidden"]["reason"].startswith(
        "shadowed: sg/web before it decides everything it matches")
    assert cov["web"]["probed"] and cov["no-doc3"]["probed"]
