"""The nftables change monitor (nft/monitor.py): a change another process commits to table inet
sgagent calls back at once; changes to other tables and the agent's own commits do not; lost
notifications and a failing callback do not blind it; close() stops it.

Each test runs in a network namespace it creates.  Absence is checked without sleeping: with
``debounce=0`` the callback of a commit is made before the monitor's ``generation`` moves past
it, so once ``generation`` reaches the namespace's current generation every call that any
commit so far could cause has been made.  Waits are bounded generously ("does not hang"); the
time to a repair is what bench/drift.py measures.
"""

from __future__ import annotations

import copy
import errno
import json
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sgagent import netns
from sgagent.compiler import compile_document
from sgagent.load import parse_data
from sgagent.nft.backend import NftBackend
from sgagent.nft.monitor import CommitListener, TableMonitor
from sgagent.nft.netlink import NetlinkCounterReader

ROOT = Path(__file__).resolve().parents[2]
WAIT = 10.0   # generous: only "it does not hang"

DOC = {
    "version": 1,
    "host": {"instance": "i-mon", "account": "1", "network": "vpc",
             "nics": [{"name": "eth0", "role": "vpc", "security_groups": ["sg-a"]}]},
    "security_groups": {
        "sg-a": {"rules": [
            {"id": "db-from-app", "direction": "inbound", "protocol": "tcp", "ports": 3306,
             "source": {"group": "sg-app"}},
            {"id": "web", "direction": "inbound", "protocol": "tcp", "ports": 80,
             "source": "10.1.0.0/24"},
        ]},
        "sg-app": {"members": ["10.1.0.30", "10.2.0.40"]},
    },
}


def document(members: list[str] | None = None, port: int = 80) -> dict:
    doc = copy.deepcopy(DOC)
    if members is not None:
        doc["security_groups"]["sg-app"]["members"] = members
    doc["security_groups"]["sg-a"]["rules"][1]["ports"] = port
    return doc


def ruleset(members: list[str] | None = None, port: int = 80):
    return compile_document(parse_data(document(members, port)))


class Calls:
    """on_change: counts calls, lets a test wait for the next one."""

    def __init__(self) -> None:
        self.n = 0
        self.cond = threading.Condition()

    def __call__(self) -> None:
        with self.cond:
            self.n += 1
            self.cond.notify_all()

    def wait_for(self, n: int) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: self.n >= n, WAIT):
                raise AssertionError(f"on_change was called {self.n} times, not {n}, "
                                     f"within {WAIT}s")


@pytest.fixture
def ns(root):
    name = f"sgmo{secrets.token_hex(3)}"
    netns.create(name)
    try:
        yield name
    finally:
        netns.delete(name)


@pytest.fixture
def backend(ns):
    with NftBackend(ns) as be:
        be.apply(ruleset())
        yield be


def nft(ns: str, *commands: str) -> None:
    subprocess.run(netns.argv_in(ns, ["nft", "; ".join(commands)]), check=True,
                   capture_output=True, text=True, timeout=30)


