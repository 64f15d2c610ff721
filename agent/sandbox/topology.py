"""Namespaces, veth wires, sysctls, peer addresses and host routes.

One *host* namespace stands in for the machine; every host NIC is one end of
a veth pair whose other end (called ``wire``) lives in a *peer* namespace of
its own: "everything out on that wire".  Nothing here touches the root
network namespace: links are created directly inside the namespaces
(``ip -n NS link add ... peer ... netns PEER``) and sysctls are written from
threads that entered the namespace.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from dataclasses import dataclass, field

from .. import netns
from .addressing import IPAddress, NicPlan, PeerPlacement, place_peer, plan_nics
from .errors import SandboxError

__all__ = [
    "Topology",
    "WIRE_IFNAME",
    "HOST_SIDE",
    "write_sysctls",
    "veth_add_line",
    "veth_v6_lines",
    "wait_links_ready",
]

log = logging.getLogger(__name__)

WIRE_IFNAME = "wire"  # the peer-side veth end inside every peer namespace
HOST_SIDE = "host"
_IP_TIMEOUT = 10.0

# Written in every sandbox namespace, in order (ip_forward first: writing it
# resets other per-device settings).  Values are strings as in /proc/sys.
_COMMON_SYSCTLS: tuple[tuple[str, str], ...] = (
    ("net/ipv4/ip_forward", "0"),
    ("net/ipv4/conf/all/forwarding", "0"),
    ("net/ipv4/conf/default/forwarding", "0"),
    ("net/ipv4/conf/all/rp_filter", "0"),
    ("net/ipv4/conf/default/rp_filter", "0"),
    ("net/ipv6/conf/all/disable_ipv6", "0"),
    ("net/ipv6/conf/default/disable_ipv6", "0"),
    ("net/ipv6/conf/all/forwarding", "0"),
    ("net/ipv6/conf/default/forwarding", "0"),
    ("net/ipv6/conf/all/accept_dad", "0"),
    ("net/ipv6/conf/default/accept_dad", "0"),
    ("net/ipv6/conf/all/accept_ra", "0"),
    ("net/ipv6/conf/default/accept_ra", "0"),
    # unprivileged ICMP "ping" sockets for the ICMP probes (root is gid 0)
    ("net/ipv4/ping_group_range", "0 2147483647"),
    # ICMP errors (reject, port unreachable) must not be rate limited, or a
    # batch of rejected probes would look dropped.
    ("net/ipv4/icmp_ratelimit", "0"),
    ("net/ipv6/icmp/ratelimit", "0"),
)
# Per-netns only on newer kernels; skipped when absent.
_OPTIONAL_SYSCTLS: tuple[tuple[str, str], ...] = (
    ("net/ipv4/icmp_msgs_per_sec", "1000000"),
    ("net/ipv4/icmp_msgs_burst", "1000000"),
)


HOST_LINK_LOCAL = "fe80::10"
PEER_LINK_LOCAL = "fe80::1"
_READY_TIMEOUT = 3.0


def veth_add_line(ifname: str, index: int, peer_ns: str, peer_index: int) -> str:
    """``ip`` batch line creating a veth pair; the peer end goes to ``peer_ns``.

    The two ends get distinct ifindexes on purpose: the kernel treats a
    device whose ifindex equals its peer's (``iflink``) as not stacked, and
    then processes its carrier-up event lazily (linkwatch, up to 1s later).
    Until then IPv6 is not "ready" on the link: no ff00::/8 route, so
    incoming neighbour solicitations are dropped (Ip6InNoRoutes) and the
    first IPv6 packets towards that peer are lost.
    """
    return (
        f"link add {ifname} index {index} type veth "
        f"peer name {WIRE_IFNAME} index {peer_index} netns {peer_ns}"
    )


def links_ready(ifnames: list[str]) -> bool:
    """Inside a namespace thread: is IPv6 up on every one of ``ifnames``?

    addrconf adds the interface's multicast route ff00::/8 once it has seen
    the carrier; before that, IPv6 multicast (neighbour discovery) is dropped.
    """
    with open("/proc/thread-self/net/ipv6_route") as fh:
        ready = {
            f[9]
            for f in (line.split() for line in fh)
            if len(f) >= 10 and f[0] == "ff" + "0" * 30 and f[1] == "08"
        }
    return all(name in ready for name in ifnames)


def wait_links_ready(executor: netns.NetnsExecutor, ifnames: list[str]) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT
    while not executor.call(links_ready, ifnames):
        if time.monotonic() > deadline:
            raise SandboxError(
                f"IPv6 did not come up on {', '.join(ifnames)} in {executor.name} "
                f"within {_READY_TIMEOUT:.0f}s"
            )
        time.sleep(0.005)


def veth_v6_lines(ifname: str, link_local: str) -> list[str]:
    """``ip`` batch lines giving a veth end a fixed link-local address.

    Deterministic (fe80::10 host side, fe80::1 far side) instead of EUI-64,
    and usable at once (nodad), before addrconf has seen the carrier.
    """
    return [
        f"link set {ifname} addrgenmode none",
        f"addr add {link_local}/64 dev {ifname} nodad",
    ]


def write_sysctls(items: list[tuple[str, str, bool]]) -> None:
    """Write /proc/sys entries; call it only through a namespace executor.

    items: (path below /proc/sys, value, required).  Missing optional entries
    are skipped.  /proc/sys/net is resolved per calling thread, so this
    affects the executor's namespace only.
    """
    # the process (main thread) stays in the namespace we started in
    mine, init = os.stat("/proc/thread-self/ns/net"), os.stat("/proc/self/ns/net")
    if (mine.st_dev, mine.st_ino) == (init.st_dev, init.st_ino):
        raise SandboxError("refusing to write sysctls outside a sandbox namespace")
    for path, value, required in items:
        full = os.path.join("/proc/sys", path)
        if not required and not os.path.exists(full):
            continue
        try:
            with open(full, "w") as fh:
                fh.write(value)
        except OSError as exc:
            raise SandboxError(f"cannot set sysctl {path.replace('/', '.')}={value}: {exc}") from exc


@dataclass
class _PeerState:
    placements: dict[str, PeerPlacement] = field(default_factory=dict)  # nic -> placement
    route_nic: str | None = None  # NIC the host route currently points at


class Topology:
    """The namespaces and wiring of one sandbox (no servers, no probes)."""

    def __init__(self, nics: list[tuple[str, str]], prefix: str) -> None:
        self.plans: list[NicPlan] = plan_nics(nics)
        self.by_ifname: dict[str, NicPlan] = {p.ifname: p for p in self.plans}
        self.prefix = prefix
        self.host_ns = f"{prefix}-h"
        self.peer_ns_names: dict[str, str] = {p.ifname: f"{prefix}-p{p.index}" for p in self.plans}
        self.executors: dict[str, netns.NetnsExecutor] = {}
        self.extra_sides: dict[str, str] = {}  # e.g. workload ifname -> its namespace
        self._created: list[str] = []
        self._peers: dict[IPAddress, _PeerState] = {}
        self._lock = threading.Lock()

    # ----------------------------------------------------------------- names
    @property
    def namespaces(self) -> list[str]:
        """Host and peer namespaces (not the extra ones)."""
        return [self.host_ns, *self.peer_ns_names.values()]

    @property
    def all_namespaces(self) -> list[str]:
        return list(self._created)

    def nic(self, ifname: str) -> NicPlan:
        try:
            return self.by_ifname[ifname]
        except KeyError:
            raise SandboxError(
                f"unknown NIC {ifname!r}; the sandbox has {sorted(self.by_ifname)}"
            ) from None

    def ns_of_side(self, side: str) -> str:
        """``"host"`` -> host namespace, a NIC name -> that NIC's peer namespace."""
        if side == HOST_SIDE:
            return self.host_ns
        if side in self.extra_sides:
            return self.extra_sides[side]
        return self.peer_ns_names[self.nic(side).ifname]

    def executor(self, ns: str) -> netns.NetnsExecutor:
        try:
            return self.executors[ns]
        except KeyError:
            raise SandboxError(f"namespace {ns!r} is not part of this sandbox") from None

    # ------------------------------------------------------------- building
    def build(self) -> None:
        """Create and wire everything.  On failure the caller must teardown()."""
        for ns in self.namespaces:
            if netns.exists(ns):
                raise SandboxError(f"network namespace {ns!r} already exists (prefix clash?)")
        for ns in self.namespaces:
            self.create_namespace(ns)

        host_lines = ["link set lo up"]
        for plan in self.plans:
            peer = self.peer_ns_names[plan.ifname]
            host_lines += [
                veth_add_line(plan.ifname, 100 + plan.index, peer, 600 + plan.index),
                *veth_v6_lines(plan.ifname, HOST_LINK_LOCAL),
                f"addr add {plan.host4} dev {plan.ifname}",
                f"addr add {plan.host6} dev {plan.ifname} nodad",
                f"link set {plan.ifname} up",
            ]
        self.ip_batch(self.host_ns, host_lines)
        self.executors[self.host_ns].call(
            write_sysctls,
            [(f"net/ipv4/conf/{p.ifname}/rp_filter", "0", True) for p in self.plans]
            + [(f"net/ipv6/conf/{p.ifname}/accept_dad", "0", True) for p in self.plans],
        )
        for plan in self.plans:
            self.ip_batch(
                self.peer_ns_names[plan.ifname],
                [
                    "link set lo up",
                    *veth_v6_lines(WIRE_IFNAME, PEER_LINK_LOCAL),
                    f"addr add {plan.gw4}/{plan.host4.network.prefixlen} dev {WIRE_IFNAME}",
                    f"addr add {plan.gw6}/{plan.host6.network.prefixlen} dev {WIRE_IFNAME} nodad",
                    f"link set {WIRE_IFNAME} up",
                ],
            )
        self.wait_ready()

    def create_namespace(self, ns: str) -> netns.NetnsExecutor:
        """Create ``ns`` (torn down with the topology), start its thread, set sysctls."""
        if netns.exists(ns):
            raise SandboxError(f"network namespace {ns!r} already exists (prefix clash?)")
        netns.create(ns)
        self._created.append(ns)
        ex = self.executors[ns] = netns.NetnsExecutor(ns, thread_name=f"sandbox-{ns}")
        ex.call(write_sysctls, [(p, v, True) for p, v in _COMMON_SYSCTLS]
                + [(p, v, False) for p, v in _OPTIONAL_SYSCTLS])
        return ex

    def wait_ready(self) -> None:
        """Block until IPv6 is operational on every veth end of the topology."""
        wait_links_ready(self.executors[self.host_ns], [p.ifname for p in self.plans])
        for ns in self.peer_ns_names.values():
            wait_links_ready(self.executors[ns], [WIRE_IFNAME])

    def ip_batch(self, ns: str, lines: list[str]) -> None:
        """Run ``ip -n NS -batch -`` with ``lines``; SandboxError on failure."""
        if not lines:
            return
        try:
            proc = subprocess.run(
                ["ip", "-n", ns, "-batch", "-"],
                input="\n".join(lines) + "\n",
                capture_output=True,
                text=True,
                timeout=_IP_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            raise SandboxError(f"'ip -n {ns} -batch' timed out") from None
        if proc.returncode != 0:
            raise SandboxError(
                f"ip commands in namespace {ns} failed: {proc.stderr.strip()}\n"
                f"commands were:\n  " + "\n  ".join(lines)
            )

    def route_between_nics(self) -> None:
        """Make the host a router between its NICs' peer namespaces (a hypervisor between its
        VMs): forwarding on in the host, and in every peer namespace a default route via the
        host's address on its wire."""
        self.executors[self.host_ns].call(
            write_sysctls,
            [("net/ipv4/ip_forward", "1", True), ("net/ipv6/conf/all/forwarding", "1", True)],
        )
        for plan in self.plans:
            self.ip_batch(
                self.peer_ns_names[plan.ifname],
                [
                    f"route replace 0.0.0.0/0 via {plan.host4.ip} dev {WIRE_IFNAME}",
                    f"route replace ::/0 via {plan.host6.ip} dev {WIRE_IFNAME}",
                ],
            )

    # ---------------------------------------------------------------- peers
    def placement(self, ifname: str, peer: str | IPAddress) -> PeerPlacement:
        """Validate peer for NIC ``ifname`` (no side effects)."""
        return place_peer(self.plans, self.nic(ifname), peer)

    def ensure_peers(self, pairs: list[tuple[str, IPAddress]]) -> None:
        """Make each ``(ifname, peer)`` usable.

        Adds the peer address to the NIC's peer namespace (on-link on the wire
        with the subnet prefix, or /32 /128 on the loopback).  For peers that
        have no host route yet, installs one via the first NIC asked for.
        Existing routes are left alone (see :meth:`route_peer_via`).
        """
        with self._lock:
            by_ns: dict[str, list[str]] = {}
            new: list[tuple[IPAddress, str, PeerPlacement]] = []
            routes: dict[IPAddress, str] = {}
            for ifname, peer in pairs:
                pl = self.placement(ifname, peer)
                state = self._peers.get(pl.address)
                if state is not None and ifname in state.placements:
                    continue
                if any(a == pl.address and i == ifname for a, i, _ in new):
                    continue
                new.append((pl.address, ifname, pl))
                if not pl.is_gateway:
                    dev = WIRE_IFNAME if pl.onlink else "lo"
                    nodad = " nodad" if pl.family == 6 else ""
                    by_ns.setdefault(self.peer_ns_names[ifname], []).append(
                        f"addr add {pl.address}/{pl.prefixlen} dev {dev}{nodad}"
                    )
                if (state is None or state.route_nic is None) and pl.address not in routes:
                    routes[pl.address] = ifname
            for ns, lines in by_ns.items():
                self.ip_batch(ns, lines)
            for addr, ifname, pl in new:
                self._peers.setdefault(addr, _PeerState()).placements[ifname] = pl
            if routes:
                self.ip_batch(self.host_ns, [self._route_line(a, i) for a, i in routes.items()])
                for addr, ifname in routes.items():
                    self._peers[addr].route_nic = ifname

    def route_nic(self, peer: IPAddress) -> str | None:
        state = self._peers.get(peer)
        return state.route_nic if state else None

    def route_peer_via(self, ifname: str, peer: IPAddress) -> None:
        """Point the host route for ``peer`` at NIC ``ifname`` (peer must be ensured).

        Callers serialize use of one peer address across NICs (see
        :class:`~sgagent.sandbox.peers.PeerRouteLock`).
        """
        with self._lock:
            state = self._peers.get(peer)
            if state is None or ifname not in state.placements:
                raise SandboxError(f"peer {peer} was not set up on {ifname}")
            if state.route_nic == ifname:
                return
            self.ip_batch(self.host_ns, [self._route_line(peer, ifname)])
            state.route_nic = ifname

    def _route_line(self, peer: IPAddress, ifname: str) -> str:
        plan = self.nic(ifname)
        fam = peer.version
        return f"route replace {peer}/{peer.max_prefixlen} via {plan.gateway(fam)} dev {ifname}"

    # ------------------------------------------------------------- teardown
    def teardown(self) -> list[str]:
        """Stop namespace threads, kill processes, delete namespaces.

        Never raises; returns a list of error messages (empty if all went well).
        """
        errors: list[str] = []
        for ex in list(self.executors.values()):
            try:
                ex.close(timeout=2.0)
            except Exception as exc:  # pragma: no cover - defensive
                errors.append(f"closing {ex!r}: {exc}")
        self.executors.clear()
        for ns in reversed(self._created):
            try:
                netns.delete(ns)
            except Exception as exc:
                errors.append(f"deleting namespace {ns}: {exc}")
        self._created = [ns for ns in self._created if netns.exists(ns)]
        return errors
