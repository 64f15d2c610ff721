"""Tencent ECM seed use cases 1-10 and the multi-group configuration (examples/tencent/),
proven with real packets. Tencent matches sequentially (`ordering: sequential`); its console's
"Reject" is `drop` (SEMANTICS section 3). Where the seed offers "all IP addresses" or "a
specified IP", eth0 carries the first variant and the second ENI eth1 the other.
"""

from __future__ import annotations

import pytest

from tests.conformance.harness import Expect

pytestmark = pytest.mark.kernel

IN, OUT = "inbound", "outbound"
ADMIN, STRANGER, V6 = "198.51.100.7", "203.0.113.9", "2001:db8:1::7"


def E(nic, direction, peer, protocol, port=None, outcome="open", group=None, rule="default"):
    return Expect(nic, direction, peer, protocol, port, outcome, group, rule)


def test_s1_linux_login_ssh(enforce):
    a = dict(group="sg-ssh-all", rule="linux-login-all")
    o = dict(group="sg-ssh-office", rule="linux-login-office")
    enforce("examples/tencent/s1-linux-login-ssh.yaml", [
        E("eth0", IN, STRANGER, "ssh", **a),
        E("eth0", IN, ADMIN, "tcp", 22, **a),
        E("eth0", IN, ADMIN, "tcp", 23, "dropped"),
        E("eth0", IN, V6, "tcp", 22, "dropped"),                             # 0.0.0.0/0: IPv4 only
        E("eth1", IN, ADMIN, "ssh", **o),
        E("eth1", IN, "198.51.100.15", "tcp", 22, **o),                      # last of the /28
        E("eth1", IN, "198.51.100.16", "tcp", 22, "dropped"),                # first past it
        E("eth1", IN, STRANGER, "ssh", outcome="blocked"),
        E("eth1", IN, ADMIN, "tcp", 2222, "dropped"),
        E("eth0", OUT, STRANGER, "tcp", 22),
    ])


def test_s2_windows_login_rdp(enforce):
    a = dict(group="sg-rdp-all", rule="windows-login-all")
    o = dict(group="sg-rdp-admin", rule="windows-login-admin")
    enforce("examples/tencent/s2-windows-login-rdp.yaml", [
        E("eth0", IN, STRANGER, "tcp", 3389, **a),
        E("eth0", IN, ADMIN, "tcp", 3389, **a),
        E("eth0", IN, ADMIN, "tcp", 3388, "dropped"),
        E("eth0", IN, ADMIN, "udp", 3389, "dropped"),
        E("eth1", IN, ADMIN, "tcp", 3389, **o),
        E("eth1", IN, STRANGER, "tcp", 3389, "dropped"),
        E("eth1", IN, ADMIN, "tcp", 3390, "dropped"),
        E("eth1", IN, ADMIN, "ssh", outcome="blocked"),
        E("eth1", OUT, ADMIN, "tcp", 3389),
    ])


def test_s3_ping(enforce):
    a = dict(group="sg-ping-all", rule="ping-all")
    o = dict(group="sg-ping-monitor", rule="ping-monitor")
    enforce("examples/tencent/s3-ping.yaml", [
        E("eth0", IN, ADMIN, "icmp", **a),
        E("eth0", IN, STRANGER, "icmp", **a),
        E("eth0", IN, STRANGER, "tcp", 7, "dropped"),                        # ping only, not TCP
        E("eth0", IN, V6, "icmpv6", outcome="dropped"),
        E("eth1", IN, ADMIN, "icmp", **o),
        E("eth1", IN, STRANGER, "icmp", outcome="dropped"),
        E("eth1", IN, ADMIN, "udp", 33434, "dropped"),
        E("eth0", OUT, STRANGER, "icmp"),
    ])


def test_s4_telnet(enforce):
    a = dict(group="sg-telnet-all", rule="telnet-all")
    o = dict(group="sg-telnet-admin", rule="telnet-admin")
    enforce("examples/tencent/s4-telnet.yaml", [
        E("eth0", IN, STRANGER, "tcp", 23, **a),
        E("eth0", IN, "10.1.0.21", "tcp", 23, **a),
        E("eth0", IN, STRANGER, "ssh", outcome="blocked"),
        E("eth0", IN, STRANGER, "tcp", 24, "dropped"),
        E("eth1", IN, ADMIN, "tcp", 23, **o),
        E("eth1", IN, STRANGER, "tcp", 23, "dropped"),
        E("eth1", IN, "10.2.0.21", "tcp", 23, "dropped"),
        E("eth1", OUT, ADMIN, "tcp", 23),
    ])


