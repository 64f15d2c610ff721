"""The fleet document, its checks and diff, and push/status against a real etcd (no kernel)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from sgagent.daemon.config import EtcdSource as EtcdConfig
from sgagent.daemon.source_etcd import EtcdSource
from sgagent.daemon.sources import Unavailable, Unchanged
from sgagent.fleet.assemble import contributions, with_members
from sgagent.fleet.document import load_fleet
from sgagent.fleet.publish import Refused, plan, push, status, validate
from sgagent.fleet.registration import Registration
from sgagent.fleet.store import ConcurrentWrite, FleetStore
from sgagent.load import DocumentError, parse_data

from tests.daemon.support import ROOT, wait_until

P = "/sgagent"


def peer_group(port: int = 8080, **kw: Any) -> dict[str, Any]:
    return {"inner_access": "drop", **kw, "rules": [
        {"id": f"tcp-{port}", "direction": "inbound", "protocol": "tcp", "ports": port,
         "source": {"group": "sg-app"}}]}


def binding(name: str, groups: list[str], addresses: list[str] | None = None,
            role: str = "vpc") -> dict[str, Any]:
    nic: dict[str, Any] = {"name": "eth0", "role": role, "security_groups": groups}
    if addresses is not None:
        nic["addresses"] = addresses
    return {"instance": f"i-{name}", "account": "1001", "nics": [nic]}


def fleet_doc(**hosts: dict[str, Any]) -> dict[str, Any]:
    return {"version": 1, "security_groups": {"sg-app": peer_group(), "sg-other": {"rules": []}},
            "hosts": hosts}


def write(tmp_path: Path, doc: dict[str, Any], name: str = "fleet.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return p


def sgagent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sgagent", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)


# -- membership ------------------------------------------------------------------------------
def test_members_come_from_vpc_and_intranet_nics_and_registrations():
    b = {"nics": [{"name": "eth0", "security_groups": ["sg-a"], "addresses": ["10.0.0.1"]},
                  {"name": "eth1", "role": "internet", "security_groups": ["sg-a"],
                   "addresses": ["203.0.113.5"]},
                  {"name": "eth2", "role": "Intranet", "security_groups": ["sg-b", "sg-a"]}]}
    reg = {"nics": {"eth2": ["10.0.2.2", "not-an-address"], "eth1": ["203.0.113.6"]}}
    got = contributions(b, reg)
    assert {g: sorted(map(str, a)) for g, a in got.items()} == {
        "sg-a": ["10.0.0.1", "10.0.2.2"], "sg-b": ["10.0.2.2"]}
    group = {"members": ["10.0.0.1/32"], "rules": []}
    assert with_members(group, set()) is group
    assert with_members(group, got["sg-a"])["members"] == ["10.0.0.1/32", "10.0.2.2"]


def test_the_etcd_source_gives_groups_the_fleets_members():
    src = EtcdSource(EtcdConfig(host="h1"), lambda ev: None)
    src._host_value = json.dumps(binding("h1", ["sg-app"], ["10.0.0.1"])).encode()
    src._groups = {"sg-app": json.dumps(peer_group()).encode(),
                   "sg-other": json.dumps({"members": ["10.0.0.9"]}).encode()}
    src._bindings = {"h2": json.dumps(binding("h2", ["sg-app"])).encode(),
                     "h3": json.dumps(binding("h3", ["sg-other"], ["10.0.0.3"])).encode(),
                     "h4": b"nics: [\n"}   # broken: none of h1's business
    src._endpoints = {"h2": json.dumps({"nics": {"eth0": ["10.0.0.2"]}}).encode()}
    doc = parse_data(src.assemble())
    assert [str(m) for m in doc.security_groups["sg-app"].members] == ["10.0.0.1", "10.0.0.2"]
    assert "sg-other" not in doc.security_groups
    # h2's registration goes (its lease ran out): its address leaves the group
    del src._endpoints["h2"]
    doc = parse_data(src.assemble())
    assert [str(m) for m in doc.security_groups["sg-app"].members] == ["10.0.0.1"]


def test_a_registration_elsewhere_is_a_members_only_change_here():
    """Another host's address coming or going changes only members: the document cache keeps
    the rules, the chains compile equal, and the backend takes the element fast path."""
    from sgagent.compiler import compile_document
    from sgagent.daemon.sources import Snapshot
    from sgagent.nft.render import render
    from sgagent.nft.setrender import member_update
    got: list[Any] = []
    src = EtcdSource(EtcdConfig(host="h1"), got.append)
    src._host_value = json.dumps(binding("h1", ["sg-app"], ["10.0.0.1"])).encode()
    src._groups = {"sg-app": json.dumps(peer_group()).encode()}
    src._bindings = {"h2": json.dumps(binding("h2", ["sg-app"])).encode()}
    src._publish(True)
    src._endpoints = {"h2": json.dumps({"nics": {"eth0": ["10.0.0.2"]}}).encode()}
    src._publish(False)
    one, two = (ev.doc for ev in got if isinstance(ev, Snapshot))
    assert two.host is one.host
    assert two.security_groups["sg-app"].rules is one.security_groups["sg-app"].rules
    assert [str(m) for m in two.security_groups["sg-app"].members] == ["10.0.0.1", "10.0.0.2"]
    rs1 = compile_document(one)
    rs2 = compile_document(two, (one, rs1))
    assert rs2.chains == rs1.chains
    assert member_update(render(rs1), rs1, rs2) is not None


# -- the fleet document and its checks -------------------------------------------------------
def test_a_directory_of_files_and_a_name_twice(tmp_path: Path):
    d = tmp_path / "fleet"
    d.mkdir()
    write(d, {"security_groups": {"sg-app": peer_group()}}, "groups.yaml")
    write(d, {"hosts": {"h1": binding("h1", ["sg-app"])}}, "a.yaml")
    write(d, {"hosts": {"h1": binding("h1", [])}, "extra": 1}, "b.yaml")
    with pytest.raises(DocumentError) as info:
        load_fleet(d)
    assert info.value.errors == ["extra (in b.yaml): unknown field (a fleet document has "
                                 "version, security_groups, hosts)",
                                 "hosts.h1 (in b.yaml): defined twice (also in a.yaml)"]
    (d / "b.yaml").unlink()
    f = load_fleet(d)
    assert list(f.hosts) == ["h1"] and list(f.groups) == ["sg-app"]


def test_validate_names_fleet_paths(tmp_path: Path):
    doc = fleet_doc(h1=binding("h1", ["sg-app"], ["10.0.0.1", "nope"]),
                    h2=binding("h2", ["sg-app"]), h3=binding("h3", ["sg-missing"]))
    doc["security_groups"]["sg-unused"] = {"rules": [{"direction": "inbound", "ports": 70000}]}
    errors = validate(load_fleet(write(tmp_path, doc)))
    assert errors == [
        "hosts.h1.nics[0].addresses[1]: 'nope' is not an address",
        "hosts.h3.nics[0].security_groups[0]: group 'sg-missing' is not defined in "
        "security_groups",
        "security_groups.sg-unused.rules[0].protocol: a rule needs a protocol or a service"]
    # a shared group's error once, with the hosts it refuses
    doc = fleet_doc(h1=binding("h1", ["sg-app"]), h2=binding("h2", ["sg-app"]))
    doc["security_groups"]["sg-app"]["rules"][0]["ports"] = 70000
    errors = validate(load_fleet(write(tmp_path, doc)))
    assert errors == ["security_groups.sg-app.rules[0].ports: 70000 is not a port (1..65535) "
                      "[refused by h1, h2]"]


def test_cli_validate_errors_exit_1_without_traceback(tmp_path: Path):
    doc = fleet_doc(h1=binding("h1", ["sg-app"], ["nope"]))
    p = sgagent("fleet", "validate", str(write(tmp_path, doc)))
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "hosts.h1.nics[0].addresses[0]: 'nope' is not an address" in p.stderr
    p = sgagent("fleet", "validate", str(tmp_path / "absent.yaml"))
    assert p.returncode == 1 and "Traceback" not in p.stderr and "absent.yaml" in p.stderr


# -- push, diff, status against etcd ---------------------------------------------------------
def keys(etcd: Any) -> dict[str, tuple[int, Any]]:
    import base64
    r = etcd.post("/v3/kv/range", {"key": base64.b64encode(b"/").decode(),
                                   "range_end": base64.b64encode(b"0").decode()})
    return {base64.b64decode(kv["key"]).decode(): (int(kv["mod_revision"]),
                                                   base64.b64decode(kv.get("value", "")))
            for kv in r.get("kvs") or []}


def test_push_is_one_transaction_and_diff_shows_rules_per_nic(etcd, tmp_path: Path):
    store = FleetStore(EtcdConfig(endpoints=[etcd.url], prefix=P, timeout=5))
    f = load_fleet(write(tmp_path, fleet_doc(h1=binding("h1", ["sg-app"], ["10.0.0.1"]),
                                             h2=binding("h2", ["sg-other"], ["10.0.0.2"]))))
    p, rev = push(f, store)
    held = keys(etcd)
    assert sorted(held) == [f"{P}/fleet", f"{P}/groups/sg-app", f"{P}/groups/sg-other",
                            f"{P}/hosts/h1", f"{P}/hosts/h2"]
    assert {m for m, _ in held.values()} == {rev}   # one transaction: one revision
    assert [d.host for d in p.diffs] == ["h1", "h2"]

    # bind h2 to sg-app and change the rule's port: h1 sees its rule change and a member more
    doc = fleet_doc(h1=binding("h1", ["sg-app"], ["10.0.0.1"]),
                    h2=binding("h2", ["sg-app"], ["10.0.0.2"]))
    doc["security_groups"]["sg-app"]["rules"].append(
        {"id": "ssh", "direction": "inbound", "protocol": "tcp", "ports": 22,
         "source": "10.0.0.0/8"})
    del doc["security_groups"]["sg-other"]
    f2 = load_fleet(write(tmp_path, doc))
    pl = plan(f2, store)
    by_host = {d.host: d for d in pl.diffs}
    assert by_host["h1"].rules == {"eth0": {"+": ["sg-app/ssh"]}}
    assert by_host["h1"].members == {"sg-app": {"+": ["10.0.0.2"]}}
    assert by_host["h2"].rules == {"eth0": {"+": ["sg-app/ssh", "sg-app/tcp-8080"]}}
    assert pl.deletes == [f"{P}/groups/sg-other"]
    p = sgagent("fleet", "diff", "-e", etcd.url, str(tmp_path / "fleet.yaml"))
    assert p.returncode == 2 and "eth0: + sg-app/ssh" in p.stdout, p.stderr

    # a concurrent writer between the read and the transaction: refused, nothing written
    before = keys(etcd)
    etcd.put(f"{P}/groups/sg-app", peer_group(9090))
    after_put = keys(etcd)
    with pytest.raises(ConcurrentWrite, match="nothing was written"):
        store.commit(pl.state, pl.puts, pl.deletes, {})
    assert keys(etcd) == after_put and after_put != before

    # a fleet that one host would refuse: nothing written, the error with its path, exit 1
    bad = fleet_doc(h1=binding("h1", ["sg-app"]), h2=binding("h2", ["sg-app"], ["x"]))
    rev0 = etcd.revision()
    with pytest.raises(Refused) as info:
        push(load_fleet(write(tmp_path, bad, "bad.yaml")), store)
    assert info.value.errors == ["hosts.h2.nics[0].addresses[0]: 'x' is not an address"]
    p = sgagent("fleet", "push", "-e", etcd.url, str(tmp_path / "bad.yaml"))
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "hosts.h2.nics[0].addresses[0]: 'x' is not an address" in p.stderr
    assert "nothing was written" in p.stderr
    assert etcd.revision() == rev0

    # the good one goes through the CLI; then nothing is left to push
    p = sgagent("fleet", "push", "-e", etcd.url, str(tmp_path / "fleet.yaml"))
    assert p.returncode == 0 and "pushed at revision" in p.stdout, p.stderr
    p = sgagent("fleet", "diff", "-e", etcd.url, str(tmp_path / "fleet.yaml"))
    assert p.returncode == 0, p.stdout


def test_etcd_unreachable_is_one_line(tmp_path: Path):
    f = write(tmp_path, fleet_doc(h1=binding("h1", ["sg-app"])))
    p = sgagent("fleet", "push", "-e", "http://127.0.0.1:9", str(f))
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.startswith("error: etcd at http://127.0.0.1:9")
    p = sgagent("fleet", "status", "-e", "nonsense")
    assert p.returncode == 1 and "Traceback" not in p.stderr and "nonsense" in p.stderr
    # endpoints from a daemon config; a config without an etcd source is said so
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(yaml.safe_dump({"source": {"etcd": {"endpoints": ["http://127.0.0.1:9"],
                                                       "register": True}}}))
    p = sgagent("fleet", "status", "--config", str(cfg))
    assert p.returncode == 1 and p.stderr.startswith("error: etcd at http://127.0.0.1:9")
    cfg.write_text(yaml.safe_dump({"source": {"file": {"path": "/x.yaml"}}}))
    p = sgagent("fleet", "status", "--config", str(cfg))
    assert p.returncode == 1 and "source.etcd: the config has no etcd source" in p.stderr


class FakeWatch:
    """The kernel's addresses, as the test says they are."""

    def __init__(self, addrs: dict[str, list[str]]) -> None:
        import os
        self.addrs = addrs
        self.r, self.w = os.pipe()

    def fileno(self) -> int:
        return self.r

    def drain(self) -> bool:
        import os
        os.read(self.r, 100)
        return True

    def read(self, nics: list[str]) -> dict[str, list[str]]:
        return {n: self.addrs.get(n, []) for n in nics}

    def change(self, addrs: dict[str, list[str]]) -> None:
        import os
        self.addrs = addrs
        os.write(self.w, b"x")

    def close(self) -> None:
        import os
        os.close(self.r)
        os.close(self.w)


