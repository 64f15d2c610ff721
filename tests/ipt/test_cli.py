"""The commands with ``--backend iptables`` and ``auto``, through the installed sgagent, in a
fresh namespace: compile, apply, diff, status (which names the live backend and variant),
flush; verify proves a document with the iptables backend in its sandbox."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import run_in

ROOT = Path(__file__).resolve().parents[2]
SGAGENT = Path(sys.executable).with_name("sgagent")
EXAMPLE = "examples/alibaba/s2-ssh-from-ip-vpc.yaml"


def sgagent(*args) -> subprocess.CompletedProcess:
    if not SGAGENT.exists():
        pytest.skip(f"sgagent is not installed next to {sys.executable}")
    return subprocess.run([str(SGAGENT), *args], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env={**os.environ, "COLUMNS": "120"})


def test_compile_needs_no_root():
    r = sgagent("compile", "--backend", "iptables", EXAMPLE)
    assert r.returncode == 0, r.stderr
    assert "*filter" in r.stdout and "-I INPUT 1 -j sgagent-INPUT" in r.stdout
    r = sgagent("compile", "--backend", "iptables", "--rendering", "linear", EXAMPLE)
    assert r.returncode == 0 and "-s 198.51.100.7/32 -p tcp -m tcp --dport 22" in r.stdout
    r = sgagent("compile", "--backend", "ipchains", EXAMPLE)
    assert r.returncode == 1 and "not a backend" in r.stderr and "Traceback" not in r.stderr


def test_kernel_commands(ns):
    run_in(ns, "iptables-legacy", "-A", "INPUT", "-s", "192.0.2.99", "-j", "ACCEPT")
    r = sgagent("apply", "--backend", "auto", "--netns", ns, EXAMPLE)
    assert r.returncode == 0, r.stderr
    assert "sgagent-INPUT" in run_in(ns, "iptables-legacy-save")
    r = sgagent("diff", "--backend", "iptables", "--netns", ns, EXAMPLE)
    assert (r.returncode, r.stdout) == (0, "no change\n"), r.stderr
    r = sgagent("status", "--backend", "auto", "--netns", ns)
    assert r.returncode == 0 and "ssh-from-admin-ip" in r.stdout, r.stderr
    assert r.stdout.rstrip().endswith("backend: iptables (legacy)")
    r = sgagent("flush", "--backend", "iptables", "--netns", ns)
    assert r.returncode == 0, r.stderr
    r = sgagent("status", "--backend", "iptables", "--netns", ns)
    assert r.returncode == 3
    assert run_in(ns, "iptables-legacy-save").count("-A INPUT") == 1


def test_verify_with_the_iptables_backend(root):
    r = sgagent("verify", "--backend", "iptables", EXAMPLE)
    assert r.returncode == 0, r.stdout + r.stderr
