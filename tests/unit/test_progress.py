"""Progress on a terminal only (issue 13): the installed ``sgagent compile`` of a generated
10,000-rule document (about two seconds) under a pseudo-terminal shows its stages on stderr and
erases the line at the end; in a pipe, or with --json, nothing; a quick command shows nothing
either.  The Progress object itself: stages, bar, and silence when disabled."""

from __future__ import annotations

import io
import os
import re
import secrets
import subprocess
import sys
import time

import pytest

from sgagent import netns
from sgagent.progress import Progress, for_command

from ._terminal import ROOT, run

STAGES = ["parse", "validate", "compile", "render"]


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    path = tmp_path_factory.mktemp("progress") / "doc10000.json"
    with path.open("w") as fh:
        subprocess.run([sys.executable, str(ROOT / "bench" / "docgen.py"), "10000"], stdout=fh,
                       check=True, timeout=120)
    return path


def drawn_stages(stderr: str, of: int = 4) -> list[tuple[str, str]]:
    return re.findall(r"[|/\\-] (\w+) \[(\d)/%d\]" % of, stderr)


def test_compile_shows_its_stages_on_a_terminal(big):
    tty = run("compile", big, tty_stderr=True)
    assert tty.returncode == 0
    stages = drawn_stages(tty.stderr)
    assert stages, repr(tty.stderr[:300])
    for name, n in stages:
        assert STAGES[int(n) - 1] == name
    assert tty.stderr.endswith("\r\x1b[2K")  # the line is erased when the command is done
    assert re.search(r"\d+\.\d+s", tty.stderr)


def test_compile_in_a_pipe_shows_nothing(big):
    r = run("compile", big)
    assert r.returncode == 0 and r.stderr == "" and r.stdout.startswith("table inet sgagent")


@pytest.fixture
def ns():
    if os.geteuid() != 0:
        pytest.skip("needs root: apply runs in a namespace this test creates")
    name = f"sgp{secrets.token_hex(3)}"
    netns.create(name)
    try:
        yield name
    finally:
        netns.delete(name)


def test_apply_shows_its_stages_on_a_terminal_and_not_with_json(big, ns):
    tty = run("apply", "--netns", ns, big, tty_stderr=True)
    assert tty.returncode == 0, tty.stderr
    stages = drawn_stages(tty.stderr)
    assert stages and all(["parse", "validate", "compile", "apply"][int(n) - 1] == name
                          for name, n in stages), repr(tty.stderr[:300])
    assert tty.stdout.startswith("applied ")
    quiet = run("apply", "--json", "--netns", ns, big, tty_stderr=True)
    assert quiet.returncode == 0 and quiet.stderr == ""
    diff = run("diff", "--netns", ns, big, tty_stderr=True)
    assert diff.returncode == 0 and diff.stdout == "no change\n"
    assert all(["parse", "validate", "compile", "diff"][int(n) - 1] == name
               for name, n in drawn_stages(diff.stderr)), repr(diff.stderr[:300])


def test_verify_shows_its_stages_on_a_terminal():
    if os.geteuid() != 0:
        pytest.skip("verify needs root")
    example = ROOT / "examples" / "alibaba" / "s2-ssh-from-ip-vpc.yaml"
    tty = run("verify", example, tty_stderr=True)
    assert tty.returncode == 0, tty.stdout
    names = ["parse", "validate", "plan", "sandbox", "apply", "probe"]
    stages = drawn_stages(tty.stderr, 6)
    assert stages and all(names[int(n) - 1] == name for name, n in stages), repr(tty.stderr)
    assert "rules probed" in tty.stdout  # the report, on stdout, untouched
    assert run("verify", "--json", example, tty_stderr=True).stderr == ""


def test_a_quick_command_shows_nothing_on_a_terminal():
    r = run("compile", ROOT / "examples" / "defaults-tencent.yaml", tty_stderr=True)
    assert r.returncode == 0 and r.stderr == ""


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_stages_and_the_bar():
    p = Progress(["plan", "probe"], enabled=True, stream=Tty(), delay=0)
    p.stage("probe", total=40)
    p.advance(10)
    assert re.fullmatch(r"\| probe \[2/2\] \[#####\.{15}\] 10/40  \d+\.\ds", p.text(0))
    p.stage("other")
    assert p.text(1).startswith("/ other ")


def test_drawn_after_the_delay_and_erased():
    out = Tty()
    with Progress(["a"], enabled=True, stream=out, delay=0.05) as p:
        p.stage("a")
        time.sleep(0.4)
    assert "a [1/1]" in out.getvalue() and out.getvalue().endswith("\r\x1b[2K")


def test_disabled_writes_nothing():
    out = Tty()
    with Progress(["a"], enabled=False, stream=out, delay=0) as p:
        p.stage("a")
        time.sleep(0.2)
    assert out.getvalue() == ""


def test_for_command_is_off_with_json_and_in_a_pipe(monkeypatch):
    monkeypatch.setattr(sys, "stderr", Tty())
    assert for_command(["a"]).enabled
    assert not for_command(["a"], as_json=True).enabled
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not for_command(["a"]).enabled
