"""The live addresses of a host's NICs, read from the kernel (in the agent's network namespace)
and followed as they change.

:class:`AddressWatch` holds a netlink socket subscribed to link and address notifications; it
does not decode them: any notification means "read again" (:func:`read_addresses`), which is
what an address change costs.  Only global-scope addresses count: link-local IPv6 addresses
(``fe80::/10``) and loopback are no group's members."""

from __future__ import annotations

import errno
import socket

from ..netns import NetnsExecutor

RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
RT_SCOPE_UNIVERSE = 0


def read_addresses(nics: list[str]) -> dict[str, list[str]]:
    """``{NIC: [address, ...]}`` of the global-scope addresses of the NICs named (in the
    calling thread's network namespace); a NIC that does not exist has none."""
    from pyroute2 import IPRoute
    out: dict[str, list[str]] = {n: [] for n in nics}
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for a in ipr.get_addr():
            name = names.get(a["index"])
            if name in out and a["scope"] == RT_SCOPE_UNIVERSE:
                addr = a.get_attr("IFA_ADDRESS")
                if addr:
                    out[name].append(addr)
    return {n: sorted(set(v)) for n, v in out.items()}


def _subscribe() -> socket.socket:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK,
                      socket.NETLINK_ROUTE)
    s.bind((0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
    return s


class AddressWatch:
    """Addresses of NICs in the network namespace ``netns`` (``None``: the process's own)."""

    def __init__(self, netns: str | None) -> None:
        self._exec = NetnsExecutor(netns, thread_name="addresses")
        self.sock: socket.socket = self._exec.call(_subscribe)

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self) -> bool:
        """Read every pending notification; True if there was any (or the socket overran,
        which means some were lost: read again all the same)."""
        seen = False
        while True:
            try:
                if not self.sock.recv(1 << 16):
                    return seen
                seen = True
            except BlockingIOError:
                return seen
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise  # the socket is broken: the registration's supervision restarts it
                seen = True  # notifications were dropped

    def read(self, nics: list[str]) -> dict[str, list[str]]:
        return self._exec.call(read_addresses, nics)

    def close(self) -> None:
        try:
            self.sock.close()
        finally:
            self._exec.close()
