"""The etcd source cannot die silently either (issue 9, items 4 and 9): a sync step that raises
is reported and everything is read again; a watch thread that dies is started again; and the
"etcd watch resumed" revision never goes backwards (each watch resumes from its own revision,
and a quiet binding's watch is far behind the groups')."""

from __future__ import annotations

import base64
import json
import logging
import re
from typing import Any

import pytest

from sgagent.daemon import source_etcd
from sgagent.daemon.config import Backoff as BackoffConfig
from sgagent.daemon.config import EtcdSource as EtcdConfig
from sgagent.daemon.source_etcd import EtcdSource
from sgagent.daemon.sources import Snapshot, Unavailable

from .support import group, host_section, wait_until

P = "/sgagent"
FAST = BackoffConfig(initial=0.05, max=0.2)
RESUMED = re.compile(r"etcd watch resumed (?:at|from) revision (\d+)")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class Events(list):
    def __call__(self, ev: Any) -> None:
        self.append(ev)

    def snapshots(self) -> list[Snapshot]:
        return [e for e in list(self) if isinstance(e, Snapshot)]


def resumed(caplog) -> list[int]:
    return [int(m.group(1)) for r in caplog.records
            if (m := RESUMED.search(r.getMessage()))]


def test_the_resumed_revision_never_goes_backwards(caplog, monkeypatch):
    """The watches' messages fed by hand: the binding's watch resumes from 101 while the
    groups' resumes from 151; the state held is at 150 whichever comes up last."""
    caplog.set_level(logging.INFO, logger="sgagent.daemon.source_etcd")
    src = EtcdSource(EtcdConfig(endpoints=["http://127.0.0.1:9"], host="h1", backoff=FAST),
                     Events())
    reads: list[int] = []

    def full_read(client: Any) -> None:
        src.revision, src.cluster_id = 100, "c1"
        src._host_value, src._groups = None, {}
        reads.append(100)

    def start_streams() -> None:
        src._gen += 1
        src._down.clear()

    monkeypatch.setattr(src, "_client", lambda: object())
    monkeypatch.setattr(src, "_full_read", full_read)
    monkeypatch.setattr(src, "_start_streams", start_streams)
    src.start()
    try:
        wait_until(lambda: reads, 5, what="the first read")
        gen = src._gen

        def post(*msg: Any) -> None:
            src._inbox.put((gen, msg))

        def outage(first: tuple[str, int], second: tuple[str, int]) -> None:
            n = len(resumed(caplog))
            post("down", "host", "connection refused")
            post("down", "groups", "connection refused")
            for name, start in (first, second):
                post("up", name, 150, "c1", start)
            wait_until(lambda: len(resumed(caplog)) > n, 5, what="the resumption")

        outage(("groups", 101), ("host", 101))
        event = {"type": "PUT", "kv": {"key": _b64(f"{P}/groups/sg-x"), "value": _b64("{}"),
                                       "mod_revision": "150"}}
        post("events", "groups", [event], 150)
        outage(("host", 101), ("groups", 151))
        outage(("groups", 151), ("host", 101))   # the binding's watch comes up last
        revs = resumed(caplog)
        assert revs == sorted(revs), f"the resumed revision went backwards: {revs}"
        assert revs[-2:] == [150, 150]
        assert reads == [100]  # resuming never needed a full read
    finally:
        src.stop()
        src.join()


@pytest.fixture
def fleet(etcd):
    etcd.put(f"{P}/groups/sg-web", group([8080]))
    etcd.put(f"{P}/hosts/h1", host_section(groups=["sg-web"], instance="h1"))
    return etcd


def etcd_source(etcd, events: Events) -> EtcdSource:
    return EtcdSource(EtcdConfig(endpoints=[etcd.url], prefix=P, host="h1", timeout=2,
                                 backoff=FAST), events)


def _ports(snap: Snapshot) -> list[int]:
    data = json.loads(snap.raw)
    return [r["ports"] for r in data["security_groups"]["sg-web"]["rules"]]


def test_a_sync_step_that_raises_is_reported_and_everything_read_again(fleet, monkeypatch):
    real = EtcdSource._apply
    calls = {"n": 0}

    def flaky(self, events, revision):
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyError("injected")
        return real(self, events, revision)

    monkeypatch.setattr(EtcdSource, "_apply", flaky)
    ev = Events()
    src = etcd_source(fleet, ev)
    src.start()
    try:
        wait_until(ev.snapshots, 10, what="the first document")
        fleet.put(f"{P}/groups/sg-web", group([9090]))   # its event raises in the sync step
        wait_until(lambda: any(_ports(s) == [9090] for s in ev.snapshots()), 10,
                   what="the change, after a full read")
        bad = [e for e in ev if isinstance(e, Unavailable)]
        assert [(e.kind, e.reason) for e in bad] == [("internal", "sync: KeyError: 'injected'")]
        assert src.full_reads == 2 and src.health() is None
        fleet.put(f"{P}/groups/sg-web", group([9091]))   # and the watches work again
        wait_until(lambda: any(_ports(s) == [9091] for s in ev.snapshots()), 10,
                   what="a later change")
    finally:
        src.stop()
        src.join()


class _Boom(BaseException):
    """Not an Exception: what the watch's own error handling does not catch."""


def test_a_watch_thread_that_dies_is_started_again(fleet, monkeypatch, caplog):
    real = source_etcd._Stream._watch_once
    died: list[str] = []

    def dies_once(self, backoff):
        if not died:  # the first watch stream, whichever it is
            died.append(self.name)
            raise _Boom("injected")
        return real(self, backoff)

    monkeypatch.setattr(source_etcd._Stream, "_watch_once", dies_once)
    ev = Events()
    src = etcd_source(fleet, ev)
    src.start()
    try:
        wait_until(lambda: any(isinstance(e, Unavailable) and "died" in e.reason for e in ev),
                   10, what="the dead watch reported")
        wait_until(lambda: src.full_reads >= 2, 10, what="everything read again")
        fleet.put(f"{P}/groups/sg-web", group([7070]))
        wait_until(lambda: any(_ports(s) == [7070] for s in ev.snapshots()), 10,
                   what="a change after the watches were started again")
        assert src.health() is None
        assert f"etcd watch {died[0]} died: _Boom: injected" in caplog.text
    finally:
        src.stop()
        src.join()


def test_resumed_after_an_etcd_restart_at_the_revision_held(fleet, caplog):
    """A real etcd killed and started twice, the groups changed before each time: the line
    names a revision that includes those changes, and never a smaller one than before."""
    caplog.set_level(logging.INFO, logger="sgagent.daemon.source_etcd")
    ev = Events()
    src = etcd_source(fleet, ev)
    src.start()
    try:
        wait_until(ev.snapshots, 10, what="the first document")
        for port in (9001, 9002):
            for p in range(port, port + 3):  # the groups' watch moves on, the binding's not
                rev = fleet.put(f"{P}/groups/sg-web", group([p]))
            wait_until(lambda: any(_ports(s) == [port + 2] for s in ev.snapshots()), 10,
                       what="the changes")
            n = len(resumed(caplog))
            fleet.kill()
            wait_until(lambda: any(isinstance(e, Unavailable) for e in ev), 10,
                       what="the outage seen")
            fleet.start()
            wait_until(lambda: len(resumed(caplog)) > n, 15, what="the watches resumed")
            assert resumed(caplog)[-1] >= rev
        revs = resumed(caplog)
        assert revs == sorted(revs)
    finally:
        src.stop()
        src.join()
