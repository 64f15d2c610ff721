"""Linux socket constants Python's ``socket`` module lacks, and socket setup.

All functions that create sockets must run inside the namespace the socket
should belong to (i.e. via :meth:`NetnsExecutor.call`); a socket keeps the
network namespace it was created in for its whole life.
"""

from __future__ import annotations

import errno
import socket

__all__ = [
    "IP_PKTINFO",
    "IP_RECVERR",
    "IPV6_RECVERR",
    "dual_stack_listener",
    "client_socket",
    "set_recverr",
]

# <linux/in.h> / <linux/in6.h>
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)


def dual_stack_listener(kind: int, port: int) -> socket.socket | None:
    """Bind ``[::]:port`` with IPV6_V6ONLY=0 (TCP listens, UDP gets PKTINFO).

    Returns None if the port is already bound in this namespace (someone else
    serves it, e.g. sshd on 22).  The returned socket is non-blocking.
    """
    sock = socket.socket(socket.AF_INET6, kind)
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        else:
            # learn each datagram's destination address so the echo can be
            # sent back from exactly that address (v4-mapped and native v6)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        try:
            sock.bind(("::", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                sock.close()
                return None
            raise
        if kind == socket.SOCK_STREAM:
            sock.listen(1024)
        sock.setblocking(False)
        return sock
    except BaseException:
        sock.close()
        raise


def set_recverr(sock: socket.socket, family: int) -> None:
    """Report every ICMP error (not only "hard" ones) on the socket."""
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)


def client_socket(family: int, kind: int, proto: int, source: str | None) -> socket.socket:
    """A non-blocking client socket, optionally bound to ``source``."""
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        # Also for TCP: without IPV6_RECVERR an ICMPv6 error to a SYN is only a
        # "soft" error and connect() fails just at the first SYN retransmit (1s).
        set_recverr(sock, family)
        if source is not None:
            sock.bind((source, 0))
        return sock
    except BaseException:
        sock.close()
        raise
