"""A transaction straight over netlink, in one atomic nftables batch.

Through libnftables even a transaction of a few commands first loads libnftables' cache of
the table (the set elements among it when an element is deleted): about 0.2-0.4 s at 10,000
rules and 1.4 s at 100,000, for a one-rule edit.  A change-sized transaction -- plain chains
added, flushed or deleted, named counters added or deleted, address elements added or deleted,
rules of the shapes :mod:`sgagent.nft.exprs` encodes -- is sent here instead: one batch of
``NFT_MSG_NEW*``/``DEL*`` messages, which the kernel commits atomically or not at all.  The
batch carries the ruleset generation the caller last saw (``NFNL_BATCH_GENID``), so it is
refused if anything else committed since.  Anything else (a table, a set or a base chain
created, a rule of another shape) returns None from :func:`encode_batch`: libnftables then
takes the transaction whole.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time

from ..backend.transaction import (AddChain, AddCounter, AddElements, AddRules, DeleteChain,
                                   DeleteCounter, DeleteElements, FlushChain, Op)
from .elements import FAMILIES, NLA_F_NESTED, element
from .exprs import NFT_OBJECT_COUNTER, encode_rule
from .names import TABLE
from .netlink import (I32, NFNL_SUBSYS_NFTABLES, NFPROTO_INET, NLM_F_REQUEST, NLMSG,
                      NLMSG_ERROR, NetfilterSocket, NetlinkError, messages, nlattr)

NFNL_MSG_BATCH_BEGIN = 0x10
NFNL_MSG_BATCH_END = 0x11
NFNL_BATCH_GENID = 1
NFT_MSG_NEWCHAIN, NFT_MSG_DELCHAIN = 3, 5
NFT_MSG_NEWRULE, NFT_MSG_DELRULE = 6, 8
NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM = 12, 14
NFT_MSG_NEWOBJ, NFT_MSG_DELOBJ = 18, 20
NLM_F_ACK = 0x4
NLM_F_CREATE = 0x400
NLM_F_APPEND = 0x800
NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME = 1, 3
NFTA_RULE_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS = 1, 2, 4
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_OBJ_TABLE, NFTA_OBJ_NAME, NFTA_OBJ_TYPE, NFTA_OBJ_DATA, NFTA_OBJ_USERDATA = 1, 2, 3, 4, 8
NFTA_COUNTER_BYTES, NFTA_COUNTER_PACKETS = 1, 2
NFTNL_UDATA_OBJ_COMMENT = 0
# A larger batch (a whole table) is left to libnftables: its acknowledgements would not fit
# the receive buffer, and a full load is not what this path is for.
MAX_MESSAGES = 20000
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
            + nlattr(NFTA_OBJ_DATA | NLA_F_NESTED,
                     nlattr(NFTA_COUNTER_BYTES, _U64.pack(0))
                     + nlattr(NFTA_COUNTER_PACKETS, _U64.pack(0)))
            + nlattr(NFTA_OBJ_USERDATA, bytes([NFTNL_UDATA_OBJ_COMMENT, len(data)]) + data))


def _elements(op: AddElements | DeleteElements) -> bytes:
    family = FAMILIES[op.key_type]
    if isinstance(op, AddElements):
        elems = b"".join(element(family, k, v) for k, v in op.items)
    else:
        elems = b"".join(element(family, k) for k in op.keys)
    return (_TABLE + nlattr(NFTA_SET_ELEM_LIST_SET, _z(op.set))
            + nlattr(NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, elems))


def messages_of(op: Op) -> list[tuple[int, int, bytes]] | None:
    """(message type, extra flags, body after the nfgenmsg header) for each message ``op``
    takes, or None if it cannot go over netlink here."""
    kind = type(op)
    if kind is AddRules:
        out = []
        chain = nlattr(NFTA_RULE_CHAIN, _z(op.chain))
        for rule in op.rules:
            exprs = encode_rule(rule.text)
            if exprs is None:
                return None
            out.append((NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND,
                        _TABLE + chain + nlattr(NFTA_RULE_EXPRESSIONS | NLA_F_NESTED, exprs)))
        return out
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
            return None   # a base chain: its hook is written in nft's syntax
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
    return None


def encode_batch(ops: list[Op], seq: int, genid: int | None
                 ) -> tuple[bytes, list[int]] | None:
    """The whole batch, its messages in the order of ``ops``, and their sequence numbers;
    None if an operation cannot go over netlink here."""
    parts = []
    for op in ops:
        msgs = messages_of(op)
        if msgs is None:
            return None
        parts += msgs
        if len(parts) > MAX_MESSAGES:
            return None
    begin = struct.pack("=BB", 0, 0) + struct.pack(">H", NFNL_SUBSYS_NFTABLES)
    if genid is not None:
        begin += nlattr(NFNL_BATCH_GENID, _U32.pack(genid))
    out = [_msg(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, begin)]
    seqs = []
    for mtype, flags, body in parts:
        seq += 1
        seqs.append(seq)
        out.append(_msg((NFNL_SUBSYS_NFTABLES << 8) | mtype, NLM_F_REQUEST | NLM_F_ACK | flags,
                        seq, _HEAD + body))
    out.append(_msg(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq + 1, begin[:4]))
    return b"".join(out), seqs


def _msg(mtype: int, flags: int, seq: int, body: bytes) -> bytes:
    return NLMSG.pack(NLMSG.size + len(body), mtype, flags, seq, 0) + body


class NetlinkBatchWriter(NetfilterSocket):
    """Sends batches to the nftables of a named network namespace (``None``: this
    process's), on one socket kept open until :meth:`close`."""

    thread_name = "sgagent-nlbatch"

    def __init__(self, netns_name: str | None = None) -> None:
        super().__init__(netns_name)
        self.last_batch = (0, 0.0)  # bytes and seconds of the last batch sent (benchmarks)

    def send(self, batch: tuple[bytes, list[int]]) -> None:
        """Commit an :func:`encode_batch` result (its sequence numbers are renumbered from
        this socket's); NetlinkError (nothing changed) if the kernel refuses any part, or
        if the ruleset generation is no longer the one it carries."""
        with self._lock:
            try:
                self._send(*batch)
            except NetlinkError:
                raise
            except OSError as exc:
                self._drop_socket()
                raise NetlinkError(exc.errno or errno.EIO, f"netlink batch: {exc}") from exc

    def next_seq(self) -> int:
        """The first sequence number to encode the next batch with."""
        return self._seq + 1

    def _send(self, data: bytes, seqs: list[int]) -> None:
        if not seqs:
            return
        self._seq = seqs[-1] + 1
        sock = self._socket()
        room = 2 * len(data) + 64 * len(seqs) + (1 << 16)
        for opt, force in ((socket.SO_SNDBUF, 32), (socket.SO_RCVBUF, 33)):
            if sock.getsockopt(socket.SOL_SOCKET, opt) < room:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, force, room)   # SO_*BUFFORCE
                except PermissionError:
                    sock.setsockopt(socket.SOL_SOCKET, opt, room)
        t0 = time.perf_counter()
        sock.send(data)
        waiting = set(seqs)
        first, last = seqs[0] - 1, seqs[-1] + 1
        buf = bytearray(1 << 16)
        while waiting:
            n = sock.recv_into(buf)
            for off, _, mtype, mseq in messages(buf, n):
                if mtype == NLMSG_ERROR and first <= mseq <= last:
                    err = I32.unpack_from(buf, off + 16)[0]
                    if err:
                        raise NetlinkError(-err, f"netlink batch refused: {os.strerror(-err)}")
                    waiting.discard(mseq)
        self.last_batch = (len(data), time.perf_counter() - t0)
