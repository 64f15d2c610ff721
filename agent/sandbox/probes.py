"""Probes: what to test (:class:`Probe`), what came out (:class:`Outcome`) and
the socket-level clients that find out.

The client functions are coroutines for the sandbox's probe loop.  They get
a ``make_socket`` callable that creates the socket in the client's namespace
(the socket then works from any thread) and use only non-blocking I/O, so
hundreds of probes can wait for their timeouts concurrently.

Outcome rules:

* TCP: handshake completes -> OPEN; RST (ECONNREFUSED) or an ICMP error
  (EHOSTUNREACH, ENETUNREACH, EACCES, ...) -> REJECTED; silence -> DROPPED.
* UDP: our random payload echoed back -> OPEN; ICMP error -> REJECTED;
  silence -> DROPPED.
* ICMP / ICMPv6 echo (unprivileged "ping" datagram sockets): echo reply ->
  OPEN; ICMP error -> REJECTED; silence -> DROPPED.

A local firewall dropping our own outgoing packet makes ``send`` fail with
EPERM; that is not final: a ``reject`` rule also queues an ICMP error for us,
so the client keeps waiting and reports REJECTED or DROPPED accordingly.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import os
import socket
import struct
from dataclasses import dataclass
from typing import Callable

from .addressing import parse_addr
from .errors import SandboxError

__all__ = [
    "Probe",
    "Transit",
    "Outcome",
    "DIRECTIONS",
    "PROTOCOLS",
    "ECHO_REQUEST",
    "validate_probe",
    "validate_transit",
    "probe_tcp",
    "probe_udp",
    "probe_icmp",
    "classify_errno",
]

DIRECTIONS = ("inbound", "outbound")
PROTOCOLS = ("tcp", "udp", "icmp", "icmpv6")
ECHO_REQUEST = {"icmp": 8, "icmpv6": 128}
_ECHO_REPLY = {"icmp": 0, "icmpv6": 129}


@dataclass(frozen=True)
class Probe:
    nic: str  # host ifname
    direction: str  # "inbound" (peer -> host) | "outbound" (host -> peer)
    peer: str  # peer address (v4 or v6)
    protocol: str  # "tcp" | "udp" | "icmp" | "icmpv6"
    port: int | None = None  # tcp/udp destination port
    icmp_type: int | None = None  # only echo-request supported (8 / 128); None = echo-request
    workload: str | None = None  # host-side end is this workload (Sandbox.add_workload), not the host


@dataclass(frozen=True)
class Transit:
    """A flow the host forwards between two of its NICs' peers (see
    :meth:`Sandbox.route_between_nics`): from the peer namespace of ``src_nic`` (its own
    address, the NIC's gateway) to the one of ``dst_nic``."""

    src_nic: str  # host ifname the flow enters by
    dst_nic: str  # host ifname the flow leaves by
    protocol: str  # "tcp" | "udp" | "icmp" | "icmpv6" (echo request)
    port: int | None = None  # tcp/udp destination port
    family: int = 4


class Outcome(enum.Enum):
    OPEN = "open"  # TCP handshake completed / UDP echo came back / echo reply received
    REJECTED = "rejected"  # fast refusal: TCP RST, or an ICMP(v6) error
    DROPPED = "dropped"  # nothing came back before the timeout

    def __str__(self) -> str:
        return self.value


# errno values that mean "something on the path refused": a RST or an ICMP error
_REJECT_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,  # TCP RST / ICMP port unreachable
        errno.EHOSTUNREACH,  # ICMP host unreachable / admin prohibited (v4)
        errno.ENETUNREACH,  # ICMP net unreachable (v4 and v6 no-route)
        errno.EACCES,  # ICMPv6 administratively prohibited
        errno.EHOSTDOWN,
        errno.ENONET,
        errno.ENOPROTOOPT,  # ICMP protocol unreachable
        errno.EPROTO,
        errno.ECONNRESET,
        errno.EOPNOTSUPP,  # ICMP source route failed
    }
)


def classify_errno(err: int) -> Outcome:
    """OPEN for 0, REJECTED for a refusal, DROPPED for a timeout errno."""
    if err == 0:
        return Outcome.OPEN
    if err in _REJECT_ERRNOS:
        return Outcome.REJECTED
    if err == errno.ETIMEDOUT:
        return Outcome.DROPPED
    raise SandboxError(f"unexpected socket error {errno.errorcode.get(err, err)}: {os.strerror(err)}")