def test_s5_web_http_https(enforce):
    enforce("examples/tencent/s5-web-http-https.yaml", [
        E("eth0", IN, STRANGER, "http", group="sg-web-all", rule="http-all"),
        E("eth0", IN, ADMIN, "https", group="sg-web-all", rule="https-all"),
        E("eth0", IN, ADMIN, "tcp", 8080, "dropped"),
        E("eth0", IN, V6, "http", outcome="blocked"),
        E("eth1", IN, ADMIN, "http", group="sg-web-some", rule="http-some"),
        E("eth1", IN, "198.51.100.70", "https", group="sg-web-some", rule="https-some"),
        E("eth1", IN, "198.51.100.80", "https", outcome="blocked"),
        E("eth1", IN, STRANGER, "http", outcome="blocked"),
        E("eth1", IN, ADMIN, "tcp", 8443, "dropped"),
        E("eth1", OUT, STRANGER, "tcp", 443),
    ])


def test_s6_open_port(enforce):
    a = dict(group="sg-svc-all", rule="svc-1101-all")
    o = dict(group="sg-svc-partner", rule="svc-1101-partner")
    enforce("examples/tencent/s6-open-port.yaml", [
        E("eth0", IN, STRANGER, "tcp", 1101, **a),
        E("eth0", IN, ADMIN, "tcp", 1101, **a),
        E("eth0", IN, ADMIN, "tcp", 1100, "dropped"),
        E("eth0", IN, ADMIN, "tcp", 1102, "dropped"),
        E("eth0", IN, ADMIN, "udp", 1101, "dropped"),
        E("eth1", IN, ADMIN, "tcp", 1101, **o),
        E("eth1", IN, STRANGER, "tcp", 1101, "dropped"),
        E("eth1", IN, "198.51.100.8", "tcp", 1101, "dropped"),
        E("eth0", OUT, ADMIN, "tcp", 1101),
    ])


def test_s7_refuse_port(enforce):
    all_, partner = "sg-svc-all", "sg-svc-partner"
    enforce("examples/tencent/s7-refuse-port.yaml", [
        E("eth0", IN, ADMIN, "tcp", 1102, "dropped", all_, "refuse-1102-all"),
        E("eth0", IN, STRANGER, "tcp", 1102, "dropped", all_, "refuse-1102-all"),
        E("eth0", IN, ADMIN, "tcp", 1101, group=all_, rule="svc-range-all"),
        E("eth0", IN, ADMIN, "tcp", 1103, group=all_, rule="svc-range-all"),
        E("eth0", IN, ADMIN, "tcp", 1111, "dropped"),
        E("eth1", IN, STRANGER, "tcp", 1102, "dropped", partner, "refuse-1102-bad-ip"),
        E("eth1", IN, ADMIN, "tcp", 1102, group=partner, rule="svc-range-all"),
        E("eth1", IN, STRANGER, "tcp", 1101, group=partner, rule="svc-range-all"),
        E("eth1", IN, STRANGER, "udp", 1102, "dropped"),
        E("eth0", OUT, STRANGER, "tcp", 1102),
    ])


def test_s7_reject_port_reset(enforce):
    g = "sg-svc-reset"
    enforce("examples/tencent/s7-reject-port-reset.yaml", [
        E("eth0", IN, ADMIN, "tcp", 1102, "rejected", g, "reset-1102-all"),  # TCP reset
        E("eth0", IN, V6, "tcp", 1102, "dropped"),                           # IPv4 rule only
        E("eth0", IN, ADMIN, "tcp", 1101, group=g, rule="svc-range-all"),
        E("eth0", IN, ADMIN, "tcp", 1111, "dropped"),                        # default: silent
        E("eth0", IN, STRANGER, "udp", 53, "rejected", g, "reject-udp-from-bad-ip"),
        E("eth0", IN, ADMIN, "udp", 53, group=g, rule="dns-from-all"),
        E("eth0", IN, ADMIN, "udp", 54, "dropped"),
        E("eth0", OUT, STRANGER, "tcp", 25, "rejected", g, "reject-smtp-out"),
        E("eth0", OUT, STRANGER, "tcp", 587),
        E("eth0", OUT, STRANGER, "udp", 25),
    ])


