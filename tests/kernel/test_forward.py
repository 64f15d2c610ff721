"""SEMANTICS section 6: traffic the host forwards through a managed NIC (a container or VM
behind it) is judged like the host's own: inbound rules of the NIC it enters by, outbound
rules of the NIC it leaves by."""

from __future__ import annotations

import secrets

from sgagent.compiler import compile_document
from sgagent.load import parse_data
from sgagent.nft.backend import NftBackend
from sgagent.sandbox import Outcome, Probe, Sandbox

DOC = {
    "version": 1,
    "host": {"instance": "i-gw", "account": "1", "network": "vpc",
             "nics": [{"name": "eth0", "role": "vpc", "security_groups": ["sg-fwd"]}]},
    "security_groups": {"sg-fwd": {"rules": [
        {"id": "web-from-admin", "direction": "inbound", "protocol": "tcp", "ports": 80,
         "source": "198.51.100.7"},
        {"id": "no-dns-out", "direction": "outbound", "policy": "reject", "protocol": "udp",
         "ports": 53, "destination": "0.0.0.0/0"},
    ]}},
}


def test_forwarded_traffic_is_judged_on_the_managed_nic(root):
    doc = parse_data(DOC)
    with Sandbox([("eth0", "vpc")], prefix=f"sgf{secrets.token_hex(3)}") as sb:
        sb.add_workload("wl0", "10.250.0.2/24", "fd00:ff::2/64")
        sb.ensure_tcp_listener("wl0", 80)
        sb.ensure_tcp_listener("wl0", 81)
        sb.ensure_udp_echo("eth0", 53)
        sb.ensure_udp_echo("eth0", 54)
        with NftBackend(sb.host_ns) as be:
            be.apply(compile_document(doc))
            probes = [
                Probe("eth0", "inbound", "198.51.100.7", "tcp", 80, workload="wl0"),   # allowed
                Probe("eth0", "inbound", "198.51.100.7", "tcp", 81, workload="wl0"),   # next port
                Probe("eth0", "inbound", "203.0.113.9", "tcp", 80, workload="wl0"),    # other peer
                Probe("eth0", "outbound", "203.0.113.9", "udp", 53, workload="wl0"),   # rejected
                Probe("eth0", "outbound", "203.0.113.9", "udp", 54, workload="wl0"),   # default accept
            ]
            got = sb.probe_many(probes, timeout=1.0)
            after = {(r.key.direction, r.key.rule, r.key.policy): r.packets for r in be.counters()}
    assert got == [Outcome.OPEN, Outcome.DROPPED, Outcome.DROPPED, Outcome.REJECTED, Outcome.OPEN]
    assert after[("inbound", "web-from-admin", "accept")] == 1
    assert after[("inbound", "default", "drop")] >= 2
    assert after[("outbound", "no-dns-out", "reject")] >= 1
    assert after[("outbound", "default", "accept")] == 1