def test_registration_and_status(etcd, tmp_path: Path):
    store = FleetStore(EtcdConfig(endpoints=[etcd.url], prefix=P, timeout=5))
    f = load_fleet(write(tmp_path, fleet_doc(h1=binding("h1", ["sg-app"]),
                                             h2=binding("h2", ["sg-app"]))))
    push(f, store)
    cfg = EtcdConfig(endpoints=[etcd.url], prefix=P, host="h1", lease_ttl=2)
    src = EtcdSource(cfg, lambda ev: None)
    watch = FakeWatch({"eth0": ["10.0.0.1"]})
    reg = Registration(src._client, P, "h1", 2, watch)
    reg.start()
    reg.follow(["eth0"])
    wait_until(lambda: f"{P}/endpoints/h1" in keys(etcd), 5, what="registration")
    assert json.loads(keys(etcd)[f"{P}/endpoints/h1"][1]) == {"nics": {"eth0": ["10.0.0.1"]}}
    # an address changes in the kernel: registered again
    watch.change({"eth0": ["10.0.0.11"]})
    wait_until(lambda: json.loads(keys(etcd)[f"{P}/endpoints/h1"][1])["nics"]["eth0"]
               == ["10.0.0.11"], 5, what="new address")

    # status: h1 reports the digest of what it should enforce -> current; h2 reports nothing
    from sgagent.daemon.state import digest
    from sgagent.fleet.assemble import document_json
    from sgagent.fleet.check import assemble_all
    st = store.read()
    hosts, groups, regs = (st.data(s)[0] for s in ("hosts", "groups", "endpoints"))
    expected = digest(document_json(assemble_all(hosts, groups, regs)["h1"]))
    reg.applied(st.revision, expected)
    wait_until(lambda: f"{P}/status/h1" in keys(etcd), 5, what="status")
    s = status(store)
    assert [(e["host"], e["state"]) for e in s["hosts"]] == [("h1", "current"), ("h2", "unknown")]
    assert s["hosts"][0]["applied_revision"] == st.revision
    p = sgagent("fleet", "status", "--json", "-e", etcd.url)
    assert p.returncode == 2 and json.loads(p.stdout)["behind"] == ["h2"]
    # with the fleet document: its hosts that etcd does not have yet are listed too
    more = fleet_doc(h1=binding("h1", ["sg-app"]), h2=binding("h2", ["sg-app"]),
                     h9=binding("h9", ["sg-app"]))
    p = sgagent("fleet", "status", "--json", "-e", etcd.url, str(write(tmp_path, more, "m.yaml")))
    assert [(e["host"], e["state"]) for e in json.loads(p.stdout)["hosts"]] == [
        ("h1", "current"), ("h2", "unknown"), ("h9", "not pushed")]
    # a group changes: h1 is behind until it reports again
    etcd.put(f"{P}/groups/sg-app", peer_group(9090))
    assert [e["state"] for e in status(store)["hosts"]] == ["behind", "unknown"]

    # the agent stops: its registration and status go when the lease runs out
    t0 = time.monotonic()
    reg.stop()
    wait_until(lambda: not any(k.startswith((f"{P}/endpoints/", f"{P}/status/"))
                               for k in keys(etcd)), 10, what="lease expiry")
    assert time.monotonic() - t0 >= 1.0


