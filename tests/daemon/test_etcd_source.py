"""The etcd source against a real etcd server: the fleet key layout, watches, restarts,
compaction. Two daemons stand for two hosts of a fleet sharing a group."""

from __future__ import annotations

import signal

import pytest

from sgagent.sandbox import Outcome, Probe

from .support import dports, group, host_section, live_table, wait_until

pytestmark = pytest.mark.kernel

PEER = "10.1.0.21"
P = "/sgagent"


def etcd_source(etcd, host: str, **kw) -> dict:
    return {"etcd": {"endpoints": [etcd.url], "prefix": P, "host": host, "timeout": 2,
                     "backoff": {"initial": 0.1, "max": 0.5}, **kw}}


def probe(sb, *ports: int) -> list[Outcome]:
    return sb.probe_many([Probe("eth0", "inbound", PEER, "tcp", p) for p in ports], timeout=0.5)


def test_fleet_layout_group_change_reaches_every_host(etcd, sandbox, ns, make_daemon):
    etcd.put(f"{P}/groups/sg-web", group([8080]))
    etcd.put(f"{P}/groups/sg-db", group([5432]))
    etcd.put(f"{P}/groups/sg-other", group([1]))
    etcd.put(f"{P}/hosts/host-a", host_section(groups=["sg-web"], instance="host-a"))
    etcd.put(f"{P}/hosts/host-b", host_section(groups=["sg-web", "sg-db"], instance="host-b"))
    a = make_daemon(etcd_source(etcd, "host-a"), sandbox.host_ns, name="a").start()
    b = make_daemon(etcd_source(etcd, "host-b"), ns, name="b").start()
    a.wait_log("ready:")
    b.wait_log("ready:")
    assert dports(sandbox.host_ns) == {8080}
    assert dports(ns) == {8080, 5432}
    assert probe(sandbox, 8080, 9090) == [Outcome.OPEN, Outcome.DROPPED]

    # one write to a shared group reaches both hosts
    etcd.put(f"{P}/groups/sg-web", group([9090]))
    wait_until(lambda: dports(sandbox.host_ns) == {9090}, 5, what="host-a follows sg-web")
    wait_until(lambda: dports(ns) == {9090, 5432}, 5, what="host-b follows sg-web")
    assert probe(sandbox, 8080, 9090) == [Outcome.DROPPED, Outcome.OPEN]

    # a host's binding changes: only that host follows
    etcd.put(f"{P}/hosts/host-a", host_section(groups=["sg-web", "sg-db"], instance="host-a"))
    wait_until(lambda: dports(sandbox.host_ns) == {9090, 5432}, 5, what="host-a binds sg-db")
    assert probe(sandbox, 5432) == [Outcome.OPEN]

    # a broken group that nobody here uses changes nothing
    mark_a = a.mark()
    etcd.put(f"{P}/groups/sg-other", {"rules": [{"direction": "sideways"}]})
    # an invalid shared group is refused by both, with its path; the rules in force stay
    before_a, before_b = live_table(sandbox.host_ns), live_table(ns)
    bad = group([5432])
    bad["rules"][0]["ports"] = 70000
    etcd.put(f"{P}/groups/sg-db", bad)
    for d in (a, b):
        d.wait_log(r"security_groups\.sg-db\.rules\[0\]\.ports: 70000 is not a port")
    assert "sg-other" not in a.log()[mark_a:]
    assert live_table(sandbox.host_ns) == before_a and live_table(ns) == before_b

    # the binding disappears: reported, rules kept; it comes back: followed again
    etcd.delete(f"{P}/hosts/host-b")
    b.wait_log(r"no binding for host 'host-b' at key /sgagent/hosts/host-b")
    assert live_table(ns) == before_b
    etcd.put(f"{P}/groups/sg-db", group([5433]))
    etcd.put(f"{P}/hosts/host-b", host_section(groups=["sg-db"], instance="host-b"))
    wait_until(lambda: dports(ns) == {5433}, 5, what="host-b back")
    assert a.stop() == 0 and b.stop() == 0


def test_etcd_killed_restarted_and_compacted(etcd, sandbox, make_daemon):
    etcd.put(f"{P}/groups/sg-web", group([8080]))
    etcd.put(f"{P}/hosts/h1", host_section(groups=["sg-web"], instance="h1"))
    d = make_daemon(etcd_source(etcd, "h1"), sandbox.host_ns).start()
    d.wait_log("ready:")
    before = live_table(sandbox.host_ns)

    # etcd dies: reported, the rules stay
    etcd.kill()
    d.wait_log(r"source etcd:/sgagent/hosts/h1 unavailable")
    assert live_table(sandbox.host_ns) == before
    assert probe(sandbox, 8080) == [Outcome.OPEN]
    # it comes back (same data): the watch resumes from its revision, a later change arrives
    mark = d.mark()
    etcd.start()
    d.wait_log(r"watch resumed at revision \d+", since=mark)
    etcd.put(f"{P}/groups/sg-web", group([9090]))
    wait_until(lambda: dports(sandbox.host_ns) == {9090}, 5, what="change after restart")
    assert probe(sandbox, 8080, 9090) == [Outcome.DROPPED, Outcome.OPEN]
    assert "compacted" not in d.log()[mark:]

    # the daemon is frozen while etcd restarts, changes and compacts: on waking up its watch
    # cannot resume (revision compacted away), so it reads everything again
    mark = d.mark()
    d.signal(signal.SIGSTOP)
    try:
        etcd.kill()
        etcd.start()
        etcd.put(f"{P}/groups/sg-web", group([7070]))
        etcd.put(f"{P}/hosts/h1", host_section(groups=["sg-web"], instance="h1"))
        etcd.compact(etcd.revision())
    finally:
        d.signal(signal.SIGCONT)
    d.wait_log(r"etcd compacted revision \d+ away", since=mark)
    wait_until(lambda: dports(sandbox.host_ns) == {7070}, 5, what="state after compaction")
    assert probe(sandbox, 7070, 9090) == [Outcome.OPEN, Outcome.DROPPED]
    # and the new watch works
    etcd.put(f"{P}/groups/sg-web", group([7071]))
    wait_until(lambda: dports(sandbox.host_ns) == {7071}, 5, what="change after compaction")
    assert d.stop() == 0
