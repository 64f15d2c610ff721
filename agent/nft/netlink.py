"""Read sgagent's named counters, and the ruleset generation, straight from the kernel over
netlink.

Asking libnftables to ``list counters table inet sgagent`` first fetches its whole cache of
the table (every rule and set) and formats JSON, which takes about 0.4 s at 10,000 rules.
``status``, a scrape and the backend need only the counter objects, so
:class:`NetlinkCounterReader` sends the one request that returns them --
``NFT_MSG_GETOBJ`` dump, filtered by table and object type -- and decodes the replies itself:
name, packets, bytes and the comment that carries the counter's identity (decoded by the same
:func:`sgagent.nft.names.parse_comment` as ``status``).  The same kernel objects, the same
numbers; ~25 ms at 10,000 rules.

A read is one consistent view of the table: a dump that a transaction interfered with is
repeated (a few times at most); see :meth:`NetlinkCounterReader._consistent_dump`.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import struct
import threading
import time
from typing import Callable

from .. import netns
from ..backend.kernel import CounterReading
from ..ir import CounterKey
from .names import TABLE, parse_comment

__all__ = ["CounterReading", "NetlinkCounterReader", "NetlinkError"]

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWGEN = 15
NFT_MSG_GETGEN = 16
NFT_MSG_NEWOBJ = 18
NFT_MSG_GETOBJ = 19
NFTA_GEN_ID = 1
NFTA_GEN_PROC_PID = 2
NFTA_GEN_PROC_NAME = 3
NFNLGRP_NFTABLES = 7   # the multicast group of every committed nftables change
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NFPROTO_INET = 1
NFT_OBJECT_COUNTER = 1

NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLM_F_DUMP_INTR = 0x10
NLMSG_ERROR = 2
NLMSG_DONE = 3

NFTA_OBJ_TABLE = 1
NFTA_OBJ_NAME = 2
NFTA_OBJ_TYPE = 3
NFTA_OBJ_DATA = 4
NFTA_OBJ_USERDATA = 8
NFTA_COUNTER_BYTES = 1
NFTA_COUNTER_PACKETS = 2
NFTNL_UDATA_OBJ_COMMENT = 0
NLA_TYPE_MASK = 0x3FFF

NLMSG = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")
_U64BE = struct.Struct(">Q")
I32 = struct.Struct("=i")
_NEWOBJ = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWOBJ
_NEWGEN = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN
_TABLE_Z = TABLE.encode() + b"\0"
_TABLE_ATTR = _NLA.pack(4 + len(_TABLE_Z), NFTA_OBJ_TABLE) + _TABLE_Z
RECV_BUFFER = 1 << 18
TIMEOUT = 5.0
RETRIES = 8


class NetlinkError(OSError):
    """The kernel refused the dump, or it could not be completed."""


def new_socket() -> socket.socket:
    """A netfilter netlink socket in the calling thread's network namespace."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        s.bind((0, 0))
        s.settimeout(TIMEOUT)
    except BaseException:
        s.close()
        raise
    return s


def open_socket(netns_name: str | None, thread_name: str) -> socket.socket:
    """A netfilter netlink socket in the named network namespace (``None``: this process's)."""
    if netns_name is None:
        return new_socket()
    with netns.NetnsExecutor(netns_name, thread_name=thread_name) as ex:
        return ex.call(new_socket)


def messages(buf, n: int):
    """(offset, length, type, sequence number) of each netlink message in ``buf[:n]``."""
    off = 0
    while off + 16 <= n:
        mlen, mtype, _, mseq, _ = NLMSG.unpack_from(buf, off)
        if mlen < 16:
            return
        yield off, mlen, mtype, mseq
        off += (mlen + 3) & ~3


def attributes(buf, start: int, end: int):
    """(type without flags, payload offset, payload length) of each attribute in
    ``buf[start:end]`` (a message's attributes, or a nested attribute's payload)."""
    a = start
    while a + 4 <= end:
        alen, atype = _NLA.unpack_from(buf, a)
        if alen < 4 or a + alen > end:
            return
        yield atype & NLA_TYPE_MASK, a + 4, alen - 4
        a += (alen + 3) & ~3


