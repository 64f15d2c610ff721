"""A daemon that starts while the kernel already enforces an sgagent table (the boot restore's,
or an earlier run's) and the source does not answer: it keeps that table instead of loading
the saved document over it, which may be older (issue 9: a failed save must not reopen what a
later document closed).  And drift of that table is noticed at once, not at the next resync."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sgagent.daemon.state import StateStore
from sgagent.sandbox import Outcome, Probe

from .support import ROOT, document, dports, dump, live_table, wait_until

pytestmark = pytest.mark.kernel

PEER = "10.1.0.21"


def probe(sb, *ports: int) -> list[Outcome]:
    return sb.probe_many([Probe("eth0", "inbound", PEER, "tcp", p) for p in ports], timeout=0.5)


def nft(ns: str, *args: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "nft", *args], check=True, timeout=30)


def test_restart_without_source_adopts_the_table_of_the_saved_document(
        sandbox, make_daemon, tmp_path: Path):
    doc = tmp_path / "host.yaml"
    doc.write_text(dump(document([7070])))
    d = make_daemon({"file": {"path": str(doc)}}, sandbox.host_ns, resync_interval=600)
    d.start().wait_log(r"ready: the kernel enforces")
    assert d.stop() == 0
    before = live_table(sandbox.host_ns)

    doc.unlink()  # the source has nothing now
    d2 = make_daemon({"file": {"path": str(doc)}}, sandbox.host_ns, name="again",
                     resync_interval=600).start()
    d2.wait_log(r"the kernel already enforces the last known good document .*; keeping it")
    d2.wait_log(r"ready:")
    assert live_table(sandbox.host_ns) == before   # not loaded again
    assert probe(sandbox, 7070, 7071) == [Outcome.OPEN, Outcome.DROPPED]
    # taken as applied: a foreign flush is repaired at once (the resync is 600 s away)
    nft(sandbox.host_ns, "flush", "table", "inet", "sgagent")
    d2.wait_log(r"drift: the live ruleset is not the one applied", timeout=10)
    # (the counters, which dports reads, outlive a flush: wait for the repair itself)
    d2.wait_log(r"drift repaired", timeout=10)
    wait_until(lambda: dports(sandbox.host_ns) == {7070}, 10, what="the repaired table")
    assert probe(sandbox, 7070, 7071) == [Outcome.OPEN, Outcome.DROPPED]
    assert d2.stop() == 0


def test_restart_without_source_keeps_a_newer_live_table_over_an_older_saved_one(
        sandbox, make_daemon, tmp_path: Path):
    # what a failed save leaves: the kernel enforces a newer document (port 8081 only) than
    # the one saved (port 8080 too)
    StateStore(tmp_path / "state").save(dump(document([8080, 8081])).encode(), "older run")
    newer = tmp_path / "newer.yaml"
    newer.write_text(dump(document([8081])))
    subprocess.run([sys.executable, "-m", "sgagent", "apply", str(newer), "--netns",
                    sandbox.host_ns], check=True, timeout=60, cwd=str(ROOT))
    live = live_table(sandbox.host_ns)

    d = make_daemon({"file": {"path": str(tmp_path / "missing.yaml")}}, sandbox.host_ns).start()
    d.wait_log(r"the kernel already enforces an sgagent table and the saved document "
               r"\(saved .* from older run\) is another one; keeping the live rules")
    d.wait_log(r"ready:")
    assert live_table(sandbox.host_ns) == live
    assert dports(sandbox.host_ns) == {8081}
    assert probe(sandbox, 8080, 8081) == [Outcome.DROPPED, Outcome.OPEN]
    # the source answers: its document is applied
    newer.rename(tmp_path / "missing.yaml")
    (tmp_path / "missing.yaml").write_text(dump(document([8082])))
    wait_until(lambda: dports(sandbox.host_ns) == {8082}, 10, what="the source's document")
    assert d.stop() == 0


def test_start_without_table_still_applies_the_saved_document(sandbox, make_daemon,
                                                               tmp_path: Path):
    StateStore(tmp_path / "state").save(dump(document([6060])).encode(), "earlier run")
    assert live_table(sandbox.host_ns) == ""
    d = make_daemon({"file": {"path": str(tmp_path / "missing.yaml")}}, sandbox.host_ns).start()
    d.wait_log(r"applying the last known good document \(saved .* from earlier run\)")
    d.wait_log(r"ready:")
    assert probe(sandbox, 6060, 6061) == [Outcome.OPEN, Outcome.DROPPED]
    assert d.stop() == 0
