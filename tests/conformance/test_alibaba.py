"""Alibaba ECS seed scenarios 1-6 (examples/alibaba/), proven with real packets.

Every test probes both sides: the authorised peer on the opened port (a real ssh / curl client
where the scenario is about SSH or HTTP(S)) and what must stay closed: an address that is not
authorised, the port next to the opened one, the other NIC (classic) or ENI, the other direction.
Addresses follow the sandbox plan: vpc/intranet NIC i is 10.(i+1).0.10/16, the internet NIC is
192.0.2.10/24; the seed's "1.2.3.4" is 198.51.100.7, 203.0.113.9 is an unauthorised address.
"""

from __future__ import annotations

import pytest

from tests.conformance.harness import Expect

pytestmark = pytest.mark.kernel

IN, OUT = "inbound", "outbound"
ADMIN, STRANGER = "198.51.100.7", "203.0.113.9"


def E(nic, direction, peer, protocol, port=None, outcome="open", group=None, rule="default"):
    return Expect(nic, direction, peer, protocol, port, outcome, group, rule)


# --- scenario 1: intranet communication --------------------------------------------------------

def test_s1_intranet_same_account_vpc(enforce):
    g, r = "sg-a", "ssh-from-sg-b"
    enforce("examples/alibaba/s1-intranet-same-account-vpc.yaml", [
        E("eth0", IN, "10.1.0.21", "ssh", group=g, rule=r),                  # member of sg-b
        E("eth0", IN, "10.1.0.21", "tcp", 22, group=g, rule=r),
        E("eth0", IN, "10.2.0.21", "tcp", 22, group=g, rule=r),              # other member
        E("eth0", IN, "10.1.0.22", "ssh", outcome="blocked"),                # not a member
        E("eth0", IN, "10.1.0.21", "tcp", 23, "dropped"),                    # port next to it
        E("eth0", IN, "10.1.0.21", "icmp", outcome="dropped"),               # other protocol
        E("eth1", IN, "10.2.0.21", "ssh", outcome="blocked"),                # other ENI: no rule
        E("eth1", IN, "10.1.0.21", "tcp", 22, "dropped"),
        E("eth0", OUT, "10.1.0.21", "tcp", 22),                              # outbound: default
        E("eth1", OUT, "10.2.0.21", "tcp", 22),
    ])


def test_s1_intranet_same_account_classic(enforce):
    g, r = "sg-a", "ssh-from-sg-b"
    enforce("examples/alibaba/s1-intranet-same-account-classic.yaml", [
        E("eth0", IN, "10.1.0.21", "ssh", group=g, rule=r),
        E("eth0", IN, "10.1.0.21", "tcp", 22, group=g, rule=r),
        E("eth0", IN, "10.1.0.22", "ssh", outcome="blocked"),
        E("eth0", IN, "10.1.0.21", "tcp", 23, "dropped"),
        E("eth1", IN, "10.1.0.21", "tcp", 22, "dropped"),                    # internet NIC
        E("eth1", IN, ADMIN, "ssh", outcome="blocked"),
        E("eth0", OUT, "10.1.0.21", "tcp", 22),
        E("eth1", OUT, ADMIN, "tcp", 443),
    ])


def test_s1_intranet_cross_account_classic(enforce):
    g, r = "sg-a", "tcp-from-user-b-sg-b"
    enforce("examples/alibaba/s1-intranet-cross-account-classic.yaml", [
        E("eth0", IN, "10.1.0.21", "ssh", group=g, rule=r),                  # B.B.B.B, account 2002
        E("eth0", IN, "10.1.0.21", "tcp", 22, group=g, rule=r),
        E("eth0", IN, "10.1.0.22", "tcp", 22, "dropped"),                    # A's other group
        E("eth0", IN, "10.1.0.22", "ssh", outcome="blocked"),
        E("eth0", IN, "10.1.0.21", "tcp", 21, "dropped"),
        E("eth0", IN, "10.1.0.21", "udp", 22, "dropped"),
        E("eth1", IN, "10.1.0.21", "tcp", 22, "dropped"),                    # internet NIC
        E("eth0", OUT, "10.1.0.21", "tcp", 22),
    ])


