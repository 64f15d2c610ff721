"""Sources cannot die silently (issue 9, item 4), with a real ``sgagent run``: a server sending
a non-ASCII ETag, a source thread that dies, a source stuck in a step, a source that keeps
dying. A fault the fixed code no longer has is injected by a wrapper around the real daemon
(``python -c`` patching one method before ``sgagent run``), never by the daemon itself."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sgagent.daemon.state import StateStore

from .support import PYTHON, NotifySocket, document, dports, dump, live_table, wait_until

pytestmark = pytest.mark.kernel

WRAPPER = """
import sys, threading
from sgagent.daemon import sources
from sgagent.daemon.source_https import HttpsSource
sources.STALL_SLACK = 1.0
calls = {{"n": 0}}
{patch}
from sgagent.cli import main
sys.exit(main(["run", "--config", sys.argv[1]]))
"""

# the thread's function raises the first time, then runs as it should
DIES_ONCE = """
real_run = HttpsSource._run
def run(self):
    calls["n"] += 1
    if calls["n"] == 1:
        raise RuntimeError("injected: the source thread dies")
    real_run(self)
HttpsSource._run = run
"""
# the thread's function always raises
DIES_ALWAYS = """
def run(self):
    raise RuntimeError("injected: the source thread dies again")
HttpsSource._run = run
"""
# the second poll never returns (and never beats)
HANGS = """
real_poll = HttpsSource._poll_once
def poll(self):
    calls["n"] += 1
    if calls["n"] >= 2:
        threading.Event().wait()
    return real_poll(self)
HttpsSource._poll_once = poll
"""


def https_source(server, token_file: Path, **kw) -> dict:
    return {"https": {"url": server.url, "token_file": str(token_file),
                      "ca_bundle": str(server.ca), "timeout": 2, "poll_interval": 0.3,
                      "backoff": {"initial": 0.1, "max": 0.5}, **kw}}


def wrapped(make_daemon, tmp_path: Path, patch: str, source: dict, ns: str, **kw):
    script = tmp_path / "wrapper.py"
    script.write_text(WRAPPER.format(patch=patch))
    d = make_daemon(source, ns, **kw)
    d.argv = [PYTHON, str(script), str(d.config_path)]
    return d


@pytest.fixture
def token(docserver, tmp_path: Path) -> Path:
    t = tmp_path / "token"
    t.write_text(docserver.token)
    return t


def test_non_ascii_etag_then_a_new_document_is_applied(docserver, token, ns, make_daemon):
    docserver.etag_bytes = '"v1-été"'.encode()
    docserver.set(dump(document([8080])))
    docserver.start()
    d = make_daemon(https_source(docserver, token), ns).start()
    d.wait_log("ready:")
    assert dports(ns) == {8080}
    # the next polls are conditional GETs with the ETag as the server sent it, answered 304
    wait_until(lambda: len(docserver.requests) >= 4, 10, what="a few polls")
    assert {r["inm"] for r in docserver.requests[1:]} == {docserver.etag()}
    docserver.etag_bytes = 'W/"v2-ü"'.encode()
    docserver.set(dump(document([9090])))
    wait_until(lambda: dports(ns) == {9090}, 5, what="the document after the non-ASCII ETag")
    log = d.log()
    assert "Traceback" not in log and "died" not in log and "unavailable" not in log, log
    assert d.stop() == 0


def test_a_source_thread_that_dies_is_restarted_and_a_later_document_applies(
        docserver, token, ns, make_daemon, tmp_path: Path):
    docserver.set(dump(document([8080])))
    docserver.start()
    d = wrapped(make_daemon, tmp_path, DIES_ONCE, https_source(docserver, token), ns).start()
    d.wait_log(r"source thread source-https died \(RuntimeError: injected: the source thread "
               r"dies\); restarting it in")
    d.wait_log("ready:")
    assert dports(ns) == {8080}
    docserver.set(dump(document([9090])))
    wait_until(lambda: dports(ns) == {9090}, 5, what="a later document")
    assert d.stop() == 0


def _pings(listener: NotifySocket) -> int:
    return sum("WATCHDOG=1" in m for _, m in listener.messages)


def test_a_stuck_source_stops_the_watchdog_pings(docserver, token, ns, make_daemon,
                                                 tmp_path: Path):
    docserver.set(dump(document([8080])))
    docserver.start()
    listener = NotifySocket()
    try:
        d = wrapped(make_daemon, tmp_path, HANGS, https_source(docserver, token), ns,
                    env={"NOTIFY_SOCKET": listener.env_value, "WATCHDOG_USEC": "1000000"})
        d.start()
        listener.collect(lambda m: any("READY=1" in x for x in m), 10)
        assert dports(ns) == {8080}
        # the second poll hangs: after its bound (timeout 2 s + 1 s + the slack, 1 s here)
        # the loop stops feeding the watchdog, and says why
        d.wait_log(r"the source https://\S+ makes no progress \(no poll or watch step of the "
                   r"source finished for \d+s\): the watchdog is no longer fed", 20)
        listener.collect(lambda m: False, 0.5)  # what was sent before that line
        n = _pings(listener)
        listener.collect(lambda m: False, 3.0)  # six ping intervals
        assert _pings(listener) == n, "watchdog pings went on"
        assert any("makes no progress" in m for _, m in listener.messages)  # STATUS=
        assert d.proc is not None and d.proc.poll() is None  # systemd's job to end it
        assert dports(ns) == {8080}  # the rules stay
        assert d.stop() == 0
    finally:
        listener.close()


@pytest.mark.parametrize("watchdog", [True, False], ids=["watchdog", "no-watchdog"])
def test_a_source_that_keeps_dying_stops_the_daemon_from_looking_alive(
        docserver, token, ns, make_daemon, tmp_path: Path, watchdog: bool):
    StateStore(tmp_path / "state").save(dump(document([6060])).encode(), "earlier run")
    listener = NotifySocket()
    env = {"NOTIFY_SOCKET": listener.env_value}
    if watchdog:
        env["WATCHDOG_USEC"] = "1000000"
    try:
        d = wrapped(make_daemon, tmp_path, DIES_ALWAYS, https_source(docserver, token), ns,
                    env=env).start()
        d.wait_log("ready:")  # the last known good, applied when the source failed
        d.wait_log(r"source thread source-https died \(RuntimeError: injected: the source "
                   r"thread dies again\), 6 times in a row without finishing a step; not "
                   r"restarted")
        d.wait_log("makes no progress", 10)
        if watchdog:
            listener.collect(lambda m: False, 0.5)
            n = _pings(listener)
            listener.collect(lambda m: False, 3.0)
            assert _pings(listener) == n, "watchdog pings went on"
            assert d.proc is not None and d.proc.poll() is None
            d.stop()
        else:
            assert d.proc is not None and d.proc.wait(10) == 1
            assert re.search(r"there is no watchdog: exiting with status 1", d.log())
        assert dports(ns) == {6060}  # the rules stay in force either way
        assert live_table(ns)
    finally:
        listener.close()