class NetfilterSocket:
    """One netfilter netlink socket in a named network namespace (``None``: this process's),
    opened on first use, dropped after an error, used by one caller at a time."""

    thread_name = "sgagent-netlink"

    def __init__(self, netns_name: str | None = None, *,
                 opener: Callable[[], socket.socket] | None = None) -> None:
        """``opener``: makes the socket instead (a kernel whose namespace has no name, a
        scratch one, opens it on its own namespace's thread)."""
        self.netns_name = netns_name
        self._opener = opener
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._seq = 0
        self._buf = bytearray(RECV_BUFFER)

    def _socket(self) -> socket.socket:
        if self._sock is None:
            self._sock = (self._opener() if self._opener is not None
                          else open_socket(self.netns_name, self.thread_name))
        return self._sock

    def _drop_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def close(self) -> None:
        with self._lock:
            self._drop_socket()

    def _genid(self) -> int:
        """The ruleset generation (NFT_MSG_GETGEN): it changes with every commit."""
        sock = self._socket()
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        seq = self._seq
        sock.send(NLMSG.pack(NLMSG.size + 4, (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN,
                              NLM_F_REQUEST, seq, 0) + struct.pack("=BBH", 0, 0, 0))
        buf = self._buf
        for _ in range(64):
            n = sock.recv_into(buf)
            for off, mlen, mtype, mseq in messages(buf, n):
                if mseq != seq:
                    continue
                if mtype == NLMSG_ERROR:
                    err = I32.unpack_from(buf, off + 16)[0]
                    raise NetlinkError(-err or errno.EPROTO,
                                       f"ruleset generation: {os.strerror(-err or errno.EPROTO)}")
                if mtype == _NEWGEN:
                    a, end = off + 20, off + mlen
                    while a + 4 <= end:
                        alen, atype = _NLA.unpack_from(buf, a)
                        if alen < 4:
                            break
                        if atype & NLA_TYPE_MASK == NFTA_GEN_ID and alen >= 8:
                            return struct.unpack_from(">I", buf, a + 4)[0]
                        a += (alen + 3) & ~3
                    raise NetlinkError(errno.EPROTO, "ruleset generation: no id in the reply")
        raise NetlinkError(errno.EPROTO, "ruleset generation: no reply")


def nlattr(atype: int, payload: bytes) -> bytes:
    length = _NLA.size + len(payload)
    return _NLA.pack(length, atype) + payload + b"\0" * ((-length) & 3)


def _request(seq: int) -> bytes:
    body = (struct.pack("=BBH", NFPROTO_INET, 0, 0)
            + nlattr(NFTA_OBJ_TABLE, _TABLE_Z)
            + nlattr(NFTA_OBJ_TYPE, struct.pack(">I", NFT_OBJECT_COUNTER)))
    return NLMSG.pack(NLMSG.size + len(body), (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETOBJ,
                       NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def _comment(udata) -> bytes | None:
    """The comment in libnftnl's user-data TLVs (type u8, length u8, value), without its NUL."""
    i = 0
    while i + 2 <= len(udata):
        t, n = udata[i], udata[i + 1]
        if t == NFTNL_UDATA_OBJ_COMMENT:
            return bytes(udata[i + 2:i + 2 + n]).split(b"\0", 1)[0]
        i += 2 + n
    return None


# The fast path.  Linux lays out an object message as table, name, type, handle, use, data,
# userdata; a counter's data is bytes then packets (u64, no padding attributes on 64-bit
# machines); libnftnl's userdata is the comment TLV.  One regex pulls (bytes, packets, comment)
# out of a whole receive buffer; when its matches do not line up one-to-one with the counter
# messages in that buffer (another layout), the buffer is parsed attribute by attribute.
_FAST = re.compile(
    rb"\x1c\x00\x04[\x00\x80]"            # NFTA_OBJ_DATA, 28 bytes, maybe NLA_F_NESTED
    rb"\x0c\x00\x01\x00(.{8})"              # NFTA_COUNTER_BYTES, u64 big-endian
    rb"\x0c\x00\x02\x00(.{8})"              # NFTA_COUNTER_PACKETS
    rb"..\x08\x00\x00.([^\x00]*)\x00",       # NFTA_OBJ_USERDATA: comment TLV, NUL-terminated
    re.S)


def _slow(buf, start: int, end: int) -> list[tuple[bytes | None, int, int]]:
    """Attribute-by-attribute: (comment, packets, bytes) of each sgagent counter message."""
    out = []
    off = start
    while off + 16 <= end:
        mlen, mtype = NLMSG.unpack_from(buf, off)[:2]
        if mlen < 16:
            break
        if mtype == _NEWOBJ and buf[off + 16] == NFPROTO_INET:
            a, mend = off + 20, off + mlen
            ours, comment, packets, nbytes = False, None, 0, 0
            while a + 4 <= mend:
                alen, atype = _NLA.unpack_from(buf, a)
                if alen < 4:
                    break
                atype &= NLA_TYPE_MASK
                if atype == NFTA_OBJ_TABLE:
                    ours = bytes(buf[a + 4:a + alen]) == _TABLE_Z
                elif atype == NFTA_OBJ_DATA:
                    b, bend = a + 4, a + alen
                    while b + 4 <= bend:
                        blen, btype = _NLA.unpack_from(buf, b)
                        if blen < 4:
                            break
                        btype &= NLA_TYPE_MASK
                        if btype == NFTA_COUNTER_PACKETS:
                            packets = _U64BE.unpack_from(buf, b + 4)[0]
                        elif btype == NFTA_COUNTER_BYTES:
                            nbytes = _U64BE.unpack_from(buf, b + 4)[0]
                        b += (blen + 3) & ~3
                elif atype == NFTA_OBJ_USERDATA:
                    comment = _comment(buf[a + 4:a + alen])
                a += (alen + 3) & ~3
            if ours:
                out.append((comment, packets, nbytes))
        off += (mlen + 3) & ~3
    return out


class NetlinkCounterReader(NetfilterSocket):
    """``reader()`` -> every sgagent counter with its identity (what ``NftBackend.counters()`` returns).

    ``netns_name``: read the table of that named network namespace (``None``: this process's).
    Thread-safe (one dump at a time); keeps one netlink socket open until :meth:`close`.
    """

    thread_name = "sgagent-nlcounters"
    # A counter's identity from its comment (None: not one this reader reports).
    identify = staticmethod(parse_comment)

    def __init__(self, netns_name: str | None = None, *,
                 opener: Callable[[], socket.socket] | None = None) -> None:
        super().__init__(netns_name, opener=opener)
        self._keys: dict[bytes, CounterKey | None] = {}   # comment -> identity
        self._verified_gen: int | None = None      # generation of the last good read
        self._verified_keys: list[CounterKey] = []   # and its counters, in kernel order

    def __enter__(self) -> "NetlinkCounterReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __call__(self) -> list[CounterReading]:
        """Every sgagent counter with its identity, in one consistent read."""
        return [CounterReading(key, packets, nbytes) for _, key, packets, nbytes in self.read_raw()]

    def read_raw(self) -> list[tuple[bytes, CounterKey, int, int]]:
        """The same read as ``reader()``, as ``(comment, key, packets, bytes)`` tuples (what
        the collector uses: no objects to build, and the comment is a ready-made dict key)."""
        with self._lock:
            for attempt in range(RETRIES):
                if attempt:
                    time.sleep(0.005 * attempt)   # let a commit in progress finish
                try:
                    out = self._consistent_dump()
                except NetlinkError:
                    self._drop_socket()
                    raise
                except OSError as exc:   # timeout, socket trouble: a fresh socket next time
                    self._drop_socket()
                    raise NetlinkError(exc.errno or errno.EIO,
                                       f"reading the kernel's counters failed: {exc}") from exc
                if out is not None:
                    return out
            raise NetlinkError(errno.EAGAIN, "the ruleset kept changing during the counter dump "
                               f"({RETRIES} attempts)")

    def _consistent_dump(self) -> list[tuple[bytes, CounterKey, int, int]] | None:
        """One dump that no change of the ruleset interfered with, or ``None``.

        The kernel does not reliably flag an object dump that a transaction interfered with:
        while a commit that deletes objects is in progress, a dump can silently skip objects,
        with the same generation (``NFT_MSG_GETGEN``) before and after it and no
        NLM_F_DUMP_INTR.  So a dump counts only if the generation did not move during it and
        the counters are those last seen in this generation; in a generation not seen before,
        a second dump must find the same counters.
        """
        gen = self._genid()
        out = self._dump()
        if out is None or self._genid() != gen:
            return None
        keys = [r[1] for r in out]           # cached CounterKey objects: cheap to compare
        if gen == self._verified_gen:
            return out if keys == self._verified_keys else None
        again = self._dump()
        if again is None or self._genid() != gen or [r[1] for r in again] != keys:
            return None
        self._verified_gen, self._verified_keys = gen, keys
        return again

    def generation(self) -> int:
        """The ruleset generation of the namespace: it changes with every nftables commit."""
        with self._lock:
            try:
                return self._genid()
            except OSError as exc:
                self._drop_socket()
                if isinstance(exc, NetlinkError):
                    raise
                raise NetlinkError(exc.errno or errno.EIO, f"ruleset generation: {exc}") from exc

    def _dump(self) -> list[tuple[bytes, CounterKey, int, int]] | None:
        """One dump; ``None`` if the kernel says it was interrupted by a change."""
        sock = self._socket()
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        seq = self._seq
        sock.send(_request(seq))
        buf, keys = self._buf, self._keys
        out: list[tuple[bytes, CounterKey, int, int]] = []
        interrupted = False
        unpack_msg = NLMSG.unpack_from
        from_bytes = int.from_bytes
        while True:
            n = sock.recv_into(buf)
            if n == 0:
                raise NetlinkError(errno.EIO, "netlink socket closed during the counter dump")
            # Walk the message headers: errors, the end, interruptions, and how many counter
            # messages of our table this buffer holds.
            off, objects, odd, done, start, end = 0, 0, False, False, -1, 0
            while off + 16 <= n:
                mlen, mtype, mflags, mseq, _ = unpack_msg(buf, off)
                if mlen < 16 or off + mlen > n:
                    raise NetlinkError(errno.EPROTO, "truncated netlink message")
                if mseq == seq:              # else: a stale reply of an abandoned dump
                    if mflags & NLM_F_DUMP_INTR:
                        interrupted = True
                    if mtype == _NEWOBJ:
                        if start < 0:
                            start = off
                        end = off + mlen
                        objects += 1
                        if buf[off + 16] != NFPROTO_INET or not buf.startswith(_TABLE_ATTR, off + 20):
                            odd = True
                    elif mtype == NLMSG_DONE:
                        err = I32.unpack_from(buf, off + 16)[0] if mlen >= 20 else 0
                        if err < 0:
                            raise NetlinkError(-err, f"counter dump: {os.strerror(-err)}")
                        done = True
                        break
                    elif mtype == NLMSG_ERROR:
                        err = I32.unpack_from(buf, off + 16)[0]
                        if err < 0:
                            if -err == errno.ENOENT:    # no sgagent table: no counters
                                return []
                            raise NetlinkError(-err, f"counter dump: {os.strerror(-err)}")
                    else:
                        odd = True
                elif start >= 0:
                    odd = True
                off += (mlen + 3) & ~3
            if objects:
                found = None if odd else _FAST.findall(buf, start, end)
                if found is not None and len(found) == objects:
                    rows = [(c, from_bytes(p, "big"), from_bytes(b, "big")) for b, p, c in found]
                else:
                    rows = _slow(buf, start, end)
                for comment, packets, nbytes in rows:
                    if comment is None:
                        continue
                    key = keys.get(comment, False)
                    if key is False:
                        key = self.identify(comment.decode("utf-8", "replace"))
                        keys[comment] = key
                    if key is not None:
                        out.append((comment, key, packets, nbytes))
            if done:
                break
        if interrupted:
            return None
        if len(keys) > 2 * len(out) + 1024:   # forget identities long gone
            live = {r[1] for r in out}
            self._keys = {c: k for c, k in keys.items() if k in live}
        return out


NFT_MSG_NEWTABLE, NFT_MSG_GETTABLE = 0, 1
NFT_MSG_NEWCHAIN, NFT_MSG_GETCHAIN = 3, 4
NFT_MSG_NEWSET, NFT_MSG_GETSET = 9, 10
NFT_MSG_GETOBJ = 19
NFT_SET_ANONYMOUS, NFT_SET_MAP = 0x1, 0x8


class TableNames(NetfilterSocket):
    """``names()`` -> whether the sgagent table exists, and the names of its chains, of its
    named sets and maps (``"set NAME"`` / ``"map NAME"``) and of its counters: dumps of the
    table's declarations over netlink, none of its rules or elements (libnftables would load its cache
    of the whole table first: a minute at 100,000 rules).  One consistent view: dumps that a
    commit came between are repeated."""

    thread_name = "sgagent-nlnames"

    def __init__(self, netns_name: str | None = None, *,
                 opener: Callable[[], socket.socket] | None = None) -> None:
        super().__init__(netns_name, opener=opener)

    def names(self) -> tuple[bool, set[str], set[str], set[str]]:
        with self._lock:
            try:
                for attempt in range(RETRIES):
                    if attempt:
                        time.sleep(0.005 * attempt)
                    gen = self._genid()
                    out = self._names()
                    if out is not None and self._genid() == gen:
                        return out
            except NetlinkError:
                self._drop_socket()
                raise
            except OSError as exc:
                self._drop_socket()
                raise NetlinkError(exc.errno or errno.EIO, f"listing the table: {exc}") from exc
        raise NetlinkError(errno.EAGAIN, "the ruleset kept changing while listing the table")

    def _names(self) -> tuple[bool, set[str], set[str], set[str]] | None:
        tables = self._dump(NFT_MSG_GETTABLE, NFT_MSG_NEWTABLE, 1)
        if tables is None:
            return None
        if not any(name == TABLE for name, _, _ in tables):
            return False, set(), set(), set()
        chains = self._dump(NFT_MSG_GETCHAIN, NFT_MSG_NEWCHAIN, 3)
        sets = self._dump(NFT_MSG_GETSET, NFT_MSG_NEWSET, 2)
        objs = self._dump(NFT_MSG_GETOBJ, NFT_MSG_NEWOBJ, 2)
        if chains is None or sets is None or objs is None:
            return None
        return (True, {name for name, t, _ in chains if t == TABLE},
                {f"{'map' if flags & NFT_SET_MAP else 'set'} {name}" for name, t, flags in sets
                 if t == TABLE and not flags & NFT_SET_ANONYMOUS},
                {name for name, t, kind in objs if t == TABLE and kind == NFT_OBJECT_COUNTER})

    def _dump(self, get: int, new: int, name_attr: int
              ) -> list[tuple[str, str, int]] | None:
        """(name, table, attribute 3) of each inet object a GET dump returns (a set's flags,
        an object's type); None if interrupted."""
        sock = self._socket()
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        seq = self._seq
        body = struct.pack("=BBH", NFPROTO_INET, 0, 0)
        sock.send(NLMSG.pack(NLMSG.size + len(body), (NFNL_SUBSYS_NFTABLES << 8) | get,
                             NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
        buf, out, interrupted = self._buf, [], False
        want = (NFNL_SUBSYS_NFTABLES << 8) | new
        while True:
            n = sock.recv_into(buf)
            if n == 0:
                raise NetlinkError(errno.EIO, "netlink socket closed during a dump")
            for off, mlen, mtype, mseq in messages(buf, n):
                if mseq != seq:
                    continue
                if NLMSG.unpack_from(buf, off)[2] & NLM_F_DUMP_INTR:
                    interrupted = True
                if mtype == NLMSG_DONE:
                    return None if interrupted else out
                if mtype == NLMSG_ERROR:
                    err = I32.unpack_from(buf, off + 16)[0]
                    if err < 0:
                        raise NetlinkError(-err, f"listing the table: {os.strerror(-err)}")
                    continue
                if mtype != want or buf[off + 16] != NFPROTO_INET:
                    continue
                name = table = ""
                flags = 0
                for atype, a, alen in attributes(buf, off + 20, off + mlen):
                    if atype == 1:
                        table = bytes(buf[a:a + alen]).split(b"\0", 1)[0].decode()
                    if atype == name_attr:
                        name = bytes(buf[a:a + alen]).split(b"\0", 1)[0].decode()
                    elif atype == 3 and new in (NFT_MSG_NEWSET, NFT_MSG_NEWOBJ) and alen == 4:
                        flags = struct.unpack_from(">I", buf, a)[0]
                if new == NFT_MSG_NEWTABLE:
                    table = name
                out.append((name, table, flags))
