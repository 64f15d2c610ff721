"""A transaction straight over netlink, in one atomic nftables batch.

Every transaction the renderers' objects make -- a full load (the table, counters, sets and
maps with their elements, base chains with their hooks, every rule, with the anonymous sets
some rules carry) as well as a change -- is sent as one batch of ``NFT_MSG_NEW*``/``DEL*``
messages, encoded as ``nft`` encodes the same text (:mod:`sgagent.nft.exprs`,
:mod:`sgagent.nft.setdefs`), which the kernel commits atomically or not at all.  So a full
apply never goes through libnftables' parser, and a change never waits for libnftables to
load its cache of the table (0.2-1.4 s at 10,000-100,000 rules).  A batch may carry the
ruleset generation the caller last saw (``NFNL_BATCH_GENID``): it is then refused if anything
else committed since.  An operation the encoder does not know makes :func:`encode_batch`
return None: libnftables then takes the transaction whole, as text.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import struct
import time
from typing import Callable, Iterable, NamedTuple

from ..backend.transaction import (AddChain, AddCounter, AddElements, AddRules, AddSet,
                                   AddTable, DeleteChain, DeleteCounter, DeleteElements,
                                   DeleteSet, DeleteTable, FlushChain, FlushTable, Op)
from .elements import FAMILIES, NLA_F_NESTED, element
from .exprs import NFT_OBJECT_COUNTER, Anon, encode
from .names import TABLE
from .netlink import (I32, NFNL_SUBSYS_NFTABLES, NFPROTO_INET, NLM_F_REQUEST, NLMSG,
                      NLMSG_ERROR, SOL_NETLINK, NetfilterSocket, NetlinkError, messages,
                      nlattr)
from .setdefs import Unknown, named_elements, set_messages

NFNL_MSG_BATCH_BEGIN = 0x10
NFNL_MSG_BATCH_END = 0x11
NFNL_BATCH_GENID = 1
NFT_MSG_NEWTABLE, NFT_MSG_DELTABLE = 0, 2
NFT_MSG_NEWCHAIN, NFT_MSG_DELCHAIN = 3, 5
NFT_MSG_NEWRULE, NFT_MSG_DELRULE = 6, 8
NFT_MSG_NEWSET, NFT_MSG_DELSET = 9, 11
NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM = 12, 14
NFT_MSG_NEWOBJ, NFT_MSG_DELOBJ = 18, 20
NFT_MSG_GETGEN = 16
NLM_F_ACK = 0x4
NLM_F_CREATE = 0x400
NLM_F_APPEND = 0x800
NETLINK_CAP_ACK = 10
NFTA_TABLE_NAME, NFTA_TABLE_FLAGS = 1, 2
NFTA_CHAIN_TABLE, NFTA_CHAIN_HOOK, NFTA_CHAIN_POLICY, NFTA_CHAIN_NAME, NFTA_CHAIN_TYPE = 1, 4, 5, 3, 7
NFTA_HOOK_HOOKNUM, NFTA_HOOK_PRIORITY = 1, 2
NFTA_RULE_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS = 1, 2, 4
NFTA_SET_NAME = 2
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_OBJ_TABLE, NFTA_OBJ_NAME, NFTA_OBJ_TYPE, NFTA_OBJ_DATA, NFTA_OBJ_USERDATA = 1, 2, 3, 4, 8
NFTA_COUNTER_BYTES, NFTA_COUNTER_PACKETS = 1, 2
NFTNL_UDATA_OBJ_COMMENT = 0
HOOKS = {"prerouting": 0, "input": 1, "forward": 2, "output": 3, "postrouting": 4}
PRIORITIES = {"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50,
              "srcnat": 100}
POLICIES = {"drop": 0, "accept": 1}
_HEADER = re.compile(r"type filter hook (\w+) priority (-?\w+); policy (\w+);")
# Sent in pieces of about this size, one buffer each (at most IOV_MAX of them per send)
CHUNK = 1 << 20
_TABLE = nlattr(1, TABLE.encode() + b"\0")   # attribute 1 is the table in every message here
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_HEAD = struct.pack("=BBH", NFPROTO_INET, 0, 0)


def _z(text: str) -> bytes:
    return text.encode() + b"\0"


def _counter(name: str, comment: str) -> bytes | None:
    data = _z(comment)
    if len(data) > 255:
        return None
    return (_TABLE + nlattr(NFTA_OBJ_NAME, _z(name))
            + nlattr(NFTA_OBJ_TYPE, _U32.pack(NFT_OBJECT_COUNTER))
            + nlattr(NFTA_OBJ_USERDATA, bytes([NFTNL_UDATA_OBJ_COMMENT, len(data)]) + data)
            + nlattr(NFTA_OBJ_DATA | NLA_F_NESTED,
                     nlattr(NFTA_COUNTER_BYTES, _U64.pack(0))
                     + nlattr(NFTA_COUNTER_PACKETS, _U64.pack(0))))


def _elements(op: AddElements | DeleteElements) -> bytes:
    family = FAMILIES[op.key_type]
    if isinstance(op, AddElements):
        elems = b"".join(element(family, k, v) for k, v in op.items)
    else:
        elems = b"".join(element(family, k) for k in op.keys)
    return (_TABLE + nlattr(NFTA_SET_ELEM_LIST_SET, _z(op.set))
            + nlattr(NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, elems))


def _base_chain(name: str, header: str) -> bytes | None:
    m = _HEADER.fullmatch(header.strip())
    if not m or m.group(1) not in HOOKS or m.group(3) not in POLICIES:
        return None
    prio = m.group(2)
    prio_n = PRIORITIES.get(prio)
    if prio_n is None:
        try:
            prio_n = int(prio)
        except ValueError:
            return None
    return (_TABLE + nlattr(NFTA_CHAIN_NAME, _z(name)) + nlattr(NFTA_CHAIN_TYPE, _z("filter"))
            + nlattr(NFTA_CHAIN_POLICY, _U32.pack(POLICIES[m.group(3)]))
            + nlattr(NFTA_CHAIN_HOOK | NLA_F_NESTED,
                     nlattr(NFTA_HOOK_HOOKNUM, _U32.pack(HOOKS[m.group(1)]))
                     + nlattr(NFTA_HOOK_PRIORITY, struct.pack(">i", prio_n))))


Message = tuple[int, int, bytes]   # (message type, extra flags, body after the nfgenmsg header)


class Encoder:
    """Turns operations into messages, numbering the sets it declares (``NFTA_SET_ID``), as
    one batch: a rule finds a set declared earlier in the same batch by that id, and an
    anonymous set only by it."""

    def __init__(self) -> None:
        self.set_ids: dict[str, int] = {}
        self._next_id = 0
        self._anon = 0
        self._pending: list[Message] = []

    def _id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _declare(self, anon: Anon) -> tuple[str, int]:
        set_id = self._id()
        msgs = set_messages(_TABLE, anon.prefix, anon.typ, set_id=set_id, is_map=anon.is_map,
                            interval=anon.interval, elems=anon.elements, anon=True,
                            typeof=anon.typeof, order=anon.order)
        self._pending.append((NFT_MSG_NEWSET, NLM_F_CREATE, msgs.declare))
        self._pending += [(NFT_MSG_NEWSETELEM, NLM_F_CREATE, e) for e in msgs.elements]
        self._anon += 1
        return anon.prefix, set_id

    def messages(self, op: Op) -> list[Message] | None:
        """The messages ``op`` takes, or None if it cannot go over netlink here."""
        kind = type(op)
        if kind is AddRules:
            out: list[Message] = []
            chain = nlattr(NFTA_RULE_CHAIN, _z(op.chain))
            for rule in op.rules:
                self._pending = []
                exprs = encode(rule.text, self._declare, self.set_ids)
                if exprs is None:
                    return None
                out += self._pending
                out.append((NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND,
                            _TABLE + chain + nlattr(NFTA_RULE_EXPRESSIONS | NLA_F_NESTED, exprs)))
            return out
        if kind is AddSet:
            s = op.set
            if s.is_map and s.value_type != "verdict":
                return None
            try:
                elems = named_elements(s.type, s.interval, s.items())
                set_id = self._id()
                msgs = set_messages(_TABLE, op.name, s.type, set_id=set_id, is_map=s.is_map,
                                    interval=s.interval, elems=elems)
            except (Unknown, ValueError):
                return None
            self.set_ids[op.name] = set_id
            return [(NFT_MSG_NEWSET, NLM_F_CREATE, msgs.declare)] + [
                (NFT_MSG_NEWSETELEM, NLM_F_CREATE, e) for e in msgs.elements]
        if kind in (AddElements, DeleteElements):
            keys = [k for k, _ in op.items] if kind is AddElements else op.keys
            if op.key_type not in FAMILIES or any("/" in k or "-" in k for k in keys):
                return None   # an interval's elements (prefixes, ranges): libnftables
            if not (op.items if kind is AddElements else op.keys):
                return []
            new = kind is AddElements
            return [(NFT_MSG_NEWSETELEM if new else NFT_MSG_DELSETELEM,
                     NLM_F_CREATE if new else 0, _elements(op))]
        if kind is AddChain:
            if op.header is not None:
                body = _base_chain(op.name, op.header)
                return None if body is None else [(NFT_MSG_NEWCHAIN, NLM_F_CREATE, body)]
            return [(NFT_MSG_NEWCHAIN, NLM_F_CREATE, _TABLE + nlattr(NFTA_CHAIN_NAME, _z(op.name)))]
        if kind is FlushChain:
            return [(NFT_MSG_DELRULE, 0, _TABLE + nlattr(NFTA_RULE_CHAIN, _z(op.name)))]
        if kind is DeleteChain:
            return [(NFT_MSG_DELCHAIN, 0, _TABLE + nlattr(NFTA_CHAIN_NAME, _z(op.name)))]
        if kind is AddCounter:
            body = _counter(op.name, op.comment)
            return None if body is None else [(NFT_MSG_NEWOBJ, NLM_F_CREATE, body)]
        if kind is DeleteCounter:
            return [(NFT_MSG_DELOBJ, 0, _TABLE + nlattr(NFTA_OBJ_NAME, _z(op.name))
                     + nlattr(NFTA_OBJ_TYPE, _U32.pack(NFT_OBJECT_COUNTER)))]
        if kind is DeleteSet:
            return [(NFT_MSG_DELSET, 0, _TABLE + nlattr(NFTA_SET_NAME, _z(op.name)))]
        if kind is AddTable:
            return [(NFT_MSG_NEWTABLE, 0, nlattr(NFTA_TABLE_NAME, _z(TABLE))
                     + nlattr(NFTA_TABLE_FLAGS, _U32.pack(0)))]
        if kind is FlushTable:
            return [(NFT_MSG_DELRULE, 0, _TABLE)]
        if kind is DeleteTable:
            return [(NFT_MSG_DELTABLE, 0, nlattr(NFTA_TABLE_NAME, _z(TABLE)))]
        return None


def messages_of(op: Op) -> list[Message] | None:
    """(message type, extra flags, body after the nfgenmsg header) for each message ``op``
    takes on its own, or None if it cannot go over netlink here."""
    return Encoder().messages(op)


class Batch(NamedTuple):
    chunks: list[bytes]   # the batch, in pieces to send as one message (sendmsg)
    first: int            # sequence number of its first message (the batch's begin)
    last: int             # and of its end
    count: int            # messages between them
    size: int             # bytes


def encode_batch(ops: Iterable[Op], seq: int, genid: int | None) -> Batch | None:
    """The whole batch, its messages in the order of ``ops``; None if an operation cannot go
    over netlink here.  Built piece by piece (about a megabyte each), so that no list of
    every message is held beside the pieces."""
    begin = struct.pack("=BB", 0, 0) + struct.pack(">H", NFNL_SUBSYS_NFTABLES)
    if genid is not None:
        begin += nlattr(NFNL_BATCH_GENID, _U32.pack(genid))
    first = seq
    cur = [_msg(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, begin)]
    size, chunks, count, total = len(cur[0]), [], 0, 0
    enc = Encoder()
    for op in ops:
        msgs = enc.messages(op)
        if msgs is None:
            return None
        for mtype, flags, body in msgs:
            seq += 1
            count += 1
            m = _msg((NFNL_SUBSYS_NFTABLES << 8) | mtype, NLM_F_REQUEST | flags, seq, _HEAD + body)
            cur.append(m)
            size += len(m)
            if size >= CHUNK:
                chunks.append(b"".join(cur))
                total += size
                cur, size = [], 0
    cur.append(_msg(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq + 1, begin[:4]))
    chunks.append(b"".join(cur))
    total += sum(map(len, cur))
    return Batch(chunks, first, seq + 1, count, total)


def _msg(mtype: int, flags: int, seq: int, body: bytes) -> bytes:
    return NLMSG.pack(NLMSG.size + len(body), mtype, flags, seq, 0) + body


class NetlinkBatchWriter(NetfilterSocket):
    """Sends batches to the nftables of a named network namespace (``None``: this
    process's), on one socket kept open until :meth:`close`."""

    thread_name = "sgagent-nlbatch"

    def __init__(self, netns_name: str | None = None, *,
                 opener: Callable[[], socket.socket] | None = None) -> None:
        super().__init__(netns_name, opener=opener)
        self.last_batch = (0, 0.0)  # bytes and seconds of the last batch sent (benchmarks)

    def send(self, batch: Batch) -> None:
        """Commit an :func:`encode_batch` result; NetlinkError (nothing changed) if the
        kernel refuses any part, or if the ruleset generation is no longer the one it
        carries."""
        with self._lock:
            try:
                self._send(batch)
            except NetlinkError:
                raise
            except OSError as exc:
                self._drop_socket()
                raise NetlinkError(exc.errno or errno.EIO, f"netlink batch: {exc}") from exc

    def next_seq(self) -> int:
        """The first sequence number to encode the next batch with."""
        return self._seq + 1

    def _send(self, batch: Batch) -> None:
        """The batch goes in one message (the kernel takes a batch whole, from one send) with
        no acknowledgement asked per message: the kernel answers only what it refuses, and
        has answered everything by the time the send returns.  A request for the generation
        sent after it marks the end of the answers."""
        if not batch.count:
            return
        self._seq = batch.last + 1
        sock = self._socket()
        room = batch.size + (1 << 16)
        for opt, force in ((socket.SO_SNDBUF, 32), (socket.SO_RCVBUF, 33)):
            if sock.getsockopt(socket.SOL_SOCKET, opt) < min(room, 1 << 30):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, force, room)   # SO_*BUFFORCE
                except PermissionError:
                    sock.setsockopt(socket.SOL_SOCKET, opt, room)
        sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)   # errors without the request echoed
        t0 = time.perf_counter()
        sock.sendmsg(batch.chunks)
        self._seq += 1
        probe = self._seq
        sock.send(NLMSG.pack(NLMSG.size + 4, (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN,
                             NLM_F_REQUEST, probe, 0) + struct.pack("=BBH", 0, 0, 0))
        buf = bytearray(1 << 16)
        error = 0
        while True:
            n = sock.recv_into(buf)
            done = False
            for off, _, mtype, mseq in messages(buf, n):
                if mtype == NLMSG_ERROR and batch.first <= mseq <= batch.last:
                    err = I32.unpack_from(buf, off + 16)[0]
                    if err and not error:
                        error = err
                elif mseq == probe:
                    done = True
            if done:
                break
        self.last_batch = (batch.size, time.perf_counter() - t0)
        if error:
            raise NetlinkError(-error, f"netlink batch refused: {os.strerror(-error)}")
