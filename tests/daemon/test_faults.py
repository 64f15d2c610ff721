"""Faults: SIGKILL and restart without a moment unprotected; the kernel refusing a ruleset
halfway (the previous one stays); no document and nothing saved at start."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from sgagent.netns import NetnsExecutor
from sgagent.nft.libnft import Nft, NftError
from sgagent.sandbox import Outcome, Probe

from .support import PYTHON, document, dports, dump, live_table, wait_until, write_atomic

pytestmark = pytest.mark.kernel

PEER = "10.1.0.21"


def probe(sb, *ports: int) -> list[Outcome]:
    return sb.probe_many([Probe("eth0", "inbound", PEER, "tcp", p) for p in ports], timeout=0.5)


class KernelWatch:
    """Reads the live table of a namespace as fast as it can (libnftables, one thread inside
    the namespace) and records every moment the expected rule was missing."""

    def __init__(self, ns: str, needle: str) -> None:
        self.needle = needle
        self.samples = 0
        self.gaps: list[str] = []
        self._stop = threading.Event()
        self._exec = NetnsExecutor(ns)
        self._fut = self._exec.submit(self._run)

    def _run(self) -> None:
        nft = Nft()
        try:
            while not self._stop.is_set():
                try:
                    text = nft.run("list table inet sgagent", stateless=True)
                except NftError as exc:
                    text = f"<{exc}>"
                self.samples += 1
                if self.needle not in text:
                    self.gaps.append(text[:200])
        finally:
            nft.close()

    def close(self) -> None:
        self._stop.set()
        self._fut.result(10)
        self._exec.close()


def test_sigkill_and_restart_never_leave_the_host_unprotected(sandbox, make_daemon, tmp_path):
    path = tmp_path / "host.yaml"
    path.write_text(dump(document([8080])))
    d1 = make_daemon({"file": {"path": str(path)}}, sandbox.host_ns, name="first").start()
    d1.wait_log("ready:")
    before = live_table(sandbox.host_ns)
    watch = KernelWatch(sandbox.host_ns, '|tcp-8080"')
    try:
        wait_until(lambda: watch.samples > 20, 5, what="the watcher to start")
        d1.kill()  # SIGKILL: no chance to clean anything up, nor to remove anything
        n_killed = watch.samples
        time.sleep(0.3)
        assert probe(sandbox, 8080, 9090) == [Outcome.OPEN, Outcome.DROPPED]
        d2 = make_daemon({"file": {"path": str(path)}}, sandbox.host_ns, name="second").start()
        d2.wait_log("ready:")
        time.sleep(0.3)
    finally:
        watch.close()
    assert watch.samples > n_killed + 20, "the watcher did not keep reading the kernel"
    assert watch.gaps == [], f"{len(watch.gaps)} of {watch.samples} reads without the rule"
    assert live_table(sandbox.host_ns) == before  # the same rules after the restart
    assert probe(sandbox, 8080, 9090) == [Outcome.OPEN, Outcome.DROPPED]
    # the restarted daemon still follows the source
    write_atomic(path, dump(document([9090])))
    wait_until(lambda: dports(sandbox.host_ns) == {9090}, 5, what="a change after the restart")
    assert d2.stop() == 0


def _doc_b() -> dict:
    """Adds a group peer, so the ruleset gets new member sets."""
    b = document([9090])
    web = b["security_groups"]["sg-web"]
    web["members"] = ["10.1.0.99"]
    web["rules"].append({"id": "tcp-22", "direction": "inbound", "protocol": "tcp", "ports": 22,
                         "source": {"group": "sg-web"}})
    return b


def test_kernel_refusing_a_ruleset_keeps_the_previous_one(sandbox, make_daemon, tmp_path):
    path = tmp_path / "host.yaml"
    path.write_text(dump(document([8080])))
    fault = tmp_path / "fault"
    d = make_daemon({"file": {"path": str(path)}}, sandbox.host_ns, resync_interval=600)
    d.argv = [PYTHON, str(Path(__file__).with_name("faulty_daemon.py")), str(d.config_path),
              str(fault)]
    d.start()
    d.wait_log("ready:")
    before = live_table(sandbox.host_ns)

    # From now on every transaction ends with a command the kernel refuses: it fails after
    # the kernel has taken in the rest of the new ruleset, and is rolled back whole.
    fault.touch()
    mark = d.mark()
    write_atomic(path, dump(_doc_b()))
    d.wait_log(r"applying the document from .* failed; the previous rules stay in force", since=mark)
    assert live_table(sandbox.host_ns) == before  # nothing of B got in
    assert dports(sandbox.host_ns) == {8080}
    assert probe(sandbox, 8080, 9090) == [Outcome.OPEN, Outcome.DROPPED]
    assert d.proc is not None and d.proc.poll() is None  # and the daemon lives on

    # once the kernel takes it again, the full check (here: SIGHUP) lets the new document in
    fault.unlink()
    import signal
    d.signal(signal.SIGHUP)
    wait_until(lambda: dports(sandbox.host_ns) == {9090, 22}, 5, what="document B")
    assert probe(sandbox, 8080, 9090) == [Outcome.DROPPED, Outcome.OPEN]
    assert d.stop() == 0


def test_nothing_saved_and_no_source_waits_without_rules(ns, make_daemon, tmp_path: Path):
    path = tmp_path / "host.yaml"  # does not exist yet
    d = make_daemon({"file": {"path": str(path)}}, ns).start()
    d.wait_log(r"unavailable: no such file")
    d.wait_log(r"nothing saved in")
    assert live_table(ns) == ""
    path.write_text(dump(document([8080])))
    d.wait_log("ready:")
    assert dports(ns) == {8080}
    assert d.stop() == 0
