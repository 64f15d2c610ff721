"""Helpers of the metrics tests."""

from __future__ import annotations

import socket
from pathlib import Path

from sgagent.ir import CounterKey
from sgagent.nft.backend import CounterReading

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "examples" / "monitoring"


def reading(nic="eth0", direction="inbound", group="sg-web", rule="http", policy="accept",
            packets=0, nbytes=0) -> CounterReading:
    return CounterReading(CounterKey(nic, direction, group, rule, policy), packets, nbytes)


class FakeKernel:
    """A ``read_counters`` stand-in: returns ``readings``, counts its calls, can fail."""

    def __init__(self, readings=()):
        self.readings = list(readings)
        self.calls = 0
        self.fail: Exception | None = None

    def __call__(self):
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        return list(self.readings)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- a small host for the kernel tests ----------------------------------------------------------
# One VPC NIC (eth0: 10.1.0.10/16 in the sandbox).  Probes hit http (3 connections), block-8080
# (dropped), dns-out (outbound) and the inbound default drop; https, reject-udp, ssh-admin,
# failsafe/0 and the outbound default are neighbours that must stay at zero.
def host_document(with_https: bool = True) -> dict:
    rules = [
        {"id": "http", "direction": "inbound", "policy": "accept", "protocol": "tcp",
         "ports": "80", "source": "10.0.0.0/8", "priority": 10},
        {"id": "https", "direction": "inbound", "policy": "accept", "protocol": "tcp",
         "ports": "443", "source": "10.0.0.0/8", "priority": 10},
        {"id": "block-8080", "direction": "inbound", "policy": "drop", "protocol": "tcp",
         "ports": "8080", "source": "10.1.0.99", "priority": 5},
        {"id": "reject-udp", "direction": "inbound", "policy": "reject", "protocol": "udp",
         "ports": "5353", "source": "10.1.0.0/16", "priority": 5},
        {"id": "ssh-admin", "direction": "inbound", "policy": "accept", "service": "ssh",
         "source": "10.1.0.77"},
        {"id": "dns-out", "direction": "outbound", "policy": "accept", "protocol": "udp",
         "ports": "53", "destination": "10.1.0.0/16", "priority": 1},
    ]
    if not with_https:
        rules = [r for r in rules if r["id"] != "https"]
    return {
        "version": 1,
        "host": {
            "instance": "i-metrics", "account": "1001", "network": "vpc",
            "nics": [{"name": "eth0", "role": "vpc", "security_groups": ["sg-web"]}],
            "failsafe": [{"direction": "inbound", "protocol": "tcp", "ports": "2222",
                          "source": "10.1.0.50"}],
        },
        "security_groups": {"sg-web": {"account": "1001", "type": "basic", "rules": rules}},
    }


def traffic():
    """The probes of the kernel tests and their outcomes."""
    from sgagent.sandbox import Outcome, Probe
    return [
        (Probe("eth0", "inbound", "10.1.0.99", "tcp", 80), Outcome.OPEN),
        (Probe("eth0", "inbound", "10.1.0.98", "tcp", 80), Outcome.OPEN),
        (Probe("eth0", "inbound", "10.1.0.97", "tcp", 80), Outcome.OPEN),
        (Probe("eth0", "inbound", "10.1.0.99", "tcp", 8080), Outcome.DROPPED),
        (Probe("eth0", "inbound", "10.1.0.96", "tcp", 9999), Outcome.DROPPED),
        (Probe("eth0", "outbound", "10.1.0.53", "udp", 53), Outcome.OPEN),
    ]


# (group, rule, nic, direction, policy) -> (minimum, maximum) packets the traffic adds
EXPECTED = {
    ("sg-web", "http", "eth0", "inbound", "accept"): (3, 3),        # first packet of each
    ("sg-web", "block-8080", "eth0", "inbound", "drop"): (1, 10),   # every SYN, retries too
    ("sg-web", "dns-out", "eth0", "outbound", "accept"): (1, 1),
    ("sg-web", "https", "eth0", "inbound", "accept"): (0, 0),
    ("sg-web", "reject-udp", "eth0", "inbound", "reject"): (0, 0),
    ("sg-web", "ssh-admin", "eth0", "inbound", "accept"): (0, 0),
    ("", "failsafe/0", "eth0", "inbound", "accept"): (0, 0),
}
EXPECTED_DEFAULTS = {
    ("eth0", "inbound", "drop"): (1, 10),
    ("eth0", "outbound", "accept"): (0, 0),
}
