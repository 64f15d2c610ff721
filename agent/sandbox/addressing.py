"""The sandbox address plan: which addresses a NIC, its gateway and a peer get.

Pure functions, no side effects.

* role ``vpc`` / ``intranet``, NIC number ``i`` (0-based position in the NIC
  list): host ``10.(i+1).0.10/16``, gateway ``10.(i+1).0.1``; IPv6 host
  ``fd00:(i+1)::10/64``, gateway ``fd00:(i+1)::1``.
* role ``internet``: the first internet NIC gets host ``192.0.2.10/24``,
  gateway ``192.0.2.1``, IPv6 ``2001:db8:ffff::10/64`` gateway
  ``2001:db8:ffff::1``.  Further internet NICs (rare) use 198.51.100.0/24 /
  ``2001:db8:fffe::/64`` and 203.0.113.0/24 / ``2001:db8:fffd::/64``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Iterable, Union

from .errors import SandboxError

__all__ = ["ROLES", "NicPlan", "PeerPlacement", "plan_nics", "parse_addr", "place_peer"]

ROLES = ("vpc", "intranet", "internet")
IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPInterface = Union[ipaddress.IPv4Interface, ipaddress.IPv6Interface]

_INTERNET_V4 = ("192.0.2", "198.51.100", "203.0.113")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,15}$")
_RESERVED_IFNAMES = {"lo", "host", "all", "default"}


@dataclass(frozen=True)
class NicPlan:
    """Addresses of one sandbox NIC (host side) and its gateway (peer side)."""

    index: int
    ifname: str
    role: str
    host4: ipaddress.IPv4Interface
    gw4: ipaddress.IPv4Address
    host6: ipaddress.IPv6Interface
    gw6: ipaddress.IPv6Address

    def host(self, family: int) -> IPInterface:
        return self.host4 if _family(family) == 4 else self.host6

    def gateway(self, family: int) -> IPAddress:
        return self.gw4 if _family(family) == 4 else self.gw6


def _family(family: int) -> int:
    if family not in (4, 6):
        raise ValueError(f"family must be 4 or 6, not {family!r}")
    return family


def plan_nics(nics: Iterable[tuple[str, str]]) -> list[NicPlan]:
    """Validate ``(ifname, role)`` specs and assign addresses."""
    plans: list[NicPlan] = []
    seen: set[str] = set()
    internet = 0
    for index, spec in enumerate(nics):
        try:
            ifname, role = spec
        except (TypeError, ValueError):
            raise SandboxError(f"NIC spec must be (ifname, role), got {spec!r}") from None
        if not isinstance(ifname, str) or not _IFNAME_RE.match(ifname) or ifname in _RESERVED_IFNAMES:
            raise SandboxError(
                f"invalid interface name {ifname!r} (1-15 chars of [A-Za-z0-9_.-], "
                f"not one of {sorted(_RESERVED_IFNAMES)})"
            )
        if ifname in seen:
            raise SandboxError(f"duplicate interface name {ifname!r}")
        seen.add(ifname)
        if role not in ROLES:
            raise SandboxError(f"NIC {ifname!r}: role must be one of {ROLES}, not {role!r}")
        if role == "internet":
            if internet >= len(_INTERNET_V4):
                raise SandboxError(f"at most {len(_INTERNET_V4)} internet NICs are supported")
            net4 = _INTERNET_V4[internet]
            net6 = f"2001:db8:{0xffff - internet:x}"
            internet += 1
            host4 = ipaddress.IPv4Interface(f"{net4}.10/24")
            gw4 = ipaddress.IPv4Address(f"{net4}.1")
        else:
            if index + 1 > 255:
                raise SandboxError("too many NICs (at most 255)")
            host4 = ipaddress.IPv4Interface(f"10.{index + 1}.0.10/16")
            gw4 = ipaddress.IPv4Address(f"10.{index + 1}.0.1")
            net6 = f"fd00:{index + 1:x}"
        plans.append(
            NicPlan(
                index=index,
                ifname=ifname,
                role=role,
                host4=host4,
                gw4=gw4,
                host6=ipaddress.IPv6Interface(f"{net6}::10/64"),
                gw6=ipaddress.IPv6Address(f"{net6}::1"),
            )
        )
    if not plans:
        raise SandboxError("a sandbox needs at least one NIC")
    return plans


def parse_addr(addr: str | IPAddress) -> IPAddress:
    """Parse a single IPv4/IPv6 address (no prefix) with a readable error."""
    if isinstance(addr, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return addr
    try:
        return ipaddress.ip_address(str(addr).strip())
    except ValueError:
        raise SandboxError(f"not an IP address: {addr!r}") from None


@dataclass(frozen=True)
class PeerPlacement:
    """Where a peer address lives in its NIC's peer namespace."""

    address: IPAddress
    prefixlen: int  # subnet prefix when on-link, else 32 / 128
    onlink: bool  # True: on the wire interface; False: on the peer's loopback
    is_gateway: bool  # the address is the NIC's gateway (already configured)

    @property
    def family(self) -> int:
        return self.address.version


def place_peer(plans: list[NicPlan], nic: NicPlan, addr: str | IPAddress) -> PeerPlacement:
    """Decide where peer ``addr`` goes for NIC ``nic``; reject unusable ones."""
    ip = parse_addr(addr)
    if ip.is_loopback or ip.is_multicast or ip.is_unspecified or ip.is_link_local:
        raise SandboxError(f"peer {ip} is not usable (loopback/multicast/unspecified/link-local)")
    if ip.version == 4 and ip == ipaddress.IPv4Address("255.255.255.255"):
        raise SandboxError(f"peer {ip} is not usable (broadcast)")
    fam = ip.version
    for other in plans:
        if ip == other.host(fam).ip:
            raise SandboxError(f"peer {ip} is the host's own address on {other.ifname}")
        if other is not nic and ip == other.gateway(fam):
            raise SandboxError(
                f"peer {ip} is the gateway of {other.ifname}; it cannot be a peer on {nic.ifname}"
            )
        if fam == 4 and ip == other.host4.network.broadcast_address:
            raise SandboxError(f"peer {ip} is the broadcast address of {other.ifname}")
    host_if = nic.host(fam)
    onlink = ip in host_if.network
    return PeerPlacement(
        address=ip,
        prefixlen=host_if.network.prefixlen if onlink else ip.max_prefixlen,
        onlink=onlink,
        is_gateway=ip == nic.gateway(fam),
    )