def wait_until(cond, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not cond():
        assert time.monotonic() < deadline, f"timed out after {WAIT}s waiting for {what}"
        time.sleep(0.005)


def settled(ns: str, mon: TableMonitor, timeout: float = WAIT) -> None:
    """Wait until the monitor has dealt with every commit made in ``ns`` so far."""
    with NetlinkCounterReader(ns) as reader:
        gen = reader.generation()
    deadline = time.monotonic() + timeout
    while mon.generation is None or mon.generation < gen:
        assert mon.running, "the monitor thread ended"
        assert time.monotonic() < deadline, \
            f"the monitor did not see generation {gen} (at {mon.generation}) within {timeout}s"
        time.sleep(0.005)


FOREIGN = {
    "flush the table": ["flush table inet sgagent"],
    "delete a chain": ["flush chain inet sgagent output", "delete chain inet sgagent output"],
    "add a rule": ["add rule inet sgagent in_eth0 tcp dport 4444 accept"],
    "delete the table": ["delete table inet sgagent"],
}


@pytest.mark.parametrize("change", list(FOREIGN))
def test_a_foreign_change_of_the_table_calls_back(ns, backend, change):
    calls = Calls()
    with TableMonitor(ns, calls, debounce=0.05) as mon:
        mon.start()
        nft(ns, *FOREIGN[change])
        calls.wait_for(1)
        assert mon.changes >= 1
        assert mon.last_change is not None and mon.last_change.process == "nft"
        assert mon.last_change.pid != os.getpid()
        settled(ns, mon)
        assert calls.n == 1       # one commit, one call


def test_changes_in_one_window_are_one_call(ns, backend):
    calls = Calls()
    with TableMonitor(ns, calls, debounce=2.0) as mon:
        mon.start()
        for port in (4441, 4442, 4443):
            nft(ns, f"add rule inet sgagent in_eth0 tcp dport {port} accept")
        calls.wait_for(1)
        assert mon.changes == 3
        assert calls.n == 1


def test_other_tables_do_not_call_back(ns, backend):
    calls = Calls()
    with TableMonitor(ns, calls, debounce=0) as mon:
        mon.start()
        nft(ns, "add table ip other", "add chain ip other c",
            "add rule ip other c tcp dport 22 accept")
        nft(ns, "add table ip sgagent", "add chain ip sgagent in_eth0")  # same name, other family
        nft(ns, "flush table ip other", "delete table ip sgagent")
        settled(ns, mon)
        assert calls.n == 0 and mon.changes == 0
        # ... while it is listening: a change of ours, foreign, right after, is seen
        nft(ns, "flush table inet sgagent")
        calls.wait_for(1)


def test_the_agents_own_commits_do_not_call_back(ns, backend, tmp_path):
    calls = Calls()
    with TableMonitor(ns, calls, debounce=0) as mon:
        mon.start()
        assert backend.apply(ruleset(port=81)).mode == "delta"
        assert backend.apply(ruleset(port=82), full=True).mode == "full"
        # members only: the element writer's netlink batch, from this thread
        res = backend.apply(ruleset(port=82, members=["10.1.0.31", "10.2.0.40"]))
        assert res.channel == "netlink"
        backend.flush()
        backend.apply(ruleset())
        settled(ns, mon)
        assert calls.n == 0 and mon.changes == 0
        # the same kind of apply from another process is a foreign change
        path = tmp_path / "doc.json"
        path.write_text(json.dumps(document(port=83)))
        subprocess.run([sys.executable, "-m", "sgagent", "apply", "--netns", ns, str(path)],
                       check=True, timeout=60, cwd=ROOT, capture_output=True)
        calls.wait_for(1)
        assert mon.last_change is not None and mon.last_change.pid != os.getpid()


def test_lost_notifications_call_back(ns, backend):
    """Notifications lost to a full receive buffer: the monitor cannot know what it missed, so
    it calls back, though what was lost (another table's burst) would not have called back by
    itself; then it goes on listening.  The buffer is made to overflow for certain: the
    monitor's thread is held in the callback (it reads nothing) while the burst is committed."""
    rules = "\n".join(f"add rule ip other c tcp dport {1 + i} counter accept" for i in range(3000))
    calls, release = Calls(), threading.Event()

    def on_change() -> None:
        calls()
        if calls.n == 1:
            release.wait(WAIT)

    # room for a small commit's notifications (a few kB), not for the burst's (~0.5 MB)
    with TableMonitor(ns, on_change, debounce=0, rcvbuf=64 << 10) as mon:
        mon.start()
        try:
            nft(ns, "add rule inet sgagent in_eth0 tcp dport 4444 accept")
            calls.wait_for(1)             # the monitor's thread is now held
            subprocess.run(netns.argv_in(ns, ["nft", "-f", "-"]), check=True, timeout=60,
                           input="add table ip other\nadd chain ip other c\n" + rules + "\n",
                           capture_output=True, text=True)
        finally:
            release.set()
        calls.wait_for(2)
        assert mon.overruns >= 1
        assert mon.changes == 1
        assert mon.running
        # it goes on listening: a commit after the loss is seen, and a change of ours calls back
        nft(ns, "add table ip marker")
        settled(ns, mon)
        n = calls.n
        nft(ns, "flush table inet sgagent")
        calls.wait_for(n + 1)
        assert mon.changes == 2


def test_a_failing_callback_does_not_stop_the_monitor(ns, backend, caplog):
    calls = Calls()

    def on_change() -> None:
        calls()
        raise RuntimeError("callback trouble")

    with TableMonitor(ns, on_change, debounce=0) as mon:
        mon.start()
        nft(ns, "flush table inet sgagent")
        calls.wait_for(1)
        nft(ns, "delete table inet sgagent")
        calls.wait_for(2)
        assert mon.running
    assert "callback trouble" in caplog.text


def test_a_socket_error_is_logged_checked_and_survived(ns, backend, monkeypatch, caplog):
    """A failing read: the monitor says so, calls back (it may have missed a change), opens a
    new subscription and goes on."""
    real = CommitListener.read
    failed: list[bool] = []

    def read_failing_once(self):
        if not failed:
            failed.append(True)
            raise OSError(errno.EIO, "injected read failure")
        return real(self)

    monkeypatch.setattr(CommitListener, "read", read_failing_once)
    caplog.set_level(logging.INFO, logger="sgagent.nft.monitor")
    calls = Calls()
    with TableMonitor(ns, calls, debounce=0) as mon:
        mon.start()
        nft(ns, "add table ip other")   # not ours: only the failure calls back
        calls.wait_for(1)
        wait_until(lambda: "subscribed again" in caplog.text, "the monitor to subscribe again")
        assert mon.errors == 1 and mon.running
        assert "injected read failure" in caplog.text
        n = calls.n
        nft(ns, "flush table inet sgagent")
        calls.wait_for(n + 1)
        assert mon.changes == 1


def test_close_stops_the_thread(ns):
    calls = Calls()
    mon = TableMonitor(ns, calls)
    mon.start()
    assert mon.running
    with pytest.raises(RuntimeError):
        mon.start()
    t0 = time.monotonic()
    mon.close()
    assert not mon.running
    assert time.monotonic() - t0 < WAIT
    mon.close()   # again: nothing happens
    names = [t.name for t in threading.enumerate()]
    assert "sgagent-nftmonitor" not in names
    nft(ns, "add table inet sgagent")
    assert calls.n == 0


def test_start_in_a_missing_namespace_says_so(root):
    mon = TableMonitor(f"sgmo-none-{secrets.token_hex(3)}", lambda: None)
    with pytest.raises(netns.NetnsNotFoundError, match="does not exist"):
        mon.start()
    assert not mon.running
    mon.close()


def test_the_drift_benchmark_runs(root, tmp_path):
    """bench/drift.py at a tiny size writes its JSON (no figure is asserted)."""
    out = tmp_path / "drift.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "drift.py"), "--flushes", "2",
                    "--rules", "20", "--out", str(out)],
                   check=True, timeout=300, cwd=ROOT, capture_output=True)
    data = json.loads(out.read_text())
    assert data["benchmark"] == "drift"
    assert data["mode"] in ("daemon", "monitor")
    assert data["repaired"] == 2 and len(data["samples_ms"]) == 2