# --- scenario 2: SSH from a specified IP address only --------------------------------------------

def test_s2_ssh_from_ip_vpc(enforce):
    g, r = "sg-remote", "ssh-from-admin-ip"
    enforce("examples/alibaba/s2-ssh-from-ip-vpc.yaml", [
        E("eth0", IN, ADMIN, "ssh", group=g, rule=r),
        E("eth0", IN, ADMIN, "tcp", 22, group=g, rule=r),
        E("eth0", IN, STRANGER, "ssh", outcome="blocked"),
        E("eth0", IN, "198.51.100.8", "tcp", 22, "dropped"),                 # the next address
        E("eth0", IN, ADMIN, "tcp", 23, "dropped"),
        E("eth0", IN, ADMIN, "tcp", 21, "dropped"),
        E("eth0", IN, "10.1.0.21", "tcp", 22, "dropped"),
        E("eth1", IN, ADMIN, "ssh", outcome="blocked"),                      # the other ENI
        E("eth0", OUT, ADMIN, "tcp", 22),
        E("eth0", OUT, STRANGER, "udp", 53),
    ])


def test_s2_ssh_from_ip_classic(enforce):
    g, r = "sg-remote", "ssh-from-admin-ip"
    enforce("examples/alibaba/s2-ssh-from-ip-classic.yaml", [
        E("eth1", IN, ADMIN, "ssh", group=g, rule=r),
        E("eth1", IN, ADMIN, "tcp", 22, group=g, rule=r),
        E("eth1", IN, STRANGER, "ssh", outcome="blocked"),
        E("eth1", IN, ADMIN, "tcp", 23, "dropped"),
        E("eth0", IN, ADMIN, "tcp", 22, "dropped"),                          # intranet NIC
        E("eth0", IN, "10.1.0.21", "ssh", outcome="blocked"),
        E("eth1", OUT, ADMIN, "tcp", 22),
    ])


# --- scenario 3: the instance reaches specified IP addresses only --------------------------------

def test_s3_outbound_only_ip_vpc(enforce):
    g = "sg-egress"
    deny = dict(outcome="dropped", group=g, rule="deny-all-outbound")
    enforce("examples/alibaba/s3-outbound-only-ip-vpc.yaml", [
        E("eth0", OUT, ADMIN, "tcp", 443, group=g, rule="allow-https-to-partner"),
        E("eth0", OUT, ADMIN, "icmp", group=g, rule="allow-ping-to-partner"),
        E("eth0", OUT, ADMIN, "tcp", 80, **deny),                            # other port
        E("eth0", OUT, ADMIN, "udp", 443, **deny),                           # other protocol
        E("eth0", OUT, STRANGER, "tcp", 443, **deny),                        # other address
        E("eth0", OUT, STRANGER, "icmp", **deny),
        E("eth0", OUT, "10.1.0.21", "tcp", 443, **deny),                     # 0.0.0.0/0: intranet too
        E("eth0", IN, ADMIN, "tcp", 23, "dropped"),                          # inbound: default
        E("eth0", IN, ADMIN, "icmp", outcome="dropped"),
    ])


def test_s3_outbound_only_ip_classic(enforce):
    g = "sg-egress"
    deny = dict(outcome="dropped", group=g, rule="deny-all-outbound")
    enforce("examples/alibaba/s3-outbound-only-ip-classic.yaml", [
        E("eth1", OUT, ADMIN, "tcp", 443, group=g, rule="allow-https-to-partner"),
        E("eth1", OUT, ADMIN, "icmp", group=g, rule="allow-ping-to-partner"),
        E("eth1", OUT, ADMIN, "tcp", 80, **deny),
        E("eth1", OUT, STRANGER, "tcp", 443, **deny),
        E("eth1", OUT, STRANGER, "udp", 53, **deny),
        E("eth0", OUT, "10.1.0.21", "tcp", 443),                             # intranet: default
        E("eth0", OUT, "10.1.0.21", "icmp"),
        E("eth0", OUT, STRANGER, "tcp", 80),
        E("eth1", IN, ADMIN, "tcp", 443, "dropped"),
    ])


