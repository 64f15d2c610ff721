"""An optional workload namespace behind the host, for forwarded traffic.

``Workload`` adds a namespace (``PREFIX-wN``) connected to the host by an
extra veth whose host end (``ifname``, e.g. ``wl0``) is *not* one of the
managed NICs.  The host gets the first usable address of the workload
subnets and forwarding is switched on in the host namespace; every peer
namespace gets a route to the workload subnets via the host's address on
its wire.  Traffic peer <-> workload therefore crosses the host's forward
hook (and is routed back to the peer by the per-peer host route).
"""

from __future__ import annotations

import ipaddress

from .addressing import IPAddress, IPInterface, parse_addr
from .errors import SandboxError
from .topology import (
    HOST_LINK_LOCAL,
    PEER_LINK_LOCAL,
    WIRE_IFNAME,
    Topology,
    veth_add_line,
    veth_v6_lines,
    wait_links_ready,
    write_sysctls,
)

__all__ = ["Workload"]


def _gateway_for(iface: IPInterface) -> IPAddress:
    for host in iface.network.hosts():
        if host != iface.ip:
            return host
    raise SandboxError(f"workload subnet {iface.network} has no room for a gateway")


class Workload:
    """A namespace behind host NIC ``ifname`` (see module docs)."""

    def __init__(self, topology: Topology, ifname: str, addr4: str, addr6: str, index: int) -> None:
        self._topology = topology
        if ifname in topology.by_ifname or ifname in topology.extra_sides or ifname in ("host", "lo"):
            raise SandboxError(f"interface name {ifname!r} is already used in the sandbox")
        self.ifname = ifname
        self.index = index
        self.ns = f"{topology.prefix}-w{index}"
        try:
            self.iface4 = ipaddress.IPv4Interface(addr4)
            self.iface6 = ipaddress.IPv6Interface(addr6)
        except ValueError as exc:
            raise SandboxError(f"bad workload address: {exc}") from None
        if self.iface4.network.prefixlen > 30 or self.iface6.network.prefixlen > 126:
            raise SandboxError("workload subnets must have room for host and workload (<= /30, /126)")
        self.gw4 = _gateway_for(self.iface4)
        self.gw6 = _gateway_for(self.iface6)
        for plan in topology.plans:
            for fam, net in ((4, self.iface4.network), (6, self.iface6.network)):
                if plan.host(fam).network.overlaps(net):
                    raise SandboxError(f"workload subnet {net} overlaps {plan.ifname}'s subnet")

    def address(self, family: int = 4) -> str:
        """The workload's own address (no prefix)."""
        return str(self.iface4.ip if family == 4 else self.iface6.ip)

    def gateway(self, family: int = 4) -> str:
        """The host's address towards the workload."""
        return str(self.gw4 if family == 4 else self.gw6)

    def contains(self, addr: str | IPAddress) -> bool:
        ip = parse_addr(addr)
        return ip == (self.iface4.ip if ip.version == 4 else self.iface6.ip)

    def build(self) -> None:
        topo = self._topology
        topo.create_namespace(self.ns)
        topo.extra_sides[self.ifname] = self.ns
        p4, p6 = self.iface4.network.prefixlen, self.iface6.network.prefixlen
        topo.ip_batch(
            topo.host_ns,
            [
                veth_add_line(self.ifname, 400 + self.index, self.ns, 800 + self.index),
                *veth_v6_lines(self.ifname, PEER_LINK_LOCAL),
                f"addr add {self.gw4}/{p4} dev {self.ifname}",
                f"addr add {self.gw6}/{p6} dev {self.ifname} nodad",
                f"link set {self.ifname} up",
            ],
        )
        topo.executor(topo.host_ns).call(
            write_sysctls,
            [
                ("net/ipv4/ip_forward", "1", True),
                ("net/ipv4/conf/all/rp_filter", "0", True),
                (f"net/ipv4/conf/{self.ifname}/rp_filter", "0", True),
                ("net/ipv6/conf/all/forwarding", "1", True),
            ],
        )
        topo.ip_batch(
            self.ns,
            [
                "link set lo up",
                *veth_v6_lines(WIRE_IFNAME, HOST_LINK_LOCAL),
                f"addr add {self.iface4} dev {WIRE_IFNAME}",
                f"addr add {self.iface6} dev {WIRE_IFNAME} nodad",
                f"link set {WIRE_IFNAME} up",
                f"route add 0.0.0.0/0 via {self.gw4} dev {WIRE_IFNAME}",
                f"route add ::/0 via {self.gw6} dev {WIRE_IFNAME}",
            ],
        )
        wait_links_ready(topo.executor(topo.host_ns), [self.ifname])
        wait_links_ready(topo.executor(self.ns), [WIRE_IFNAME])
        for plan in topo.plans:
            topo.ip_batch(
                topo.peer_ns_names[plan.ifname],
                [
                    f"route add {self.iface4.network} via {plan.host4.ip} dev {WIRE_IFNAME}",
                    f"route add {self.iface6.network} via {plan.host6.ip} dev {WIRE_IFNAME}",
                ],
            )
