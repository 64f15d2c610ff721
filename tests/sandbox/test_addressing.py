"""The sandbox address plan (pure, no root needed)."""

from __future__ import annotations

import ipaddress

import pytest

from sgagent.sandbox import SandboxError
from sgagent.sandbox.addressing import place_peer, plan_nics


def test_plan_intranet_and_internet() -> None:
    eth0, eth1 = plan_nics([("eth0", "intranet"), ("eth1", "internet")])
    assert str(eth0.host4) == "10.1.0.10/16" and str(eth0.gw4) == "10.1.0.1"
    assert str(eth0.host6) == "fd00:1::10/64" and str(eth0.gw6) == "fd00:1::1"
    assert str(eth1.host4) == "192.0.2.10/24" and str(eth1.gw4) == "192.0.2.1"
    assert str(eth1.host6) == "2001:db8:ffff::10/64" and str(eth1.gw6) == "2001:db8:ffff::1"
    assert eth0.host(6) == eth0.host6 and eth1.gateway(4) == eth1.gw4


def test_plan_uses_position_for_vpc_and_extra_internet_ranges() -> None:
    plans = plan_nics([("a", "internet"), ("b", "vpc"), ("c", "internet"), ("d", "intranet")])
    assert [str(p.host4) for p in plans] == [
        "192.0.2.10/24", "10.2.0.10/16", "198.51.100.10/24", "10.4.0.10/16"]
    assert str(plans[2].host6) == "2001:db8:fffe::10/64"


@pytest.mark.parametrize("nics", [
    [],
    [("eth0", "intranet"), ("eth0", "vpc")],
    [("eth0", "dmz")],
    [("host", "vpc")],
    [("this-name-is-too-long", "vpc")],
    [("eth/0", "vpc")],
    [("eth0",)],
])
def test_plan_rejects_bad_specs(nics) -> None:
    with pytest.raises(SandboxError):
        plan_nics(nics)


def test_place_peer() -> None:
    plans = plan_nics([("eth0", "intranet"), ("eth1", "internet")])
    eth0, eth1 = plans
    onlink = place_peer(plans, eth0, "10.1.2.3")
    assert onlink.onlink and onlink.prefixlen == 16 and not onlink.is_gateway
    far = place_peer(plans, eth1, "2001:db8:1::7")
    assert not far.onlink and far.prefixlen == 128 and far.family == 6
    assert place_peer(plans, eth0, "10.1.0.1").is_gateway
    # a peer from another NIC's subnet is fine (it goes on the loopback)
    assert place_peer(plans, eth0, "192.0.2.77").address == ipaddress.ip_address("192.0.2.77")
    for bad in ("10.1.0.10", "192.0.2.10", "192.0.2.1", "127.0.0.1", "fe80::1", "224.0.0.1",
                "10.1.255.255", "nonsense", "10.0.0.0/8"):
        with pytest.raises(SandboxError):
            place_peer(plans, eth0, bad)
