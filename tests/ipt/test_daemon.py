"""The daemon with ``backend: iptables``: a real daemon process over a sandbox host, real
packets; drift (the jump out of INPUT deleted, a chain emptied by hand, sets emptied by hand
with ``ipset flush``) is noticed by the polling watch and repaired; SIGTERM leaves the rules
in force; the boot restore loads the last known good document with the same backend."""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from sgagent.sandbox import Outcome, Probe, Sandbox

from ..daemon.support import Daemon, document, dump, wait_until, write_atomic
from .conftest import run_in

PEER = "10.1.0.21"
PYTHON = sys.executable


@pytest.fixture
def sandbox(root):
    sb = Sandbox([("eth0", "vpc")], prefix="sgid" + secrets.token_hex(3))
    try:
        yield sb
    finally:
        sb.close()


@pytest.fixture
def daemons(tmp_path):
    made: list[Daemon] = []
    yield made
    for d in made:
        if d.proc is not None and d.proc.poll() is None:
            d.kill()


def probe(sb, *ports: int) -> list[Outcome]:
    return sb.probe_many([Probe("eth0", "inbound", PEER, "tcp", p) for p in ports], timeout=0.5)


def saved(ns: str) -> str:
    return run_in(ns, "iptables-nft-save", "-t", "filter")


def test_daemon_applies_repairs_and_restores_with_iptables(sandbox, daemons, tmp_path: Path):
    doc = tmp_path / "host.yaml"
    doc.write_text(dump(document([8080])))
    cfg = {"source": {"file": {"path": str(doc)}}, "netns": sandbox.host_ns,
           "state_dir": str(tmp_path / "state"), "resync_interval": 60.0, "log_level": "debug",
           "backend": "iptables"}
    d = Daemon(cfg, tmp_path)
    daemons.append(d)
    d.start()
    d.wait_log(r"ready: the kernel enforces")
    assert "backend iptables" in d.log()
    assert probe(sandbox, 8080, 9090) == [Outcome.OPEN, Outcome.DROPPED]
    write_atomic(doc, dump(document([9090])))
    wait_until(lambda: "--dport 9090" in saved(sandbox.host_ns), 10, what="port 9090")
    assert probe(sandbox, 8080, 9090) == [Outcome.DROPPED, Outcome.OPEN]

    # drift, long before the periodic check: the watch notices, the daemon repairs
    run_in(sandbox.host_ns, "iptables-nft", "-D", "INPUT", "-j", "sgagent-INPUT")
    d.wait_log(r"drift repaired \(1 repair since start\)", timeout=15)
    assert "-A INPUT -j sgagent-INPUT" in saved(sandbox.host_ns)
    run_in(sandbox.host_ns, "iptables-nft", "-F", "sgagent-in-eth0")
    d.wait_log(r"drift repaired \(2 repairs since start\)", timeout=15)
    assert probe(sandbox, 8080, 9090) == [Outcome.DROPPED, Outcome.OPEN]
    # set elements changed by hand: the watch reads them too (the periodic check is 60 s off)
    emptied = [n for n in run_in(sandbox.host_ns, "ipset", "list", "-n").split()
               if n.startswith("sgagent-s-") and run_in(sandbox.host_ns, "ipset", "save", n)
               .count("\nadd ")]
    assert emptied
    for name in emptied:
        run_in(sandbox.host_ns, "ipset", "flush", name)
    d.wait_log(r"drift repaired \(3 repairs since start\)", timeout=15)
    assert all(run_in(sandbox.host_ns, "ipset", "save", n).count("\nadd ") for n in emptied)
    assert probe(sandbox, 8080, 9090) == [Outcome.DROPPED, Outcome.OPEN]

    assert d.stop() == 0  # SIGTERM: the rules stay
    assert "sgagent-INPUT" in saved(sandbox.host_ns)

    # the boot restore: nothing loaded (a reboot), the saved document comes back
    subprocess.run([PYTHON, "-m", "sgagent", "flush", "--backend", "iptables", "--netns",
                    sandbox.host_ns], check=True, capture_output=True, timeout=60)
    assert "sgagent" not in saved(sandbox.host_ns)
    r = subprocess.run([PYTHON, "-m", "sgagent", "restore", "--config", str(d.config_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "--dport 9090" in saved(sandbox.host_ns)
    assert probe(sandbox, 8080, 9090) == [Outcome.DROPPED, Outcome.OPEN]


def test_revocation_works_with_iptables(sandbox, daemons, tmp_path: Path):
    """Revocation is backend-neutral (conntrack and the evaluator): the same check as
    tests/daemon/test_revocation.py, with backend: iptables."""
    from ..daemon.test_revocation import CUT, KEEP, PORT, EchoServer, connect, doc, echoes
    server = EchoServer(sandbox)
    try:
        path = tmp_path / "host.yaml"
        path.write_text(dump(doc([f"{KEEP}/32", f"{CUT}/32"])))
        cfg = {"source": {"file": {"path": str(path)}}, "netns": sandbox.host_ns,
               "state_dir": str(tmp_path / "state"), "resync_interval": 30.0,
               "backend": "iptables"}
        d = Daemon(cfg, tmp_path)
        daemons.append(d)
        d.start()
        d.wait_log("ready:")
        keep, cut = connect(sandbox, KEEP), connect(sandbox, CUT)
        assert echoes(keep) and echoes(cut)
        mark = d.mark()
        write_atomic(path, dump(doc([f"{KEEP}/32"])))
        d.wait_log(rf"revoked tcp {CUT}:(\d+) -> 10\.1\.0\.10:{PORT}", timeout=5.0, since=mark)
        assert not echoes(cut, timeout=1.0)
        assert echoes(keep)
        assert d.stop() == 0
    finally:
        server.close()