# --- scenario 4: remote connection ------------------------------------------------------------

def test_s4_remote_internet_vpc(enforce):
    g = "sg-remote"
    enforce("examples/alibaba/s4-remote-internet-vpc.yaml", [
        E("eth0", IN, STRANGER, "ssh", group=g, rule="ssh-from-internet"),
        E("eth0", IN, ADMIN, "tcp", 3389, group=g, rule="rdp-from-internet"),
        E("eth0", IN, "10.1.0.21", "tcp", 3389, group=g, rule="rdp-from-internet"),
        E("eth0", IN, ADMIN, "tcp", 2222, group=g, rule="custom-ssh-port-from-internet"),
        E("eth0", IN, ADMIN, "tcp", 3390, "dropped"),
        E("eth0", IN, ADMIN, "tcp", 2223, "dropped"),
        E("eth0", IN, ADMIN, "udp", 3389, "dropped"),
        E("eth0", IN, "2001:db8:1::7", "ssh", outcome="blocked"),            # 0.0.0.0/0 is IPv4 only
        E("eth0", IN, "2001:db8:1::7", "tcp", 3389, "dropped"),
        E("eth0", OUT, STRANGER, "tcp", 3389),
    ])


def test_s4_remote_internet_classic(enforce):
    g = "sg-remote"
    enforce("examples/alibaba/s4-remote-internet-classic.yaml", [
        E("eth1", IN, STRANGER, "ssh", group=g, rule="ssh-from-internet"),
        E("eth1", IN, ADMIN, "tcp", 3389, group=g, rule="rdp-from-internet"),
        E("eth1", IN, ADMIN, "tcp", 2222, group=g, rule="custom-ssh-port-from-internet"),
        E("eth1", IN, ADMIN, "tcp", 3388, "dropped"),
        E("eth1", IN, ADMIN, "udp", 3389, "dropped"),
        E("eth0", IN, "10.1.0.21", "ssh", outcome="blocked"),                # intranet NIC
        E("eth0", IN, "10.1.0.21", "tcp", 3389, "dropped"),
        E("eth1", OUT, STRANGER, "tcp", 22),
    ])


def test_s4_remote_intranet_ip_vpc(enforce):
    g = "sg-remote"
    enforce("examples/alibaba/s4-remote-intranet-ip-vpc.yaml", [
        E("eth0", IN, "10.8.0.21", "ssh", group=g, rule="ssh-from-peer-instance"),
        E("eth0", IN, "10.8.0.21", "tcp", 3389, group=g, rule="rdp-from-peer-instance"),
        E("eth0", IN, "10.8.0.22", "ssh", outcome="blocked"),
        E("eth0", IN, "10.1.0.21", "tcp", 3389, "dropped"),
        E("eth0", IN, ADMIN, "tcp", 22, "dropped"),
        E("eth0", IN, "10.8.0.21", "tcp", 3390, "dropped"),
        E("eth0", IN, "10.8.0.21", "icmp", outcome="dropped"),
        E("eth0", OUT, "10.8.0.21", "tcp", 22),
    ])


def test_s4_remote_intranet_ip_classic(enforce):
    g = "sg-remote"
    enforce("examples/alibaba/s4-remote-intranet-ip-classic.yaml", [
        E("eth0", IN, "10.1.0.21", "ssh", group=g, rule="ssh-from-peer-instance"),
        E("eth0", IN, "10.1.0.21", "tcp", 3389, group=g, rule="rdp-from-peer-instance"),
        E("eth0", IN, "10.1.0.22", "ssh", outcome="blocked"),
        E("eth0", IN, "10.1.0.22", "tcp", 3389, "dropped"),
        E("eth0", IN, "10.1.0.21", "tcp", 23, "dropped"),
        E("eth1", IN, "10.1.0.21", "tcp", 22, "dropped"),                    # internet NIC
        E("eth1", IN, ADMIN, "ssh", outcome="blocked"),
        E("eth0", OUT, "10.1.0.21", "tcp", 3389),
    ])


