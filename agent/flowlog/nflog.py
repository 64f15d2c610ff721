"""The kernel's copies of logged packets, read over netlink (NFLOG, ``nfnetlink_log``).

A logged decision's rule sends the packet's first bytes to NFLOG group
:data:`sgagent.ir.NFLOG_GROUP` with its tag as the prefix (:mod:`sgagent.flowlog.prefix`).
:class:`NflogSocket` binds that group in a network namespace and yields one
:class:`Packet` per copy: the prefix, the interfaces, the kernel's timestamp if it has one,
and the addresses, protocol, ports or ICMP type read from the headers.  One socket, no
library: the messages are small and few (the rules' rate limits bound them).

If the reader falls behind, the kernel drops copies and the socket reports ``ENOBUFS``:
:meth:`NflogSocket.packets` counts that in ``overruns`` (a record lost is counted, never
silently gone; the records themselves cannot be recovered).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
import time
from dataclasses import dataclass
from typing import Iterator

from .. import netns
from ..nft.netlink import NLMSG, attributes, messages, nlattr

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
NFULA_CFG_CMD = 1
NFULA_CFG_MODE = 2
NFULA_CFG_NLBUFSIZ = 3
NFULA_CFG_TIMEOUT = 4
NFULA_CFG_QTHRESH = 5
NFULNL_CFG_CMD_BIND = 1
NFULNL_CFG_CMD_UNBIND = 2
NFULNL_COPY_PACKET = 2
NFULA_PACKET_HDR = 1
NFULA_TIMESTAMP = 3
NFULA_IFINDEX_INDEV = 4
NFULA_IFINDEX_OUTDEV = 5
NFULA_PAYLOAD = 9
NFULA_PREFIX = 10
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 2
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5
COPY_RANGE = 128          # bytes of each packet (the rules ask for the same: snaplen)
RECV_BUFFER = 1 << 22     # 4 MiB: a burst of every rule's limit at once
_CONFIG = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG
_PACKET = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET
PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 47: "gre", 58: "icmpv6", 132: "sctp"}
_IPV6_EXTENSIONS = {0, 43, 60}  # hop-by-hop, routing, destination options (fragment: 44)


class NflogError(OSError):
    """The kernel refused to bind the group (another program holds it, or no permission)."""


@dataclass(frozen=True)
class Packet:
    """One logged packet as the kernel reported it."""
    time: float            # seconds since the epoch (the kernel's stamp, else when read)
    prefix: str
    indev: int             # interface indexes (0: none)
    outdev: int
    family: int            # 4 | 6 | 0 (unreadable)
    src: str
    dst: str
    protocol: str          # tcp | udp | icmp | icmpv6 | gre | the number
    sport: int | None
    dport: int | None
    icmp_type: int | None
    icmp_code: int | None


def headers(payload: bytes) -> tuple[int, str, str, str, int | None, int | None, int | None,
                                     int | None]:
    """(family, src, dst, protocol, sport, dport, icmp type, icmp code) of an IP packet's
    first bytes; what cannot be read is left empty."""
    if not payload:
        return 0, "", "", "", None, None, None, None
    version = payload[0] >> 4
    if version == 4 and len(payload) >= 20:
        ihl = (payload[0] & 15) * 4
        proto = payload[9]
        src = socket.inet_ntop(socket.AF_INET, payload[12:16])
        dst = socket.inet_ntop(socket.AF_INET, payload[16:20])
        frag_offset = struct.unpack_from(">H", payload, 6)[0] & 0x1FFF
        l4 = ihl if frag_offset == 0 else len(payload)
        family = 4
    elif version == 6 and len(payload) >= 40:
        proto = payload[6]
        src = str(ipaddress.IPv6Address(payload[8:24]))
        dst = str(ipaddress.IPv6Address(payload[24:40]))
        l4 = 40
        while proto in _IPV6_EXTENSIONS and l4 + 2 <= len(payload):
            proto, l4 = payload[l4], l4 + (payload[l4 + 1] + 1) * 8
        family = 6
    else:
        return 0, "", "", "", None, None, None, None
    name = PROTOCOLS.get(proto, str(proto))
    sport = dport = itype = icode = None
    if proto in (6, 17, 132) and l4 + 4 <= len(payload):
        sport, dport = struct.unpack_from(">HH", payload, l4)
    elif proto in (1, 58) and l4 + 2 <= len(payload):
        itype, icode = payload[l4], payload[l4 + 1]
    return family, src, dst, name, sport, dport, itype, icode


def parse(buf, start: int, end: int, now: float) -> Packet:
    """A ``NFULNL_MSG_PACKET`` message's attributes (``buf[start:end]``)."""
    prefix, payload, stamp, indev, outdev = "", b"", None, 0, 0
    for atype, off, n in attributes(buf, start, end):
        if atype == NFULA_PREFIX:
            prefix = bytes(buf[off:off + n]).split(b"\0", 1)[0].decode("utf-8", "replace")
        elif atype == NFULA_PAYLOAD:
            payload = bytes(buf[off:off + n])
        elif atype == NFULA_TIMESTAMP and n >= 16:
            sec, usec = struct.unpack_from(">QQ", buf, off)
            stamp = sec + usec / 1e6
        elif atype == NFULA_IFINDEX_INDEV and n >= 4:
            indev = struct.unpack_from(">I", buf, off)[0]
        elif atype == NFULA_IFINDEX_OUTDEV and n >= 4:
            outdev = struct.unpack_from(">I", buf, off)[0]
    return Packet(stamp if stamp else now, prefix, indev, outdev, *headers(payload))


