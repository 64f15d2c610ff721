"""The installed ``sgagent`` (.venv/bin/sgagent), run as a user runs it, in subprocesses: help
as people read it, ``-h``, shell completion, ``validate --json``, the documented exit codes
(README "Exit codes": 0 done / nothing to change, 1 user error or refused, 2 changes pending,
3 nothing applied) and errors in the document's own terms."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sgagent import netns
from sgagent.cli import one_per_problem

ROOT = Path(__file__).resolve().parents[2]
SGAGENT = Path(sys.executable).with_name("sgagent")
EXAMPLE = ROOT / "examples" / "defaults-tencent.yaml"
COMMANDS = ["validate", "schema", "compile", "apply", "diff", "explain", "status", "flush",
            "verify", "lint", "run", "completion"]
FLEET_COMMANDS = ["validate", "diff", "push", "status"]


def sgagent(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    if not SGAGENT.exists():
        pytest.skip(f"sgagent is not installed next to {sys.executable}")
    return subprocess.run([str(SGAGENT), *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT,
                          env={**os.environ, "COLUMNS": "100", **(env or {})})


def base(**over) -> dict:
    doc = {"version": 1,
           "host": {"instance": "i-1", "nics": [{"name": "eth0", "security_groups": ["sg"]}]},
           "security_groups": {"sg": {"rules": [
               {"direction": "inbound", "protocol": "tcp", "ports": 22,
                "source": "198.51.100.0/24"}]}}}
    doc.update(over)
    return doc


def write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / f"doc{secrets.token_hex(2)}.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


# --------------------------------------------------------------------------- help


@pytest.mark.parametrize("command", [[]] + [[c] for c in COMMANDS] + [["fleet"]]
                         + [["fleet", c] for c in FLEET_COMMANDS])
def test_help_reads_as_people_expect(command):
    r = sgagent(*command, "--help")
    assert r.returncode == 0, r.stderr
    assert "<bool>" not in r.stdout and "<str>" not in r.stdout and "<int>" not in r.stdout
    assert "{" not in r.stdout.split("Usage:")[1].splitlines()[0]
    h = sgagent(*command, "-h")
    assert h.returncode == 0 and h.stdout == r.stdout


def test_usage_line_names_the_file():
    usage = sgagent("apply", "-h").stdout.split("Usage:")[1].splitlines()[0]
    assert usage.split() == ["sgagent", "apply", "[OPTIONS]", "FILE"]
    assert "--netns" in sgagent("apply", "-h").stdout and "NAME" in sgagent("apply", "-h").stdout


def test_fleet_usage_lines_name_the_fleet_and_options_their_values():
    push = sgagent("fleet", "push", "-h").stdout
    assert push.split("Usage:")[1].splitlines()[0].split() == [
        "sgagent", "fleet", "push", "[OPTIONS]", "FLEET"]
    for option in ("--endpoint URL", "--prefix PREFIX", "--config FILE"):
        assert option in push
    assert "--json " in push and "--json <" not in push
    status = sgagent("fleet", "status", "-h").stdout.split("Usage:")[1].splitlines()[0]
    assert status.split() == ["sgagent", "fleet", "status", "[OPTIONS]", "[FLEET]"]


# --------------------------------------------------------------------------- completion


@pytest.mark.parametrize("shell,marker", [("bash", "complete -o default -F _sgagent_completion"),
                                          ("zsh", "#compdef sgagent"),
                                          ("fish", "complete --command sgagent")])
def test_completion_script_for_each_shell(shell, marker):
    r = sgagent("completion", shell)
    assert r.returncode == 0 and marker in r.stdout and "_SGAGENT_COMPLETE" in r.stdout


def test_completion_of_an_unknown_shell_is_refused():
    r = sgagent("completion", "tcsh")
    assert r.returncode == 1 and "tcsh" in r.stderr and r.stdout == ""


def test_completion_answers_the_shells_question():
    """What the installed scripts ask sgagent, and its answers: commands, then options."""
    r = sgagent(env={"_SGAGENT_COMPLETE": "complete_bash", "COMP_WORDS": "sgagent va",
                     "COMP_CWORD": "1"})
    assert r.returncode == 0 and r.stdout.split() == ["validate"]
    r = sgagent(env={"_SGAGENT_COMPLETE": "complete_zsh",
                     "_TYPER_COMPLETE_ARGS": "sgagent apply --dr"})
    assert "--dry-run" in r.stdout
    r = sgagent(env={"_SGAGENT_COMPLETE": "complete_fish", "_TYPER_COMPLETE_ARGS": "sgagent st",
                     "_TYPER_COMPLETE_FISH_ACTION": "get-args"})
    assert r.stdout.startswith("status\t")


@pytest.mark.skipif(not shutil.which("bash"), reason="needs bash")
def test_bash_script_loads_and_completes(tmp_path):
    """The bash script, sourced in a clean bash (not the user's shell files), completes."""
    script = sgagent("completion", "bash").stdout
    (tmp_path / "c.sh").write_text(script)
    probe = ('source c.sh; COMP_WORDS=(sgagent dif); COMP_CWORD=1; _sgagent_completion sgagent; '
             'echo "${COMPREPLY[@]}"')
    r = subprocess.run(["bash", "--norc", "--noprofile", "-c", probe], capture_output=True,
                       text=True, cwd=tmp_path, timeout=60,
                       env={"PATH": f"{SGAGENT.parent}:{os.environ['PATH']}"})
    assert r.stdout.split() == ["diff"], r.stderr


# --------------------------------------------------------------------------- validate --json


def test_validate_json_valid():
    r = sgagent("validate", "--json", EXAMPLE)
    assert r.returncode == 0 and r.stderr == ""
    out = json.loads(r.stdout)
    assert out == {"file": str(EXAMPLE), "valid": True, "nics": 1, "groups": 1, "rules": 2,
                   "errors": []}


def test_validate_json_refused_lists_errors_with_paths(tmp_path):
    bad = base(version="one")
    bad["security_groups"]["sg"]["rules"][0]["ports"] = 70000
    p = write(tmp_path, bad)
    r = sgagent("validate", "--json", p)
    assert r.returncode == 1
    out = json.loads(r.stdout)
    assert out["valid"] is False and out["file"] == str(p)
    assert out["errors"] == [
        {"path": "version", "message": "must be 1, not 'one'"},
        {"path": "security_groups.sg.rules[0].ports", "message": "70000 is not a port (1..65535)"},
    ]


def test_validate_json_unreadable_file(tmp_path):
    r = sgagent("validate", "--json", tmp_path / "nope.yaml")
    assert r.returncode == 1
    assert json.loads(r.stdout)["errors"] == [{"path": "", "message": "no such file"}]


# --------------------------------------------------------------------------- wording


@pytest.mark.parametrize("over,line", [
    ({"version": "one"}, "version: must be 1, not 'one'"),
    ({"security_groups": {"sg": {"rules": "allow all"}}},
     "security_groups.sg.rules: a list of rules, not a string ('allow all')"),
    ({"security_groups": ["sg"]},
     "security_groups: a mapping of group names to groups, not a list"),
    ({"host": {"instance": "i", "nics": []}}, "host.nics: needs at least one NIC"),
    ({"host": {"instance": "i", "nics": [{"name": "eth0", "security_groups": "sg"}]}},
     "host.nics[0].security_groups: a list of group names, not a string ('sg')"),
])
def test_errors_in_the_documents_terms(tmp_path, over, line):
    r = sgagent("validate", write(tmp_path, base(**over)))
    assert r.returncode == 1
    body = [x.strip() for x in r.stderr.strip().splitlines()[1:]]
    assert body == [line]
    assert "Input should" not in r.stderr and "tuple" not in r.stderr


def test_a_bad_nic_name_is_one_error(tmp_path):
    r = sgagent("validate", write(tmp_path, base(host={"instance": "i", "nics": [
        {"name": "bad name", "security_groups": ["sg"]}]})))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[0].endswith("refused, 1 error")
    assert "host.nics[0].name:" in r.stderr and "at least" not in r.stderr


def test_a_huge_port_is_not_echoed_in_full(tmp_path):
    doc = base()
    doc["security_groups"]["sg"]["rules"][0]["ports"] = int("9" * 500)
    r = sgagent("validate", write(tmp_path, doc))
    assert r.returncode == 1 and "9" * 41 not in r.stderr
    assert f"'{'9' * 40}'... (500 characters) is not a port (1..65535)" in r.stderr


def test_a_repeated_nftables_error_is_said_once(tmp_path):
    """nftables reports an error once per command it hit; what we print has it once, with the
    first command, and how many more it hit (real nft output, from a check-only run)."""
    if not shutil.which("nft") or os.geteuid() != 0:
        pytest.skip("needs nft and root (a namespace of its own)")
    script = tmp_path / "s.nft"
    script.write_text("add table inet t\n" + "".join(
        f"add rule inet t nochain {v}\n" for v in ("accept", "drop", "counter")))
    r = subprocess.run(["unshare", "--net", "nft", "-c", "-f", str(script)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and r.stderr.count("Error: Could not process rule") == 3
    once = one_per_problem("the kernel refused the ruleset: " + r.stderr.strip())
    assert once.count("Error: Could not process rule") == 1
    assert once.endswith("(the same error for 2 more commands)")
    assert "nochain accept" in once and "nochain drop" not in once


# --------------------------------------------------------------------------- exit codes


def test_usage_errors_exit_1():
    for argv in (["frobnicate"], ["validate"], ["apply", "--bogus", "x"]):
        r = sgagent(*argv)
        assert r.returncode == 1 and "Traceback" not in r.stderr


@pytest.fixture
def ns():
    if os.geteuid() != 0:
        pytest.skip("needs root: the kernel commands run in a namespace this test creates")
    name = f"sgx{secrets.token_hex(3)}"
    netns.create(name)
    try:
        yield name
    finally:
        netns.delete(name)


def test_diff_dry_run_and_status_exit_codes(ns, tmp_path):
    r = sgagent("status", "--netns", ns)
    assert r.returncode == 3 and "no sgagent ruleset is loaded" in r.stdout
    r = sgagent("status", "--json", "--netns", ns)
    assert r.returncode == 3 and json.loads(r.stdout) == []
    r = sgagent("diff", "--netns", ns, EXAMPLE)
    assert r.returncode == 2 and "\n+table inet sgagent {" in r.stdout
    r = sgagent("apply", "--dry-run", "--netns", ns, EXAMPLE)
    assert r.returncode == 2 and "the kernel accepts this ruleset" in r.stdout
    assert sgagent("status", "--netns", ns).returncode == 3  # the dry run changed nothing

    r = sgagent("apply", "--netns", ns, EXAMPLE)
    assert r.returncode == 0, r.stderr
    r = sgagent("diff", "--netns", ns, EXAMPLE)
    assert (r.returncode, r.stdout) == (0, "no change\n")
    r = sgagent("apply", "--dry-run", "--netns", ns, EXAMPLE)
    assert r.returncode == 0 and r.stdout.startswith("no change")
    r = sgagent("status", "--netns", ns)
    assert r.returncode == 0 and "NIC" in r.stdout
    r = sgagent("status", "--json", "--netns", ns)
    assert r.returncode == 0 and json.loads(r.stdout)

    other = base(host={"instance": "i", "nics": [{"name": "eth0", "security_groups": ["sg"]}]})
    r = sgagent("diff", "--netns", ns, write(tmp_path, other))
    assert r.returncode == 2 and "-" in r.stdout and "+" in r.stdout

    assert sgagent("flush", "--netns", ns).returncode == 0
    assert sgagent("status", "--netns", ns).returncode == 3


def test_json_reports_of_the_kernel_commands(ns):
    """diff, apply (and --dry-run) and flush report as JSON too, with the same exit codes."""
    r = sgagent("diff", "--json", "--netns", ns, EXAMPLE)
    out = json.loads(r.stdout)
    assert r.returncode == 2 and out["changes"] is True and "+table inet sgagent" in out["diff"]
    r = sgagent("apply", "--dry-run", "--json", "--netns", ns, EXAMPLE)
    out = json.loads(r.stdout)
    assert r.returncode == 2 and out["accepted"] is True and out["changes"] is True
    r = sgagent("apply", "--json", "--netns", ns, EXAMPLE)
    out = json.loads(r.stdout)
    assert r.returncode == 0 and out["applied"] is True and out["nics"] == 1
    assert out["decisions"] > 0 and out["counters"] > 0
    r = sgagent("diff", "--json", "--netns", ns, EXAMPLE)
    assert r.returncode == 0 and json.loads(r.stdout) == {"file": str(EXAMPLE), "changes": False,
                                                           "diff": ""}
    r = sgagent("apply", "--dry-run", "--json", "--netns", ns, EXAMPLE)
    assert r.returncode == 0 and json.loads(r.stdout)["changes"] is False
    r = sgagent("flush", "--json", "--netns", ns)
    assert r.returncode == 0 and json.loads(r.stdout) == {"removed": True}
    r = sgagent("flush", "--json", "--netns", ns)
    assert r.returncode == 0 and json.loads(r.stdout) == {"removed": False}


def test_refused_document_exits_1_for_the_kernel_commands(ns, tmp_path):
    bad = write(tmp_path, base(version=2))
    for argv in (["diff", "--netns", ns, bad], ["apply", "--dry-run", "--netns", ns, bad]):
        r = sgagent(*argv)
        assert r.returncode == 1 and "version: must be 1, not 2" in r.stderr
