"""Generic in-process listeners: TCP accept-and-close and UDP echo.

Each listening socket is created by the namespace's executor thread (so it
belongs to that namespace) and bound dual-stack to ``[::]:port``.  All of
them are then served by one event-loop thread: the socket, not the serving
thread, decides the namespace.

The UDP echo answers from the address the datagram was sent to (IP_PKTINFO /
IPV6_PKTINFO), so a peer on a loopback alias replies with the right source.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
import threading

from ..netns import NetnsExecutor
from .loopthread import LoopThread
from .sockets import IP_PKTINFO, dual_stack_listener

__all__ = ["ListenerHub"]

log = logging.getLogger(__name__)

_CMSG_LEN = socket.CMSG_SPACE(64)
_BATCH = 256  # datagrams / connections handled per readiness callback


def _reply_cmsg(ancdata: list[tuple[int, int, bytes]]) -> list[tuple[int, int, bytes]]:
    """IPV6_PKTINFO ancillary data selecting the original destination as source."""
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(data) >= 16:
            dst = data[:16]
            break
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
            # struct in_pktinfo { int ifindex; in_addr spec_dst; in_addr addr; }
            dst = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + data[8:12]).packed
            break
    else:
        return []
    return [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, dst + struct.pack("@I", 0))]


class ListenerHub:
    """Owns the sandbox's generic listeners, keyed by (namespace, proto, port)."""

    def __init__(self, name: str = "sandbox-listeners") -> None:
        self._loop_thread = LoopThread(name)
        self._socks: dict[tuple[str, str, int], socket.socket] = {}
        self._lock = threading.Lock()

    def ensure(self, ns: str, executor: NetnsExecutor, proto: str, port: int) -> bool:
        """Make sure something listens on ``proto``/``port`` in ``ns``.

        Returns True if we started (or already run) our own listener, False if
        the port was already bound by someone else (treated as present).
        """
        if proto not in ("tcp", "udp"):
            raise ValueError(f"proto must be 'tcp' or 'udp', not {proto!r}")
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"invalid port {port!r}")
        key = (ns, proto, port)
        with self._lock:
            if key in self._socks:
                return True
            kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
            sock = executor.call(dual_stack_listener, kind, port)
            if sock is None:
                return False
            self._socks[key] = sock
        handler = self._on_accept if proto == "tcp" else self._on_datagram
        self._loop_thread.call(self._loop_thread.loop.add_reader, sock.fileno(), handler, sock)
        log.debug("listening on %s/%d in %s", proto, port, ns)
        return True

    def owns(self, ns: str, proto: str, port: int) -> bool:
        return (ns, proto, port) in self._socks

    def release(self, ns: str, proto: str, port: int) -> bool:
        """Stop our listener on that port (if any) so a real server can bind it."""
        with self._lock:
            sock = self._socks.pop((ns, proto, port), None)
        if sock is None:
            return False
        self._loop_thread.call(self._stop, sock)
        return True

    def _stop(self, sock: socket.socket) -> None:
        self._loop_thread.loop.remove_reader(sock.fileno())
        sock.close()

    @staticmethod
    def _on_accept(sock: socket.socket) -> None:
        for _ in range(_BATCH):
            try:
                conn, _addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. ECONNABORTED: the client gave up already
                continue
            conn.close()

    @staticmethod
    def _on_datagram(sock: socket.socket) -> None:
        for _ in range(_BATCH):
            try:
                data, anc, _flags, addr = sock.recvmsg(65535, _CMSG_LEN)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            try:
                sock.sendmsg([data], _reply_cmsg(anc), 0, addr)
            except OSError as exc:  # the host firewall may refuse the reply
                log.debug("udp echo to %s failed: %s", addr, exc)

    def close(self) -> None:
        with self._lock:
            socks = list(self._socks.values())
            self._socks.clear()
        try:
            self._loop_thread.call(lambda: [self._stop(s) for s in socks], timeout=5.0)
        except Exception:  # loop already gone: just close
            for s in socks:
                s.close()
        self._loop_thread.close()
