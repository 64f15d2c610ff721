"""The last known good made visible (issue 9, item 6): when the state directory cannot be
written, the error names what a reboot would restore, the metrics count the failures and keep
the time of the last good save, STATUS= says so, and the save is retried at every full check
until it works. The read-only directory is a read-only bind mount in a mount namespace of the
daemon's own (``unshare -m``): root ignores file modes, not a read-only mount."""

from __future__ import annotations

import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from sgagent.daemon.state import StateStore

from .support import (PYTHON, NotifySocket, document, dports, dump, free_port, wait_until,
                      write_atomic)

pytestmark = pytest.mark.kernel

READ_ONLY = ('mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && '
             'exec "$2" -m sgagent run --config "$3"')


def scrape(port: int) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


def value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} in\n{text}")


def test_a_read_only_state_dir_is_reported_counted_and_retried(ns, make_daemon, tmp_path: Path):
    for tool in ("unshare", "nsenter", "mount"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} (util-linux) is not installed")
    state, path = tmp_path / "state", tmp_path / "host.yaml"
    path.write_text(dump(document([8080])))
    first = make_daemon({"file": {"path": str(path)}}, ns, name="first").start()
    first.wait_log("ready:")
    assert first.stop() == 0
    saved = StateStore(state).info()
    assert saved is not None and saved.origin == f"file:{path}"

    port = free_port()
    listener = NotifySocket()
    d = make_daemon({"file": {"path": str(path)}}, ns, name="second",
                    metrics={"enabled": True, "address": "127.0.0.1", "port": port},
                    env={"NOTIFY_SOCKET": listener.env_value})
    d.argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", READ_ONLY, "sh",
              str(state), PYTHON, str(d.config_path)]
    try:
        d.start()
        d.wait_log("ready:")
        # the same document as the one saved: nothing is lost, and the error says so
        d.wait_log(r"cannot save the last known good document in \S+ \(Read-only file "
                   r"system\); the copy saved at \S+ is the same document, so a reboot "
                   r"would restore it all the same")
        mark = d.mark()
        write_atomic(path, dump(document([9090])))
        wait_until(lambda: dports(ns) == {9090}, 5, what="the new document")
        d.wait_log(rf"ERROR cannot save the last known good document in {re.escape(str(state))} "
                   r"\(Read-only file system\): a reboot would restore the older document saved "
                   rf"at {re.escape(saved.saved_at)} from {re.escape(saved.origin)}, not the one "
                   r"now enforced; retrying at every full check", since=mark)
        assert b"8080" in StateStore(state).load().raw  # what a reboot would restore
        text = scrape(port)
        assert value(text, "sgagent_state_save_errors_total") >= 2
        # the time of the last good save is the earlier daemon's
        assert abs(value(text, "sgagent_state_last_save_timestamp_seconds") - saved.mtime) < 0.01
        listener.collect(lambda m: any("NOT saved as last known good" in x for x in m), 5)
        assert any("NOT saved as last known good (Read-only file system" in m
                   for _, m in listener.messages)
        # retried at every full check (resync_interval 1 s): counted each time, logged once
        errors = value(text, "sgagent_state_save_errors_total")
        wait_until(lambda: value(scrape(port), "sgagent_state_save_errors_total") >= errors + 2,
                   10, what="retries")
        assert d.log()[mark:].count("cannot save the last known good document") == 1

        # writable again: the next full check saves the document now enforced
        subprocess.run(["nsenter", "-t", str(d.pid), "-m", "mount", "-o", "remount,bind,rw",
                        str(state)], check=True, timeout=10)
        d.wait_log(r"WARNING saved the last known good document in \S+ again \(file:",
                   since=mark)
        assert b"9090" in StateStore(state).load().raw
        text = scrape(port)
        assert value(text, "sgagent_state_last_save_timestamp_seconds") > saved.mtime
        errors = value(text, "sgagent_state_save_errors_total")
        listener.collect(lambda m: False, 2.5)  # two more full checks: no more errors
        assert value(scrape(port), "sgagent_state_save_errors_total") == errors
        assert d.stop() == 0
    finally:
        listener.close()


def test_nothing_saved_and_nowhere_to_save_names_the_consequence(ns, make_daemon,
                                                                  tmp_path: Path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state directory's parent should be\n")
    path = tmp_path / "host.yaml"
    path.write_text(dump(document([8080])))
    d = make_daemon({"file": {"path": str(path)}}, ns, state_dir=str(blocker / "state")).start()
    d.wait_log("ready:")
    d.wait_log(r"ERROR cannot save the last known good document in \S+ \(Not a directory\): "
               r"nothing is saved, so a reboot would leave the host without sgagent's "
               r"rules until the source answers")
    assert dports(ns) == {8080}  # enforcement does not depend on the state directory
    assert d.stop() == 0