class NflogSocket:
    """The NFLOG ``group`` of a network namespace (``None``: this process's), bound on
    construction (:class:`NflogError` if the kernel refuses), unbound on :meth:`close`."""

    def __init__(self, group: int, netns_name: str | None = None,
                 timeout: float | None = 1.0) -> None:
        self.group = group
        self.overruns = 0
        self._seq = 0
        self._buf = bytearray(RECV_BUFFER)
        if netns_name is None:
            self.sock = self._open()
        else:
            with netns.NetnsExecutor(netns_name, thread_name="sgagent-nflog") as ex:
                self.sock = ex.call(self._open)
        try:
            self.sock.settimeout(timeout)
            self._config(nlattr(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_BIND])))
            self._config(nlattr(NFULA_CFG_MODE, struct.pack(">IBB", COPY_RANGE,
                                                            NFULNL_COPY_PACKET, 0)))
            # one packet per message, sent at once: a record is written when it happens
            self._config(nlattr(NFULA_CFG_QTHRESH, struct.pack(">I", 1)))
        except BaseException:
            self.sock.close()
            raise

    @staticmethod
    def _open() -> socket.socket:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
            try:  # beyond rmem_max, as root
                s.setsockopt(socket.SOL_SOCKET, 33, RECV_BUFFER)  # SO_RCVBUFFORCE
            except OSError:
                pass
            s.bind((0, 0))
        except BaseException:
            s.close()
            raise
        return s

    def _config(self, attrs: bytes) -> None:
        self._seq += 1
        body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(self.group)) + attrs
        msg = NLMSG.pack(NLMSG.size + len(body), _CONFIG, NLM_F_REQUEST | NLM_F_ACK,
                         self._seq, 0) + body
        self.sock.send(msg)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            n = self.sock.recv_into(self._buf)
            for off, _, mtype, seq in messages(self._buf, n):
                if mtype == NLMSG_ERROR and seq == self._seq:
                    code = struct.unpack_from("=i", self._buf, off + 16)[0]
                    if code:
                        raise NflogError(-code, f"NFLOG group {self.group}: "
                                                f"{errno.errorcode.get(-code, code)}")
                    return
        raise NflogError(errno.ETIMEDOUT, f"NFLOG group {self.group}: no answer")

    def fileno(self) -> int:
        return self.sock.fileno()

    def packets(self) -> Iterator[Packet]:
        """The packets of one receive (none after a timeout); ``ENOBUFS`` counts an overrun."""
        try:
            n = self.sock.recv_into(self._buf)
        except socket.timeout:
            return
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                self.overruns += 1
                return
            raise
        now = time.time()
        for off, mlen, mtype, _ in messages(self._buf, n):
            if mtype == _PACKET:
                yield parse(self._buf, off + NLMSG.size + 4, off + mlen, now)

    def close(self) -> None:
        try:
            self._config(nlattr(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_UNBIND])))
        except OSError:
            pass
        self.sock.close()

    def __enter__(self) -> "NflogSocket":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