def test_s8_outbound_only_ip(enforce):
    g = "sg-egress"
    deny = dict(outcome="dropped", group=g, rule="refuse-all-outbound")
    enforce("examples/tencent/s8-outbound-only-ip.yaml", [
        E("eth0", OUT, ADMIN, "tcp", 443, group=g, rule="allow-https-to-partner"),
        E("eth0", OUT, ADMIN, "tcp", 80, **deny),
        E("eth0", OUT, ADMIN, "icmp", **deny),
        E("eth0", OUT, STRANGER, "tcp", 443, **deny),
        E("eth0", OUT, "10.1.0.21", "udp", 53, **deny),
        E("eth0", OUT, V6, "tcp", 443),                                      # 0.0.0.0/0: IPv4 only
        E("eth0", IN, ADMIN, "tcp", 443, "dropped"),
    ])


def test_s9_deny_outbound_ip(enforce):
    g = "sg-egress"
    deny = dict(outcome="dropped", group=g, rule="refuse-blocked-ip")
    enforce("examples/tencent/s9-deny-outbound-ip.yaml", [
        E("eth0", OUT, ADMIN, "tcp", 443, **deny),
        E("eth0", OUT, ADMIN, "udp", 53, **deny),
        E("eth0", OUT, ADMIN, "icmp", **deny),
        E("eth0", OUT, "198.51.100.8", "tcp", 443),
        E("eth0", OUT, STRANGER, "icmp"),
        E("eth0", OUT, "10.1.0.21", "udp", 53),
        E("eth0", IN, ADMIN, "tcp", 22, "dropped"),
    ])


def test_s10_ftp(enforce):
    f = dict(group="sg-ftp", rule="ftp-all")
    enforce("examples/tencent/s10-ftp.yaml", [
        E("eth0", IN, ADMIN, "tcp", 21, **f),
        E("eth0", IN, STRANGER, "tcp", 20, **f),
        E("eth0", IN, "10.1.0.21", "tcp", 21, **f),
        E("eth0", IN, ADMIN, "tcp", 19, "dropped"),
        E("eth0", IN, ADMIN, "tcp", 22, "dropped"),
        E("eth0", IN, ADMIN, "tcp", 50000, "dropped"),                       # passive data port
        E("eth0", IN, V6, "tcp", 21, "dropped"),
        E("eth0", OUT, ADMIN, "tcp", 50001),
    ])


def test_multi_group_order(enforce):
    lab, web = "sg-block-lab", "sg-open-web"
    enforce("examples/tencent/multi-group-order.yaml", [
        # eth0: [sg-block-lab, sg-open-web] -- the refusal comes first
        E("eth0", IN, STRANGER, "http", outcome="blocked", group=lab, rule="refuse-lab-net"),
        E("eth0", IN, STRANGER, "ssh", outcome="blocked", group=lab, rule="refuse-lab-net"),
        E("eth0", IN, ADMIN, "http", group=web, rule="http-all"),
        E("eth0", IN, ADMIN, "tcp", 8080, "dropped"),
        E("eth0", OUT, STRANGER, "tcp", 443, "dropped", lab, "refuse-out-to-lab-net"),
        E("eth0", OUT, ADMIN, "tcp", 443, group=web, rule="https-out-all"),
        # eth1: [sg-open-web, sg-block-lab] -- the same packets, opened first
        E("eth1", IN, STRANGER, "http", group=web, rule="http-all"),
        E("eth1", IN, STRANGER, "ssh", group=web, rule="ssh-all"),
        E("eth1", IN, STRANGER, "tcp", 8080, "dropped", lab, "refuse-lab-net"),
        E("eth1", OUT, STRANGER, "tcp", 443, group=web, rule="https-out-all"),
        E("eth1", OUT, STRANGER, "tcp", 80, "dropped", lab, "refuse-out-to-lab-net"),
        E("eth1", OUT, ADMIN, "tcp", 80),
    ])