def test_s4_remote_intranet_group_vpc(enforce):
    g = "sg-remote"
    enforce("examples/alibaba/s4-remote-intranet-group-vpc.yaml", [
        E("eth0", IN, "10.8.0.21", "ssh", group=g, rule="ssh-from-ops-group"),
        E("eth0", IN, "10.8.0.22", "ssh", group=g, rule="ssh-from-ops-group"),
        E("eth0", IN, "10.8.0.22", "tcp", 3389, group=g, rule="rdp-from-ops-group"),
        E("eth0", IN, "10.8.0.23", "ssh", outcome="blocked"),                # not in sg-ops
        E("eth0", IN, "10.8.0.23", "tcp", 3389, "dropped"),
        E("eth0", IN, "10.8.0.21", "tcp", 3388, "dropped"),
        E("eth0", IN, ADMIN, "tcp", 22, "dropped"),
        E("eth0", OUT, "10.8.0.21", "tcp", 3389),
    ])


def test_s4_remote_intranet_group_classic(enforce):
    g = "sg-remote"
    enforce("examples/alibaba/s4-remote-intranet-group-classic.yaml", [
        E("eth0", IN, "10.1.0.21", "ssh", group=g, rule="ssh-from-ops-group"),
        E("eth0", IN, "10.1.0.22", "tcp", 3389, group=g, rule="rdp-from-ops-group"),
        E("eth0", IN, "10.1.0.23", "ssh", outcome="blocked"),
        E("eth0", IN, "10.1.0.21", "tcp", 3390, "dropped"),
        E("eth1", IN, "10.1.0.21", "tcp", 22, "dropped"),                    # internet NIC
        E("eth1", IN, ADMIN, "tcp", 3389, "dropped"),
        E("eth0", OUT, "10.1.0.21", "tcp", 22),
    ])


# --- scenario 5: HTTP and HTTPS -----------------------------------------------------------------

def test_s5_web_all_vpc(enforce):
    g = "sg-web"
    enforce("examples/alibaba/s5-web-all-vpc.yaml", [
        E("eth0", IN, ADMIN, "http", group=g, rule="http-from-all"),
        E("eth0", IN, STRANGER, "https", group=g, rule="https-from-all"),
        E("eth0", IN, STRANGER, "tcp", 8080, group=g, rule="http-alt-from-all"),
        E("eth0", IN, "10.1.0.21", "http", group=g, rule="http-from-all"),
        E("eth0", IN, ADMIN, "tcp", 8081, "dropped"),
        E("eth0", IN, ADMIN, "tcp", 81, "dropped"),
        E("eth0", IN, ADMIN, "ssh", outcome="blocked"),
        E("eth0", IN, "2001:db8:1::7", "http", outcome="blocked"),           # IPv4 only
        E("eth0", OUT, STRANGER, "tcp", 80),
    ])


def test_s5_web_all_classic(enforce):
    g = "sg-web"
    enforce("examples/alibaba/s5-web-all-classic.yaml", [
        E("eth1", IN, ADMIN, "http", group=g, rule="http-from-all"),
        E("eth1", IN, STRANGER, "https", group=g, rule="https-from-all"),
        E("eth1", IN, ADMIN, "tcp", 8080, group=g, rule="http-alt-from-all"),
        E("eth1", IN, ADMIN, "tcp", 8443, "dropped"),
        E("eth1", IN, ADMIN, "tcp", 444, "dropped"),
        E("eth0", IN, "10.1.0.21", "http", outcome="blocked"),               # intranet NIC
        E("eth0", IN, "10.1.0.21", "tcp", 8080, "dropped"),
        E("eth1", OUT, STRANGER, "tcp", 80),
    ])