def validate_probe(p: Probe) -> int:
    """Check a probe's fields; return the address family (4 or 6)."""
    if not isinstance(p, Probe):
        raise TypeError(f"expected a Probe, got {type(p).__name__}")
    if p.direction not in DIRECTIONS:
        raise ValueError(f"{p}: direction must be one of {DIRECTIONS}")
    if p.protocol not in PROTOCOLS:
        raise ValueError(f"{p}: protocol must be one of {PROTOCOLS}")
    family = parse_addr(p.peer).version
    if p.protocol in ("tcp", "udp"):
        if not isinstance(p.port, int) or not 0 < p.port < 65536:
            raise ValueError(f"{p}: {p.protocol} probes need a port in 1..65535")
        if p.icmp_type is not None:
            raise ValueError(f"{p}: icmp_type is only for icmp/icmpv6 probes")
    else:
        if p.port is not None:
            raise ValueError(f"{p}: {p.protocol} probes take no port")
        want = 4 if p.protocol == "icmp" else 6
        if family != want:
            raise ValueError(f"{p}: {p.protocol} needs an IPv{want} peer")
        if p.icmp_type not in (None, ECHO_REQUEST[p.protocol]):
            raise ValueError(
                f"{p}: only echo-request (type {ECHO_REQUEST[p.protocol]}) is supported"
            )
    return family


def validate_transit(t: Transit) -> None:
    """Check a transit's fields (the NICs are checked by the sandbox)."""
    if not isinstance(t, Transit):
        raise TypeError(f"expected a Transit, got {type(t).__name__}")
    if t.src_nic == t.dst_nic:
        raise ValueError(f"{t}: a transit enters by one NIC and leaves by another")
    if t.family not in (4, 6):
        raise ValueError(f"{t}: family must be 4 or 6")
    if t.protocol not in PROTOCOLS:
        raise ValueError(f"{t}: protocol must be one of {PROTOCOLS}")
    if t.protocol in ("tcp", "udp"):
        if not isinstance(t.port, int) or not 0 < t.port < 65536:
            raise ValueError(f"{t}: {t.protocol} transits need a port in 1..65535")
    else:
        if t.port is not None:
            raise ValueError(f"{t}: {t.protocol} transits take no port")
        if t.family != (4 if t.protocol == "icmp" else 6):
            raise ValueError(f"{t}: {t.protocol} does not go with IPv{t.family}")


MakeSocket = Callable[[int, int, int], socket.socket]


def _af(family: int) -> int:
    return socket.AF_INET if family == 4 else socket.AF_INET6


async def _wait_writable(sock: socket.socket, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    fd = sock.fileno()
    loop.add_writer(fd, lambda: fut.done() or fut.set_result(None))
    try:
        await asyncio.wait_for(fut, timeout)
        return True
    except asyncio.TimeoutError:
        return False
    finally:
        loop.remove_writer(fd)


async def probe_tcp(make_socket: MakeSocket, family: int, target: str, port: int, timeout: float) -> Outcome:
    sock = make_socket(_af(family), socket.SOCK_STREAM, 0)
    try:
        err = sock.connect_ex((target, port))
        if err == errno.EINPROGRESS:
            if not await _wait_writable(sock, timeout):
                return Outcome.DROPPED
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        return classify_errno(err)
    finally:
        sock.close()


async def _exchange(
    sock: socket.socket, payload: bytes, accept: Callable[[bytes], bool], timeout: float
) -> Outcome:
    """Send ``payload`` on a connected socket; wait for an accepted answer."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        sock.send(payload)
    except OSError as exc:
        if exc.errno != errno.EPERM:  # EPERM: our own firewall; a reject may follow
            return classify_errno(exc.errno or 0)
    while True:
        left = deadline - loop.time()
        if left <= 0:
            return Outcome.DROPPED
        try:
            data = await asyncio.wait_for(loop.sock_recv(sock, 65535), left)
        except asyncio.TimeoutError:
            return Outcome.DROPPED
        except OSError as exc:
            return classify_errno(exc.errno or 0)
        if accept(data):
            return Outcome.OPEN


async def probe_udp(make_socket: MakeSocket, family: int, target: str, port: int, timeout: float) -> Outcome:
    sock = make_socket(_af(family), socket.SOCK_DGRAM, 0)
    try:
        try:
            sock.connect((target, port))
        except OSError as exc:
            return classify_errno(exc.errno or 0)
        token = os.urandom(16)
        return await _exchange(sock, token, lambda data: data == token, timeout)
    finally:
        sock.close()


async def probe_icmp(make_socket: MakeSocket, family: int, target: str, timeout: float) -> Outcome:
    proto = "icmp" if family == 4 else "icmpv6"
    ipproto = socket.IPPROTO_ICMP if family == 4 else socket.IPPROTO_ICMPV6
    try:
        sock = make_socket(_af(family), socket.SOCK_DGRAM, ipproto)
    except PermissionError as exc:
        raise SandboxError(
            f"cannot open an ICMP ping socket ({exc}); net.ipv4.ping_group_range "
            "must include the caller's group in the probing namespace"
        ) from exc
    try:
        try:
            sock.connect((target, 0))
        except OSError as exc:
            return classify_errno(exc.errno or 0)
        token = os.urandom(16)
        # the kernel fills in identifier and checksum for ping sockets
        packet = struct.pack("!BBHHH", ECHO_REQUEST[proto], 0, 0, 0, 1) + token
        reply_type = _ECHO_REPLY[proto]
        return await _exchange(
            sock, packet, lambda d: len(d) >= 8 and d[0] == reply_type and d[8:] == token, timeout
        )
    finally:
        sock.close()
