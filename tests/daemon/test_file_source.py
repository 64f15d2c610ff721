"""The file source end to end: a real daemon process, a sandbox host, real packets."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from sgagent.sandbox import Outcome, Probe

from .support import document, dports, dump, live_table, wait_until, write_atomic

pytestmark = pytest.mark.kernel

PEER = "10.1.0.21"


def probe(sb, *ports: int) -> list[Outcome]:
    return sb.probe_many([Probe("eth0", "inbound", PEER, "tcp", p) for p in ports], timeout=0.5)


def test_file_source_follows_changes_with_real_packets(sandbox, make_daemon, tmp_path: Path):
    doc = tmp_path / "host.yaml"
    doc.write_text(dump(document([8080])))
    d = make_daemon({"file": {"path": str(doc)}}, sandbox.host_ns).start()
    d.wait_log(r"ready: the kernel enforces")
    assert probe(sandbox, 8080, 9090) == [Outcome.OPEN, Outcome.DROPPED]

    # an in-place edit (not atomic), then an atomic rename over the file: both are followed
    doc.write_text(dump(document([9090])))
    wait_until(lambda: dports(sandbox.host_ns) == {9090}, 5, what="port 9090 in the kernel")
    assert probe(sandbox, 8080, 9090) == [Outcome.DROPPED, Outcome.OPEN]
    write_atomic(doc, dump(document([8080, 9090])))
    wait_until(lambda: dports(sandbox.host_ns) == {8080, 9090}, 5, what="both ports")
    assert probe(sandbox, 8080, 9090) == [Outcome.OPEN, Outcome.OPEN]

    # the applied document is saved as last known good (after the apply and the revocation
    # it brings, so the kernel may hold it a moment before the state file does)
    last_good = tmp_path / "state" / "last-good.json"

    def saved_both() -> bool:
        document = json.loads(last_good.read_text())["document"]
        return "9090" in document and "8080" in document
    wait_until(saved_both, 5, what="the document with both ports saved as last known good")
    assert d.stop() == 0


def test_invalid_document_is_refused_and_rules_stay(sandbox, make_daemon, tmp_path: Path):
    doc = tmp_path / "host.yaml"
    doc.write_text(dump(document([8080])))
    d = make_daemon({"file": {"path": str(doc)}}, sandbox.host_ns).start()
    d.wait_log(r"ready:")
    before = live_table(sandbox.host_ns)
    bad = document([8080])
    bad["security_groups"]["sg-web"]["rules"][0]["ports"] = 70000
    bad["host"]["nics"][0]["bogus"] = 1
    mark = d.mark()
    write_atomic(doc, dump(bad))
    d.wait_log(r"refused the document from .*: \d+ errors; the rules in force stay", since=mark)
    log = d.log()[mark:]
    assert "security_groups.sg-web.rules[0].ports: 70000 is not a port (1..65535)" in log
    assert "host.nics[0].bogus: unknown field" in log
    assert live_table(sandbox.host_ns) == before
    assert probe(sandbox, 8080) == [Outcome.OPEN]
    # not valid YAML at all: refused the same way
    mark = d.mark()
    write_atomic(doc, "version: 1\nhost: [\n")
    d.wait_log(r"not valid YAML", since=mark)
    assert live_table(sandbox.host_ns) == before
    # and a valid one after that is applied again
    write_atomic(doc, dump(document([8081])))
    wait_until(lambda: dports(sandbox.host_ns) == {8081}, 5, what="port 8081")
    assert d.stop() == 0


def test_drift_is_repaired_and_sighup_and_sigterm(sandbox, make_daemon, tmp_path: Path):
    doc = tmp_path / "host.yaml"
    doc.write_text(dump(document([8080])))
    d = make_daemon({"file": {"path": str(doc)}}, sandbox.host_ns, resync_interval=0.5).start()
    d.wait_log(r"ready:")
    applied = live_table(sandbox.host_ns)

    # someone flushes the table: restored by the periodic check, counted and logged
    subprocess.run(["ip", "netns", "exec", sandbox.host_ns, "nft", "flush", "table", "inet",
                    "sgagent"], check=True, timeout=10)
    d.wait_log(r"drift repaired \(1 repair since start\)")
    assert live_table(sandbox.host_ns) == applied
    # someone deletes a rule by hand and adds their own: restored too
    subprocess.run(["ip", "netns", "exec", sandbox.host_ns, "nft", "delete", "table", "inet",
                    "sgagent"], check=True, timeout=10)
    d.wait_log(r"drift repaired \(2 repairs since start\)")
    assert live_table(sandbox.host_ns) == applied
    assert probe(sandbox, 8080, 9090) == [Outcome.OPEN, Outcome.DROPPED]

    # SIGHUP: re-read and reconcile at once
    mark = d.mark()
    d.signal(signal.SIGHUP)
    d.wait_log(r"SIGHUP: reading the source again", since=mark)

    # SIGTERM: exit 0, the rules stay in the kernel
    assert d.stop() == 0
    assert "SIGTERM: exiting; the rules stay in force" in d.log()
    assert live_table(sandbox.host_ns) == applied
    assert probe(sandbox, 8080, 9090) == [Outcome.OPEN, Outcome.DROPPED]