def test_a_push_over_etcds_transaction_limit_writes_nothing(etcd, tmp_path: Path):
    """etcd takes at most --max-txn-ops (128 by default) operations in one transaction: a push
    of more is refused whole, in etcd's words."""
    doc = fleet_doc(**{f"h{i}": binding(f"h{i}", ["sg-app"]) for i in range(130)})
    rev = etcd.revision()
    p = sgagent("fleet", "push", "-e", etcd.url, str(write(tmp_path, doc)))
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "too many operations in txn request" in p.stderr
    assert etcd.revision() == rev


def test_hostile_fleet_files_are_refused_under_limits(tmp_path: Path):
    """An alias bomb and deep nesting in a fleet file: refused with their place, exit 1, within
    a memory and CPU limit (nothing is expanded before it is refused)."""
    import resource

    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        resource.setrlimit(resource.RLIMIT_CPU, (30, 30))
    bomb = "hosts:\n  a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"  {c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi"))
    deep = "security_groups: " + "[" * 5000 + "]" * 5000 + "\n"
    for name, text, says in (("bomb.yaml", bomb, "anchors and aliases are not accepted"),
                             ("deep.yaml", deep, "(fleet): not valid YAML: exceeded maximum "
                                                 "nesting depth")):
        f = tmp_path / name
        f.write_text(text)
        p = subprocess.run([sys.executable, "-m", "sgagent", "fleet", "validate", str(f)],
                           capture_output=True, text=True, timeout=60, cwd=ROOT,
                           preexec_fn=limits)
        assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
        assert says in p.stderr, p.stderr


def test_a_restart_within_the_ttl_keeps_the_registration_and_etcd_restarts_are_ridden_out(
        etcd, tmp_path: Path):
    cfg = EtcdConfig(endpoints=[etcd.url], prefix=P, host="h1", timeout=2)
    src = EtcdSource(cfg, lambda ev: None)
    key = f"{P}/endpoints/h1"

    def registered() -> Any:
        held = keys(etcd).get(key)
        return json.loads(held[1]) if held else None

    first = Registration(src._client, P, "h1", 2, FakeWatch({"eth0": ["10.0.0.1"]}))
    first.start()
    first.follow(["eth0"])
    wait_until(registered, 5, what="registration")
    # the agent restarts: the new registration is written over the old one before that lease
    # runs out, so the key never goes
    first.stop()
    watch = FakeWatch({"eth0": ["10.0.0.1"]})
    second = Registration(src._client, P, "h1", 2, watch)
    second.start()
    second.follow(["eth0"])
    wait_until(lambda: second.lease is not None, 5, what="a new lease")
    deadline = time.monotonic() + 4   # twice the TTL of the first lease
    while time.monotonic() < deadline:
        assert registered() == {"nics": {"eth0": ["10.0.0.1"]}}
        time.sleep(0.1)
    # etcd restarts: the registration stays (etcd keeps its leases), and a later change of the
    # addresses is written once etcd is back
    etcd.kill()
    time.sleep(1)
    etcd.start()
    watch.change({"eth0": ["10.0.0.7"]})
    wait_until(lambda: registered() == {"nics": {"eth0": ["10.0.0.7"]}}, 15,
               what="the new address after the etcd restart")
    second.stop()


# -- the registration's supervision ----------------------------------------------------------
class BreakingWatch(FakeWatch):
    """A FakeWatch whose notification socket breaks ``times`` times (as a netlink socket may:
    an error other than ENOBUFS), after the test tells it to."""

    def __init__(self, addrs: dict[str, list[str]], times: int) -> None:
        super().__init__(addrs)
        self.times = times

    def drain(self) -> bool:
        if self.times > 0:  # the notification stays: the next wait sees it too
            self.times -= 1
            raise OSError(9, "Bad file descriptor (the test's)")
        return super().drain()


def registering_source(etcd: Any, events: list[Any], watch: Any) -> tuple[EtcdSource, Any]:
    """An etcd source (not started) with its registration wired as the source wires it."""
    from sgagent.daemon.config import Backoff as BackoffConfig
    cfg = EtcdConfig(endpoints=[etcd.url], prefix=P, host="h1", lease_ttl=2, timeout=1)
    src = EtcdSource(cfg, events.append)
    src.registration = Registration(src._client, P, "h1", 2, watch, src._registration_report,
                                    BackoffConfig(initial=0.1, max=0.2, jitter=0))
    return src, src.registration


def test_registration_failing_longer_than_its_lease_is_reported_and_recovers(etcd):
    """etcd is gone for three times the lease's TTL: the registration's failure is logged and
    reported through the source (an Unavailable of kind ``registration``, what the daemon
    counts in sgagent_source_errors_total), and once etcd is back it is written again."""
    events: list[Any] = []
    watch = FakeWatch({"eth0": ["10.0.0.1"]})
    src, reg = registering_source(etcd, events, watch)
    key = f"{P}/endpoints/h1"
    reg.start()
    reg.follow(["eth0"])
    wait_until(lambda: key in keys(etcd), 5, what="registration")
    assert events == [] and reg.failing_since is None and src.health() is None
    etcd.kill()
    wait_until(lambda: any(e.kind == "registration" for e in events), 15,
               what="the failure reported")
    failed = [e for e in events if e.kind == "registration"][0]
    assert failed.origin == src.description and "longer than its lease (2s)" in failed.reason
    assert "h1" in failed.reason and reg.failing_since is not None
    assert src.health() is None and not src.dead  # failing, not stuck: no watchdog restart
    time.sleep(3)
    assert len([e for e in events if e.kind == "registration"]) >= 2  # again while it lasts
    etcd.start()
    watch.change({"eth0": ["10.0.0.9"]})
    wait_until(lambda: key in keys(etcd) and json.loads(keys(etcd)[key][1])
               == {"nics": {"eth0": ["10.0.0.9"]}}, 20, what="registered again")
    wait_until(lambda: reg.failing_since is None, 5, what="the failure's end")
    # its end: the source is current again (the daemon's sgagent_source_up back to 1)
    wait_until(lambda: isinstance(events[-1], Unchanged), 5, what="the source current again")
    n = len(events)
    time.sleep(2.5)
    assert len(events) == n and src.health() is None
    reg.stop()


def test_a_registration_thread_that_dies_is_reported_and_restarted(etcd):
    events: list[Any] = []
    watch = BreakingWatch({"eth0": ["10.0.0.1"]}, times=2)
    src, reg = registering_source(etcd, events, watch)
    key = f"{P}/endpoints/h1"
    reg.start()
    reg.follow(["eth0"])
    wait_until(lambda: key in keys(etcd), 5, what="registration")
    watch.change({"eth0": ["10.0.0.2"]})  # the notification breaks the socket, twice
    # counted before it is reported: wait for both reports, not the count
    wait_until(lambda: [getattr(e, "kind", None) for e in events].count("restarted") == 2, 10,
               what="two restarts reported")
    assert reg.restarts == 2
    assert [getattr(e, "kind", "current") for e in events][:3] == [
        "restarted", "current", "restarted"]  # each restart a step's success (Unchanged) ends
    assert "fleet registration thread died (OSError" in events[0].reason
    wait_until(lambda: json.loads(keys(etcd)[key][1]) == {"nics": {"eth0": ["10.0.0.2"]}}, 10,
               what="the address read again by the restarted thread")
    assert src.health() is None and not src.dead
    watch.change({"eth0": ["10.0.0.3"]})
    wait_until(lambda: json.loads(keys(etcd)[key][1]) == {"nics": {"eth0": ["10.0.0.3"]}}, 10,
               what="a later change")
    reg.stop()


def test_a_registration_thread_that_keeps_dying_is_given_up_and_fails_health(etcd):
    """Dying before any step finishes, MAX_RESTARTS times in a row: not restarted again, the
    source is dead and unhealthy (the daemon stops feeding the watchdog)."""
    from sgagent.daemon.sources import MAX_RESTARTS

    class Unreadable(FakeWatch):
        def fileno(self) -> int:
            raise ValueError("the test's: no notification socket")

    events: list[Any] = []
    src, reg = registering_source(etcd, events, Unreadable({}))
    reg.start()
    reg.follow(["eth0"])
    # the thread marks itself dead, then logs and reports it: wait for the report, not the mark
    wait_until(lambda: any(isinstance(e, Unavailable) and e.kind == "dead" for e in events), 15,
               what="given up and reported")
    assert reg.dead
    assert [e.kind for e in events if isinstance(e, Unavailable)] == \
        ["restarted"] * MAX_RESTARTS + ["dead"]
    assert src.dead and "not restarted" in (src.health() or "")
    reg.stop()
