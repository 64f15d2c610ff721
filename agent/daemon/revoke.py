"""Revocation (SEMANTICS section 4): after a change, cut the live connections that the new rules
would refuse if they started now, and leave the others alone.

For every conntrack entry of the namespace the original direction (the first packet) is
judged by the evaluator, the oracle of section 3:

* destination is one of the host's addresses: an inbound connection, arriving on the NIC the
  host routes the source through; peer = source, port = destination port;
* source is one of the host's addresses: an outbound connection, leaving by the NIC the host
  routes the destination through; peer = destination;
* neither (forwarded traffic, section 6): inbound on the NIC towards the source *and* outbound
  on the NIC towards the destination; refused if either side refuses;
* NICs not named in the document (loopback, ...) are not judged.

Entries whose verdict is ``drop`` or ``reject`` are deleted (pyroute2's conntrack netlink
support, sockets created inside the namespace). Everything runs on one
:class:`~sgagent.netns.NetnsExecutor` thread that lives in the enforced namespace.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import Any, Iterable

from ..evaluator import Packet, evaluate
from ..model import Document
from ..netns import NetnsExecutor

log = logging.getLogger(__name__)

# Importing any part of pyroute2 runs its package __init__, which imports its tc modules; one of
# them reads /proc/net/psched and, when it is missing, logs two warnings ("tc subsystem
# functionality is limited"). Under sgagent.service's ProcSubset=pid /proc/net is hidden, so
# every start logged them. sgagent uses no tc, and that module logs nothing else: keep it quiet.
logging.getLogger("pyroute2.netlink.rtnl.tcmsg.common").setLevel(logging.ERROR)

PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 47: "gre", 58: "icmpv6", 132: "sctp", 136: "udplite"}
MAX_ENTRIES = 1_000_000


@dataclass(frozen=True)
class Flow:
    """The original direction of one conntrack entry."""
    family: int
    proto: int
    src: ipaddress.IPv4Address | ipaddress.IPv6Address
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address
    sport: int | None
    dport: int | None
    icmp_type: int | None
    entry: Any = None  # the pyroute2 entry, to delete it


@dataclass
class RevokeResult:
    examined: int = 0
    revoked: int = 0
    failed: int = 0
    flows: list[str] | None = None


class HostView:
    """The host's own addresses and a route lookup, read inside the namespace."""

    def __init__(self, ipr: Any) -> None:
        self._ipr = ipr
        self.local: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
        self.ifnames: dict[int, str] = {}
        for link in ipr.get_links():
            self.ifnames[link["index"]] = link.get_attr("IFLA_IFNAME")
        for addr in ipr.get_addr():
            a = addr.get_attr("IFA_LOCAL") or addr.get_attr("IFA_ADDRESS")
            if a:
                self.local.add(ipaddress.ip_address(a.split("%")[0]))
        self._routes: dict[Any, str | None] = {}

    def nic_towards(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
        """The interface the host sends packets for ``addr`` through (None: no route)."""
        if addr in self._routes:
            return self._routes[addr]
        name = None
        try:
            family = socket.AF_INET if addr.version == 4 else socket.AF_INET6
            for r in self._ipr.route("get", dst=str(addr), family=family):
                oif = r.get_attr("RTA_OIF")
                if oif is not None:
                    name = self.ifnames.get(oif)
                    break
        except Exception as exc:  # noqa: BLE001 - unreachable: no route
            log.debug("no route to %s: %s", addr, exc)
        self._routes[addr] = name
        return name


def packets_for(flow: Flow, view: HostView, managed: set[str]) -> list[Packet]:
    """The first packet of ``flow`` as each managed NIC it crosses sees it."""
    proto = PROTOCOLS.get(flow.proto, str(flow.proto))
    ports = proto in ("tcp", "udp")
    icmp = proto in ("icmp", "icmpv6")
    out: list[Packet] = []
    if flow.src in view.local and flow.dst in view.local:
        return out  # the host talking to itself
    if flow.dst not in view.local:  # leaves the host (outbound, or forwarded out)
        nic = view.nic_towards(flow.dst)
        if nic in managed:
            out.append(Packet(nic, "outbound", flow.dst, proto,  # type: ignore[arg-type]
                              flow.dport if ports else None,
                              flow.icmp_type if icmp else None,
                              flow.sport if ports else None))
    if flow.src not in view.local:  # came in (inbound, or forwarded in)
        nic = view.nic_towards(flow.src)
        if nic in managed:
            out.append(Packet(nic, "inbound", flow.src, proto,  # type: ignore[arg-type]
                              flow.dport if ports else None,
                              flow.icmp_type if icmp else None,
                              flow.sport if ports else None))
    return out


def refused(doc: Document, flow: Flow, view: HostView, managed: set[str],
            cache: dict[Packet, bool]) -> bool:
    for pkt in packets_for(flow, view, managed):
        bad = cache.get(pkt)
        if bad is None:
            bad = cache[pkt] = evaluate(doc, pkt).verdict != "accept"
        if bad:
            return True
    return False


def _flows() -> Iterable[Flow]:
    from pyroute2.conntrack import Conntrack
    n = 0
    for family, version in ((socket.AF_INET, 4), (socket.AF_INET6, 6)):
        with Conntrack(nfgen_family=family) as ct:
            for e in ct.dump_entries():
                t = e.tuple_orig
                if t.saddr is None or t.daddr is None:
                    continue
                n += 1
                if n > MAX_ENTRIES:
                    return
                yield Flow(version, int(t.proto or 0), ipaddress.ip_address(t.saddr),
                           ipaddress.ip_address(t.daddr), t.sport, t.dport,
                           t.icmp_type, e)


def _revoke_in_namespace(doc: Document, keep_list: bool) -> RevokeResult:
    from pyroute2 import IPRoute
    from pyroute2.conntrack import Conntrack
    managed = {n.name for n in doc.host.nics}
    result = RevokeResult(flows=[] if keep_list else None)
    cache: dict[Packet, bool] = {}
    with IPRoute() as ipr:
        view = HostView(ipr)
        victims = []
        for flow in _flows():
            result.examined += 1
            if refused(doc, flow, view, managed, cache):
                victims.append(flow)
    for family, version in ((socket.AF_INET, 4), (socket.AF_INET6, 6)):
        mine = [f for f in victims if f.family == version]
        if not mine:
            continue
        with Conntrack(nfgen_family=family) as ct:
            for f in mine:
                try:
                    ct.delete(f.entry)
                    result.revoked += 1
                    if result.flows is not None:
                        result.flows.append(describe(f))
                except Exception as exc:  # noqa: BLE001 - gone already (ENOENT), ...
                    if "No such file" not in str(exc):
                        result.failed += 1
                        log.debug("deleting conntrack entry %s: %s", describe(f), exc)
    return result


def describe(f: Flow) -> str:
    proto = PROTOCOLS.get(f.proto, str(f.proto))
    if f.sport is not None:
        return f"{proto} {f.src}:{f.sport} -> {f.dst}:{f.dport}"
    return f"{proto} {f.src} -> {f.dst}"


class Revoker:
    """Revocation in one namespace (``None``: the daemon's own)."""

    def __init__(self, netns_name: str | None) -> None:
        # import pyroute2 now, not in the middle of the first change
        import pyroute2.conntrack  # noqa: F401
        from pyroute2 import IPRoute  # noqa: F401
        self._exec = NetnsExecutor(netns_name, thread_name="revoke")

    def revoke(self, doc: Document, keep_list: bool = True) -> RevokeResult:
        return self._exec.call(_revoke_in_namespace, doc, keep_list)

    def close(self) -> None:
        self._exec.close()
