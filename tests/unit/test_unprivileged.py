"""compile needs no privilege; the kernel-facing commands say clearly that they do.

Run with every capability dropped (what an ordinary user has), as a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "alibaba" / "s2-ssh-from-ip-vpc.yaml"


def unprivileged(*args: str) -> subprocess.CompletedProcess:
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("setpriv (util-linux) is needed to drop capabilities")
        prefix = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--ambient-caps=-all",
                  "--no-new-privs"]
    else:
        prefix = []
    return subprocess.run(prefix + [sys.executable, "-m", "sgagent", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)


def test_compile_needs_no_privilege():
    r = unprivileged("compile", str(EXAMPLE))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("table inet sgagent {")
    assert "chain in_eth0" in r.stdout


def test_kernel_commands_say_they_need_privilege():
    r = unprivileged("status")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert "root" in r.stderr or "CAP_NET_ADMIN" in r.stderr or "not permitted" in r.stderr
