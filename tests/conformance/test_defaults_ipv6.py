"""Defaults (Alibaba basic with inner access, Alibaba enterprise, Tencent's default and custom
templates) and IPv6 on VPC NICs, proven with real packets (examples/*.yaml)."""

from __future__ import annotations

import pytest

from tests.conformance.harness import Expect

pytestmark = pytest.mark.kernel

IN, OUT = "inbound", "outbound"
ADMIN, STRANGER, V6 = "198.51.100.7", "203.0.113.9", "2001:db8:1::7"


def E(nic, direction, peer, protocol, port=None, outcome="open", group=None, rule="default"):
    return Expect(nic, direction, peer, protocol, port, outcome, group, rule)


def test_alibaba_basic_inner_access(enforce):
    enforce("examples/defaults-alibaba-basic.yaml", [
        E("eth0", IN, "10.1.0.21", "tcp", 5432),                             # inner access
        E("eth0", IN, "10.1.0.22", "icmp"),
        E("eth0", IN, "10.1.0.22", "ssh"),
        E("eth0", IN, "10.1.0.21", "tcp", 23, "dropped", "sg-app", "no-telnet-from-intranet"),
        E("eth0", IN, "10.1.0.31", "tcp", 5432, "dropped"),                  # inner_access: drop
        E("eth0", IN, "10.1.0.23", "tcp", 5432, "dropped"),                  # not a member
        E("eth0", IN, ADMIN, "icmp", outcome="dropped"),
        E("eth0", IN, ADMIN, "tcp", 80, "dropped"),
        E("eth0", OUT, ADMIN, "tcp", 443),                                   # outbound open
        E("eth0", OUT, "10.1.0.31", "tcp", 5432),
    ])


def test_alibaba_basic_inner_access_classic(enforce):
    enforce("examples/defaults-alibaba-basic-classic.yaml", [
        E("eth0", IN, "10.1.0.21", "tcp", 3306),                             # inner access
        E("eth0", IN, "10.1.0.21", "ssh"),
        E("eth0", IN, "10.1.0.22", "tcp", 3306, "dropped"),
        E("eth1", IN, "10.1.0.21", "tcp", 3306, "dropped"),                  # not on internet NIC
        E("eth1", IN, ADMIN, "ssh", group="sg-app", rule="ssh-from-admin-ip"),
        E("eth1", IN, STRANGER, "ssh", outcome="blocked"),
        E("eth0", IN, ADMIN, "tcp", 22, "dropped"),
        E("eth0", OUT, "10.1.0.21", "tcp", 3306),
        E("eth1", OUT, STRANGER, "tcp", 443),
    ])


def test_alibaba_enterprise(enforce):
    g = "sg-enterprise"
    enforce("examples/defaults-alibaba-enterprise.yaml", [
        E("eth0", IN, ADMIN, "ssh", group=g, rule="ssh-from-admin-ip"),
        E("eth0", IN, "10.1.0.21", "tcp", 22, "dropped"),                    # no inner access
        E("eth0", IN, "10.1.0.21", "icmp", outcome="dropped"),
        E("eth0", IN, STRANGER, "ssh", outcome="blocked"),
        E("eth0", OUT, STRANGER, "tcp", 443, group=g, rule="https-out-to-api"),
        E("eth0", OUT, STRANGER, "tcp", 80, "dropped"),                      # outbound closed
        E("eth0", OUT, ADMIN, "tcp", 443, "dropped"),
        E("eth0", OUT, ADMIN, "udp", 53, "dropped"),
        E("eth0", OUT, "10.1.0.21", "icmp", outcome="dropped"),
    ])


def test_tencent_defaults(enforce):
    t = dict(group="sg-template", rule="template-tcp-22-80-443-3389")
    enforce("examples/defaults-tencent.yaml", [
        E("eth0", IN, ADMIN, "ssh", **t),
        E("eth0", IN, STRANGER, "http", **t),
        E("eth0", IN, STRANGER, "https", **t),
        E("eth0", IN, ADMIN, "tcp", 3389, **t),
        E("eth0", IN, ADMIN, "icmp", group="sg-template", rule="template-icmp"),
        E("eth0", IN, ADMIN, "tcp", 8080, "dropped"),                        # inbound refused
        E("eth0", IN, ADMIN, "tcp", 21, "dropped"),
        E("eth0", IN, ADMIN, "udp", 53, "dropped"),
        E("eth0", IN, V6, "icmpv6", outcome="dropped"),
        E("eth0", OUT, STRANGER, "tcp", 8080),                               # outbound open
        E("eth0", OUT, STRANGER, "udp", 53),
    ])


def test_tencent_custom_outbound_closed(enforce):
    g = "sg-custom"
    enforce("examples/defaults-tencent-custom.yaml", [
        E("eth0", IN, ADMIN, "ssh", group=g, rule="linux-login-admin"),      # replies: state
        E("eth0", IN, STRANGER, "ssh", outcome="blocked"),
        E("eth0", OUT, STRANGER, "tcp", 443, group=g, rule="https-out-all"),
        E("eth0", OUT, STRANGER, "tcp", 80, "dropped"),                      # outbound closed
        E("eth0", OUT, "10.1.0.2", "udp", 53, group=g, rule="dns-out-resolver"),
        E("eth0", OUT, "10.1.0.3", "udp", 53, "dropped"),
        E("eth0", OUT, ADMIN, "icmp", outcome="dropped"),
        E("eth0", OUT, V6, "tcp", 443, "dropped"),                           # 0.0.0.0/0: IPv4 only
    ])


def test_vpc_ipv6(enforce):
    web, mgmt = "sg-v6-web", "sg-v6-mgmt"
    enforce("examples/vpc-ipv6.yaml", [
        E("eth0", IN, V6, "ssh", group=web, rule="ssh-from-any-v6"),
        E("eth0", IN, "fd00:9::9", "ssh", group=web, rule="ssh-from-any-v6"),
        E("eth0", IN, ADMIN, "ssh", outcome="blocked"),                      # ::/0 is IPv6 only
        E("eth0", IN, V6, "https", group=web, rule="https-from-partner-v6"),
        E("eth0", IN, "2001:db8:2::7", "https", outcome="blocked"),          # outside the /48
        E("eth0", IN, V6, "tcp", 444, "dropped"),
        E("eth0", IN, "fd00:9::9", "icmpv6", group=web, rule="ping-from-private"),
        E("eth0", IN, "10.1.0.21", "icmp", group=web, rule="ping-from-private"),
        E("eth0", IN, V6, "icmpv6", outcome="dropped"),
        E("eth0", OUT, "2001:db8:1::9", "tcp", 25, "rejected", web, "no-smtp-out-v6"),
        E("eth0", OUT, STRANGER, "tcp", 25),
        E("eth0", OUT, "2001:db8:1::9", "tcp", 443),
        E("eth1", IN, "fd00:9::9", "ssh", group=mgmt, rule="ssh-from-mgmt-v6"),
        E("eth1", IN, V6, "ssh", outcome="blocked"),
        E("eth1", IN, "fd00:9::9", "icmpv6", outcome="dropped"),
    ])
