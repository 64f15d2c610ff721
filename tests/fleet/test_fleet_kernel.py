"""A fleet with real packets: one etcd, four agents (``sgagent run`` daemons), each enforcing
its own namespace host; the hosts share a bridge in a switch namespace.

sg-app lets tcp/8080 in from the members of sg-app (inner access off, so nothing else gets
in); the members are nobody's list: they are the addresses the agents registered, read from
their namespaces' kernels.  h1-h3 are bound to sg-app, h4 to sg-other."""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from sgagent import netns
from sgagent.daemon.config import EtcdSource as EtcdConfig
from sgagent.fleet.document import load_fleet
from sgagent.fleet.publish import plan
from sgagent.fleet.store import FleetStore

from tests.daemon.support import Daemon, ROOT, wait_until

pytestmark = pytest.mark.kernel

P = "/sgagent"
PORT = 8080
HOSTS = ("h1", "h2", "h3", "h4")
TTL = 2


def addr(h: str) -> str:
    return f"10.77.0.{HOSTS.index(h) + 1}"


class Net:
    """A switch namespace with a bridge and one namespace per host, ``eth0`` on the bridge,
    a listener on :data:`PORT` in each; removed afterwards, also on failure."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.sw = f"sgfsw{tag}"
        self.ns = {h: f"sgf{h}{tag}" for h in HOSTS}
        self.execs: dict[str, netns.NetnsExecutor] = {}
        self.socks: list[socket.socket] = []
        self._stop = threading.Event()

    def __enter__(self) -> "Net":
        netns.create(self.sw)
        sh = lambda ns, cmd: subprocess.run(["ip", "-n", ns, *cmd.split()], check=True,  # noqa: E731
                                           timeout=10)
        sh(self.sw, "link add br0 type bridge")
        sh(self.sw, "link set br0 up")
        for h, ns in self.ns.items():
            netns.create(ns)
            sh(ns, "link set lo up")
            sh(self.sw, f"link add p{h} type veth peer name eth0 netns {ns}")
            sh(self.sw, f"link set p{h} master br0 up")
            sh(ns, f"addr add {addr(h)}/24 dev eth0")
            sh(ns, "link set eth0 up")
            ex = self.execs[h] = netns.NetnsExecutor(ns)
            s = ex.call(socket.create_server, ("0.0.0.0", PORT), backlog=64)
            self.socks.append(s)
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()
        return self

    def _serve(self, s: socket.socket) -> None:
        s.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = s.accept()
                conn.close()
            except OSError:
                continue

    def connects(self, src: str, dst: str, timeout: float = 0.3, via: str | None = None) -> bool:
        """Whether a TCP connection from host ``src`` (from its address ``via``) to
        ``dst``:8080 is set up."""
        def attempt() -> bool:
            with socket.socket() as c:
                c.settimeout(timeout)
                if via is not None:
                    c.bind((via, 0))
                try:
                    c.connect((addr(dst), PORT))
                    return True
                except OSError:
                    return False
        return self.execs[src].call(attempt)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for s in self.socks:
            s.close()
        for ex in self.execs.values():
            ex.close()
        for ns in (*self.ns.values(), self.sw):
            try:
                netns.delete(ns)
            except netns.NetnsError:
                pass


@pytest.fixture
def net() -> Iterator[Net]:
    import os
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces and nftables")
    with Net() as n:
        yield n


def fleet(sg4: str) -> dict[str, Any]:
    return {"version": 1,
            "security_groups": {
                "sg-app": {"inner_access": "drop", "rules": [
                    {"id": f"tcp-{PORT}", "direction": "inbound", "protocol": "tcp",
                     "ports": PORT, "source": {"group": "sg-app"}}]},
                "sg-other": {"inner_access": "drop", "rules": []}},
            "hosts": {h: {"instance": f"i-{h}", "account": "1001",
                          "nics": [{"name": "eth0",
                                    "security_groups": [sg4 if h == "h4" else "sg-app"]}]}
                      for h in HOSTS}}


def sgagent(*args: str) -> subprocess.CompletedProcess[str]:
    import sys
    return subprocess.run([sys.executable, "-m", "sgagent", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)


def published(etcd: Any) -> dict[str, tuple[int, Any]]:
    """What a push writes: the bindings, the groups and /sgagent/fleet, with their revisions."""
    out = {}
    for p in (f"{P}/hosts/", f"{P}/groups/", f"{P}/fleet"):
        end = p[:-1] + chr(ord(p[-1]) + 1)
        r = etcd.post("/v3/kv/range", {"key": b64(p), "range_end": b64(end)})
        out.update({kv["key"]: (kv["mod_revision"], kv.get("value")) for kv in r.get("kvs") or []})
    return out


def b64(text: str) -> str:
    import base64
    return base64.b64encode(text.encode()).decode()


def matrix(net: Net) -> dict[tuple[str, str], bool]:
    return {(a, b): net.connects(a, b) for a in HOSTS for b in HOSTS if a != b}


def test_fleet_of_four_agents_with_real_packets(etcd, net: Net, tmp_path: Path):
    f = tmp_path / "fleet.yaml"
    f.write_text(yaml.safe_dump(fleet("sg-other")))
    p = sgagent("fleet", "push", "-e", etcd.url, str(f))
    assert p.returncode == 0, p.stderr
    agents = {}
    for h in HOSTS:
        cfg = {"source": {"etcd": {"endpoints": [etcd.url], "prefix": P, "host": h,
                                   "timeout": 2, "backoff": {"initial": 0.1, "max": 0.5},
                                   "register": True, "lease_ttl": TTL}},
               "netns": net.ns[h], "state_dir": str(tmp_path / f"state-{h}"),
               "resync_interval": 5.0, "log_level": "debug"}
        agents[h] = Daemon(cfg, tmp_path, h).start()
    for d in agents.values():
        d.wait_log("ready:", timeout=20)

    # sg-app's members are h1-h3 (registered): they reach each other; h4 reaches nobody
    # and nobody reaches h4 (sg-other lets nothing in)
    want = {(a, b): a != "h4" and b != "h4" for a in HOSTS for b in HOSTS if a != b}
    wait_until(lambda: matrix(net) == want, 20, interval=0.2, what="the first matrix")
    wait_until(lambda: json.loads(sgagent("fleet", "status", "--json", "-e",
                                          etcd.url).stdout)["behind"] == [], 10,
               interval=0.2, what="every host current")

    # bind h4 to sg-app: its traffic gets in everywhere (and the others' into h4)
    f.write_text(yaml.safe_dump(fleet("sg-app")))
    store = FleetStore(EtcdConfig(endpoints=[etcd.url], prefix=P))
    pl = plan(load_fleet(f), store)
    t0 = time.monotonic()
    store.commit(pl.state, pl.puts, pl.deletes, {})   # what push does after its checks
    wait_until(lambda: all(net.connects("h4", b, 0.1) for b in ("h1", "h2", "h3")), 10,
               interval=0.005, what="h4 let in everywhere")
    took = time.monotonic() - t0
    print(f"\nFLEET bind -> h4's traffic in everywhere: {1000 * took:.0f} ms after the "
          "transaction was sent (target: within 1 s)")
    assert matrix(net) == {k: True for k in want}

    # h3's agent stops: its lease runs out and its address leaves sg-app everywhere; h3 keeps
    # enforcing its own rules (the kernel keeps them)
    stopped = time.monotonic()
    assert agents["h3"].stop() == 0
    wait_until(lambda: not any(net.connects("h3", b, 0.1) for b in ("h1", "h2", "h4")), 15,
               interval=0.05, what="h3's address out of sg-app")
    gone = time.monotonic() - stopped
    print(f"FLEET agent stopped -> its address out of the group: {1000 * gone:.0f} ms "
          f"(lease TTL {TTL} s)")
    assert gone >= TTL * 0.5  # the lease, not the stop, removed it
    # h3 keeps enforcing what it last applied (members h1, h2, h4): they still get in there
    assert all(net.connects(a, "h3") for a in ("h1", "h2", "h4"))
    assert all(net.connects(a, b) for a in ("h1", "h2", "h4") for b in ("h1", "h2", "h4")
               if a != b)

    # h1 gets a second address: its agent registers it (followed through rtnetlink), and
    # the others let it in
    extra = "10.77.0.11"
    subprocess.run(["ip", "-n", net.ns["h1"], "addr", "add", f"{extra}/24", "dev", "eth0"],
                   check=True, timeout=10)
    wait_until(lambda: net.connects("h1", "h2", 0.1, via=extra)
               and net.connects("h1", "h4", 0.1, via=extra), 10, interval=0.05,
               what="h1's new address in sg-app")

    # a push that one host would refuse writes nothing; nothing changes in any kernel
    bad = fleet("sg-other")
    bad["hosts"]["h2"]["nics"][0]["addresses"] = ["10.77.0.300"]
    f.write_text(yaml.safe_dump(bad))
    before = published(etcd)
    p = sgagent("fleet", "push", "-e", etcd.url, str(f))
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "hosts.h2.nics[0].addresses[0]: '10.77.0.300' is not an address" in p.stderr
    assert published(etcd) == before   # (the agents' own status keys may move meanwhile)
    time.sleep(0.5)
    assert net.connects("h4", "h1") and net.connects("h1", "h4")
    for h in ("h1", "h2", "h4"):
        assert agents[h].stop() == 0
