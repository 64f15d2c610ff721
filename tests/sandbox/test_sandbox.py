"""The namespace sandbox against the real kernel (root only).

Without a firewall every probe kind is OPEN in both directions; a tiny nft
ruleset in the *host namespace* then proves every probe can also come out
DROPPED or REJECTED.  Nothing here touches the root namespace.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time

import pytest

from sgagent.sandbox import Outcome, Probe, Sandbox, SandboxError

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: builds network namespaces"),
]

OPEN, DROPPED, REJECTED = Outcome.OPEN, Outcome.DROPPED, Outcome.REJECTED
NICS = [("eth0", "intranet"), ("eth1", "internet")]
# peers per NIC and family
PEERS = {
    "eth0": {4: "10.1.0.99", 6: "fd00:1::99"},
    "eth1": {4: "203.0.113.7", 6: "2001:db8:1::7"},
}
ICMP = {4: "icmp", 6: "icmpv6"}


def _namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]


def _root_state() -> tuple[str, str, str]:
    """Root-namespace state the sandbox must never change."""
    def read(path: str) -> str:
        with open(path) as fh:
            return fh.read()
    nft = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout
    return (
        nft,
        read("/proc/sys/net/ipv4/ping_group_range") + read("/proc/sys/net/ipv4/icmp_ratelimit"),
        subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout,
    )


def _all_kinds(nic: str, direction: str, port_tcp: int = 80, port_udp: int = 53) -> list[Probe]:
    out = []
    for fam, peer in PEERS[nic].items():
        out += [
            Probe(nic, direction, peer, "tcp", port_tcp),
            Probe(nic, direction, peer, "udp", port_udp),
            Probe(nic, direction, peer, ICMP[fam]),
        ]
    return out


@pytest.fixture(scope="module")
def sb():
    before = _root_state()
    with Sandbox(NICS) as box:
        box.start_sshd()
        box.start_http(80)
        box.start_http(443, tls=True)
        yield box
    assert _namespaces(box.prefix) == []
    assert _root_state() == before


def test_topology(sb: Sandbox) -> None:
    assert sb.host_ns == f"{sb.prefix}-h"
    assert sb.peer_ns("eth0") == f"{sb.prefix}-p0" and sb.peer_ns("eth1") == f"{sb.prefix}-p1"
    assert set(_namespaces(sb.prefix)) == {sb.host_ns, sb.peer_ns("eth0"), sb.peer_ns("eth1")}
    assert (sb.nic_address("eth0"), sb.gateway("eth0")) == ("10.1.0.10", "10.1.0.1")
    assert (sb.nic_address("eth0", 6), sb.gateway("eth0", 6)) == ("fd00:1::10", "fd00:1::1")
    assert (sb.nic_address("eth1"), sb.gateway("eth1")) == ("192.0.2.10", "192.0.2.1")
    assert sb.nic_address("eth1", 6) == "2001:db8:ffff::10"
    addrs = sb.run("host", ["ip", "-o", "addr", "show", "dev", "eth1"]).stdout
    assert "192.0.2.10/24" in addrs and "2001:db8:ffff::10/64" in addrs and "tentative" not in addrs

    def sysctl(name: str) -> str:
        with open("/proc/sys/net/" + name) as fh:
            return fh.read().strip()

    for name, want in [("ipv4/ip_forward", "0"), ("ipv6/conf/all/forwarding", "0"),
                       ("ipv4/conf/all/rp_filter", "0"), ("ipv4/conf/default/rp_filter", "0"),
                       ("ipv4/conf/eth0/rp_filter", "0"), ("ipv4/conf/eth1/rp_filter", "0")]:
        assert sb.call("host", sysctl, name) == want, name
    with pytest.raises(SandboxError, match="unknown NIC"):
        sb.peer_ns("eth9")


def test_everything_open_without_firewall(sb: Sandbox) -> None:
    probes = [p for nic in ("eth0", "eth1") for d in ("inbound", "outbound") for p in _all_kinds(nic, d)]
    assert sb.probe_many(probes) == [OPEN] * len(probes)
    for nic, peers in PEERS.items():
        for fam, peer in peers.items():
            assert sb.ssh_ok(nic, peer), (nic, peer)
            assert sb.http_ok(nic, peer, 80), (nic, peer)
            assert sb.http_ok(nic, peer, 443, tls=True), (nic, peer)
            assert sb.ping_ok(nic, peer, fam, "inbound"), (nic, peer)
            assert sb.ping_ok(nic, peer, fam, "outbound"), (nic, peer)


def test_peer_routes_follow_the_nic() -> None:
    # One address used as a peer on several NICs: the host route is switched
    # between probes.  A fresh sandbox, probed at once, also catches links
    # whose IPv6 is not up yet (first packets lost -> DROPPED).
    with Sandbox([*NICS, ("eth2", "vpc")]) as box:
        box.start_sshd()
        for peer in ("2001:db8:5::5", "198.51.100.5"):
            probes = [Probe(nic, d, peer, "tcp", 80) for nic in ("eth1", "eth0", "eth2", "eth0")
                      for d in ("inbound", "outbound")]
            assert box.probe_many(probes, timeout=0.5) == [OPEN] * len(probes), peer
            assert box.ssh_ok("eth1", peer) and box.ssh_ok("eth0", peer)
            route = box.run("host", ["ip", "route", "get", peer]).stdout
            assert "dev eth0" in route


def test_sigterm_tears_down() -> None:
    prefix = f"sgt{secrets.token_hex(3)}"
    code = (
        "import sys, time\n"
        "from sgagent.sandbox import Sandbox\n"
        f"with Sandbox([('eth0', 'vpc')], prefix={prefix!r}) as sb:\n"
        "    sb.start_sshd()\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(30)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        assert len(_namespaces(prefix)) == 2
        proc.terminate()
        assert proc.wait(10) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert _namespaces(prefix) == []


def test_vpc_single_nic() -> None:
    with Sandbox([("eth0", "vpc")]) as box:
        box.start_sshd()
        probes = _all_kinds("eth0", "inbound") + _all_kinds("eth0", "outbound")
        assert box.probe_many(probes) == [OPEN] * len(probes)
        assert box.ssh_ok("eth0", "10.1.0.99") and box.ssh_ok("eth0", "fd00:1::99")
        assert box.ping_ok("eth0", "10.1.3.4", direction="outbound")
    assert _namespaces(box.prefix) == []


RULESET = """
table inet sgtest {
  chain input {
    type filter hook input priority 0; policy accept;
    tcp dport 81 drop
    tcp dport 82 reject with icmpx admin-prohibited
    udp dport 83 reject with icmpx admin-prohibited
    udp dport 84 drop
    tcp dport 85 reject with tcp reset
    ip saddr 10.1.0.66 icmp type echo-request reject with icmpx admin-prohibited
    ip6 saddr fd00:1::66 icmpv6 type echo-request reject with icmpx admin-prohibited
    icmp type echo-request drop
    icmpv6 type echo-request drop
    ip saddr 10.1.0.22 tcp dport 22 reject with tcp reset
    ip saddr 10.1.0.80 tcp dport { 80, 443 } reject with icmpx admin-prohibited
  }
  chain output {
    type filter hook output priority 0; policy accept;
    oifname "eth1" tcp dport 91 drop
    oifname "eth1" tcp dport 92 reject with icmpx admin-prohibited
    oifname "eth1" udp dport 93 reject with icmpx admin-prohibited
    oifname "eth1" udp dport 94 drop
    ip daddr 203.0.113.66 icmp type echo-request drop
    ip daddr 203.0.113.67 icmp type echo-request reject with icmpx admin-prohibited
    ip6 daddr 2001:db8:1::66 icmpv6 type echo-request reject with icmpx admin-prohibited
  }
}
"""


def test_firewall_outcomes() -> None:
    before = _root_state()
    with Sandbox(NICS) as box:
        box.start_sshd()
        box.start_http(80)
        box.start_http(443, tls=True)
        subprocess.run(["ip", "netns", "exec", box.host_ns, "nft", "-f", "-"],
                       input=RULESET, text=True, check=True, timeout=10)
        cases: list[tuple[Probe, Outcome]] = []
        for fam, peer in PEERS["eth0"].items():
            cases += [
                (Probe("eth0", "inbound", peer, "tcp", 80), OPEN),
                (Probe("eth0", "inbound", peer, "tcp", 81), DROPPED),
                (Probe("eth0", "inbound", peer, "tcp", 82), REJECTED),
                (Probe("eth0", "inbound", peer, "tcp", 85), REJECTED),
                (Probe("eth0", "inbound", peer, "udp", 53), OPEN),
                (Probe("eth0", "inbound", peer, "udp", 83), REJECTED),
                (Probe("eth0", "inbound", peer, "udp", 84), DROPPED),
                (Probe("eth0", "inbound", peer, ICMP[fam]), DROPPED),
                (Probe("eth0", "outbound", peer, "tcp", 91), OPEN),  # rules are on eth1 only
            ]
        for fam, peer in PEERS["eth1"].items():
            cases += [
                (Probe("eth1", "outbound", peer, "tcp", 80), OPEN),
                (Probe("eth1", "outbound", peer, "tcp", 91), DROPPED),
                (Probe("eth1", "outbound", peer, "tcp", 92), REJECTED),
                (Probe("eth1", "outbound", peer, "udp", 53), OPEN),
                (Probe("eth1", "outbound", peer, "udp", 93), REJECTED),
                (Probe("eth1", "outbound", peer, "udp", 94), DROPPED),
                (Probe("eth1", "outbound", peer, ICMP[fam]), OPEN),
            ]
        cases += [
            (Probe("eth0", "inbound", "10.1.0.66", "icmp"), REJECTED),
            (Probe("eth0", "inbound", "fd00:1::66", "icmpv6"), REJECTED),
            (Probe("eth1", "outbound", "203.0.113.66", "icmp"), DROPPED),
            (Probe("eth1", "outbound", "203.0.113.67", "icmp"), REJECTED),
            (Probe("eth1", "outbound", "2001:db8:1::66", "icmpv6"), REJECTED),
        ]
        got = box.probe_many([p for p, _ in cases], timeout=1.0)
        wrong = [(p, want, seen) for (p, want), seen in zip(cases, got) if want != seen]
        assert not wrong, "\n".join(f"{p}: want {w}, got {s}" for p, w, s in wrong)

        assert box.ssh_ok("eth0", "10.1.0.99")
        assert not box.ssh_ok("eth0", "10.1.0.22")
        assert box.http_ok("eth0", "10.1.0.99", 80) and box.http_ok("eth0", "10.1.0.99", 443, tls=True)
        assert not box.http_ok("eth0", "10.1.0.80", 80)
        assert not box.http_ok("eth0", "10.1.0.80", 443, tls=True)
        assert not box.ping_ok("eth0", "10.1.0.99", 4, "inbound")
        assert not box.ping_ok("eth1", "203.0.113.66", 4, "outbound")
        assert box.ping_ok("eth1", "203.0.113.7", 4, "outbound")
    assert _namespaces(box.prefix) == []
    assert _root_state() == before


def test_many_probes_are_fast() -> None:
    with Sandbox([("eth0", "intranet")]) as box:
        box.run("host", ["nft", "-f", "-"], input=(
            "table inet t {\n chain input {\n type filter hook input priority 0;\n"
            " tcp dport 2000-2999 drop\n udp dport 2000-2999 drop\n }\n}\n"))
        probes = []
        for i in range(200):
            peer = f"10.1.{i % 7 + 1}.{i % 50 + 2}"
            port = (2000 if i % 2 else 1000) + i
            probes.append(Probe("eth0", "inbound", peer, "tcp" if i % 4 < 2 else "udp", port))
        start = time.monotonic()
        got = box.probe_many(probes, timeout=1.0)
        took = time.monotonic() - start
        assert got == [DROPPED if p.port >= 2000 else OPEN for p in probes]  # type: ignore[operator]
        assert took < 6.0, f"200 probes took {took:.1f}s"


def test_teardown_when_body_raises() -> None:
    prefix = f"sgt{secrets.token_hex(3)}"
    with pytest.raises(RuntimeError, match="boom"):
        with Sandbox(NICS, prefix=prefix) as box:
            box.start_sshd()
            pid = box._sshd[22].proc.pid  # noqa: SLF001 - white-box: the process must die
            assert len(_namespaces(prefix)) == 3
            raise RuntimeError("boom")
    assert _namespaces(prefix) == []
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert box.closed
    with pytest.raises(SandboxError, match="closed"):
        box.probe(Probe("eth0", "inbound", "10.1.0.99", "tcp", 80))


def test_bad_input_is_reported_clearly() -> None:
    with pytest.raises(SandboxError, match="role"):
        Sandbox([("eth0", "dmz")])
    with Sandbox([("eth0", "intranet")]) as box:
        with pytest.raises(SandboxError, match="host's own address"):
            box.probe(Probe("eth0", "inbound", "10.1.0.10", "tcp", 80))
        with pytest.raises(SandboxError, match="unknown NIC"):
            box.probe(Probe("eth7", "inbound", "10.1.0.99", "tcp", 80))
        with pytest.raises(ValueError, match="IPv6 peer"):
            box.probe(Probe("eth0", "inbound", "10.1.0.99", "icmpv6"))
        with pytest.raises(ValueError, match="port"):
            box.probe(Probe("eth0", "inbound", "10.1.0.99", "udp"))
        with pytest.raises(ValueError, match="echo-request"):
            box.probe(Probe("eth0", "inbound", "10.1.0.99", "icmp", icmp_type=13))
        with pytest.raises(SandboxError, match="already exists"):
            Sandbox([("eth0", "vpc")], prefix=box.prefix)
        with pytest.raises(SandboxError, match="start_sshd"):
            box.ssh_ok("eth0", "10.1.0.99")
    assert _namespaces(box.prefix) == []


def test_workload_traffic_crosses_the_forward_hook() -> None:
    with Sandbox(NICS) as box:
        wl = box.add_workload("wl0", "10.250.0.2/24", "fd00:ff::2/64")
        assert wl.ns in _namespaces(box.prefix)
        probes = [Probe(nic, d, peer, proto, port, workload="wl0")
                  for nic in ("eth0", "eth1") for d in ("inbound", "outbound")
                  for peer in PEERS[nic].values() for proto, port in (("tcp", 80), ("udp", 53))]
        assert box.probe_many(probes) == [OPEN] * len(probes)
        box.run("host", ["nft", "-f", "-"], input=(
            "table inet t {\n chain forward {\n type filter hook forward priority 0;\n"
            " tcp dport 80 drop\n udp dport 53 reject\n }\n}\n"))
        want = [DROPPED if p.protocol == "tcp" else REJECTED for p in probes]
        assert box.probe_many(probes, timeout=0.5) == want
        # the host itself is not behind the forward hook
        assert box.probe(Probe("eth0", "inbound", "10.1.0.99", "tcp", 80)) == OPEN
    assert _namespaces(box.prefix) == []