def test_s5_web_some_vpc(enforce):
    g = "sg-web"
    enforce("examples/alibaba/s5-web-some-vpc.yaml", [
        E("eth0", IN, ADMIN, "http", group=g, rule="http-from-customers"),
        E("eth0", IN, ADMIN, "https", group=g, rule="https-from-customers"),
        E("eth0", IN, "198.51.100.70", "https", group=g, rule="https-from-customers"),
        E("eth0", IN, "198.51.100.79", "tcp", 8080, group=g, rule="http-alt-from-customers"),
        E("eth0", IN, "198.51.100.80", "tcp", 8080, "dropped"),              # just past the /28
        E("eth0", IN, "198.51.100.8", "http", outcome="blocked"),
        E("eth0", IN, STRANGER, "https", outcome="blocked"),
        E("eth0", IN, ADMIN, "tcp", 8081, "dropped"),
        E("eth0", OUT, STRANGER, "tcp", 443),
    ])


def test_s5_web_some_classic(enforce):
    g = "sg-web"
    enforce("examples/alibaba/s5-web-some-classic.yaml", [
        E("eth1", IN, ADMIN, "http", group=g, rule="http-from-customers"),
        E("eth1", IN, "198.51.100.70", "https", group=g, rule="https-from-customers"),
        E("eth1", IN, ADMIN, "tcp", 8080, group=g, rule="http-alt-from-customers"),
        E("eth1", IN, "198.51.100.80", "http", outcome="blocked"),
        E("eth1", IN, STRANGER, "tcp", 443, "dropped"),
        E("eth1", IN, ADMIN, "tcp", 8079, "dropped"),
        E("eth0", IN, ADMIN, "tcp", 80, "dropped"),                          # intranet NIC
        E("eth0", IN, "10.1.0.21", "https", outcome="blocked"),
    ])


# --- scenario 6: no access to a specified external IP address ----------------------------------

def test_s6_deny_outbound_ip_vpc(enforce):
    g = "sg-deny"
    deny = dict(outcome="dropped", group=g, rule="deny-to-blocked-ip")
    enforce("examples/alibaba/s6-deny-outbound-ip-vpc.yaml", [
        E("eth0", OUT, ADMIN, "tcp", 443, **deny),
        E("eth0", OUT, ADMIN, "udp", 53, **deny),
        E("eth0", OUT, ADMIN, "icmp", **deny),
        E("eth0", OUT, "198.51.100.8", "tcp", 443),                          # the next address
        E("eth0", OUT, STRANGER, "icmp"),
        E("eth0", OUT, "10.1.0.21", "tcp", 22),
        E("eth0", IN, ADMIN, "ssh", group=g, rule="ssh-from-anywhere"),      # replies: state
        E("eth0", IN, ADMIN, "tcp", 80, "dropped"),
    ])


def test_s6_deny_outbound_ip_classic(enforce):
    g = "sg-deny"
    deny = dict(outcome="dropped", group=g, rule="deny-to-blocked-ip")
    enforce("examples/alibaba/s6-deny-outbound-ip-classic.yaml", [
        E("eth1", OUT, ADMIN, "tcp", 443, **deny),
        E("eth1", OUT, ADMIN, "icmp", **deny),
        E("eth1", OUT, ADMIN, "udp", 123, **deny),
        E("eth1", OUT, STRANGER, "tcp", 443),
        E("eth0", OUT, ADMIN, "tcp", 443),                                   # intranet NIC
        E("eth0", OUT, "10.1.0.21", "icmp"),
        E("eth1", IN, ADMIN, "tcp", 22, "dropped"),
    ])


# --- several groups on one NIC, priority ordering (contrast to Tencent's sequential) -----------

def test_multi_group_priority(enforce):
    web, lab = "sg-open-web", "sg-block-lab"
    probes = []
    for nic in ("eth0", "eth1"):                 # opposite binding order, same answers
        probes += [
            E(nic, IN, ADMIN, "http", group=web, rule="http-all"),
            E(nic, IN, STRANGER, "http", outcome="blocked", group=lab, rule="drop-lab-net"),
            E(nic, IN, STRANGER, "ssh", group=web, rule="ssh-lab-admin"),
            E(nic, IN, "203.0.113.10", "tcp", 22, "dropped", group=lab, rule="drop-lab-net"),
            E(nic, IN, ADMIN, "tcp", 22, "dropped"),
        ]
    probes.append(E("eth0", OUT, STRANGER, "tcp", 80))
    enforce("examples/alibaba/multi-group-priority.yaml", probes)
