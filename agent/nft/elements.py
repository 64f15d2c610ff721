"""Element updates straight over netlink, in one atomic batch.

A membership change only adds and removes elements of sets and of the exact address maps
(:func:`sgagent.nft.setrender.member_update`): its transaction holds nothing but
:class:`~sgagent.backend.transaction.AddElements` and ``DeleteElements``.  Through libnftables even a one-element
transaction first loads its cache of the whole table -- about 0.1 s at 10,000 rules -- so such
a change is sent here instead: one nftables batch of ``NFT_MSG_DELSETELEM`` and
``NFT_MSG_NEWSETELEM`` messages, which the kernel commits atomically or not at all.  The batch
carries the ruleset generation the caller last saw (``NFNL_BATCH_GENID``), so it is refused if
anything else committed since.  Keys are IPv4/IPv6 addresses; values, where a map has them,
are ``goto``/``jump`` verdicts to a chain.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time

from ..backend.transaction import AddElements, DeleteElements
from .netlink import (I32, NLMSG, NFNL_SUBSYS_NFTABLES, NFPROTO_INET, NLM_F_REQUEST,
                      NLMSG_ERROR, NetfilterSocket, NetlinkError, nlattr, messages)
from .names import TABLE

NFNL_MSG_BATCH_BEGIN = 0x10
NFNL_MSG_BATCH_END = 0x11
NFNL_BATCH_GENID = 1
NFT_MSG_NEWSETELEM = 12
NFT_MSG_DELSETELEM = 14
NLM_F_ACK = 0x4
NLM_F_CREATE = 0x400
NLA_F_NESTED = 0x8000
NFTA_SET_ELEM_LIST_TABLE = 1
NFTA_SET_ELEM_LIST_SET = 2
NFTA_SET_ELEM_LIST_ELEMENTS = 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY = 1
NFTA_SET_ELEM_DATA = 2
NFTA_DATA_VALUE = 1
NFTA_DATA_VERDICT = 2
NFTA_VERDICT_CODE = 1
NFTA_VERDICT_CHAIN = 2
_VERDICTS = {"jump": -3, "goto": -4}
_TABLE_Z = TABLE.encode() + b"\0"

ElementOp = AddElements | DeleteElements
FAMILIES = {"ipv4_addr": 4, "ipv6_addr": 6}   # the key types this encoder knows


def encodable(ops) -> bool:
    """Whether every operation is an element change of an address set or map."""
    return all(isinstance(op, (AddElements, DeleteElements)) and op.key_type in FAMILIES
               for op in ops)


def encode_batch(ops: list[ElementOp], seq: int, genid: int | None) -> tuple[bytes, list[int]]:
    """The whole batch, one message per operation in their order, and the sequence numbers
    of the element messages."""
    begin_body = struct.pack("=BB", 0, 0) + struct.pack(">H", NFNL_SUBSYS_NFTABLES)
    if genid is not None:
        begin_body += nlattr(NFNL_BATCH_GENID, struct.pack(">I", genid))
    out = [_msg(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, begin_body)]
    seqs = []
    for op in ops:
        family = FAMILIES[op.key_type]
        if isinstance(op, AddElements):
            kind = NFT_MSG_NEWSETELEM
            elems = b"".join(_element(family, k, v) for k, v in op.items)
        else:
            kind = NFT_MSG_DELSETELEM
            elems = b"".join(_element(family, k) for k in op.keys)
        if not elems:
            continue
        body = (struct.pack("=BBH", NFPROTO_INET, 0, 0)
                + nlattr(NFTA_SET_ELEM_LIST_TABLE, _TABLE_Z)
                + nlattr(NFTA_SET_ELEM_LIST_SET, op.set.encode() + b"\0")
                + nlattr(NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, elems))
        seq += 1
        seqs.append(seq)
        flags = NLM_F_REQUEST | NLM_F_ACK | (NLM_F_CREATE if kind == NFT_MSG_NEWSETELEM else 0)
        out.append(_msg((NFNL_SUBSYS_NFTABLES << 8) | kind, flags, seq, body))
    out.append(_msg(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq + 1, begin_body[:4]))
    return b"".join(out), seqs


def _msg(mtype: int, flags: int, seq: int, body: bytes) -> bytes:
    return NLMSG.pack(NLMSG.size + len(body), mtype, flags, seq, 0) + body


def _element(family: int, key: str, verdict: str | None = None) -> bytes:
    addr = socket.inet_pton(socket.AF_INET if family == 4 else socket.AF_INET6, key)
    inner = nlattr(NFTA_SET_ELEM_KEY | NLA_F_NESTED, nlattr(NFTA_DATA_VALUE, addr))
    if verdict is not None:
        kind, _, chain = verdict.partition(" ")
        v = (nlattr(NFTA_VERDICT_CODE, struct.pack(">i", _VERDICTS[kind]))
             + nlattr(NFTA_VERDICT_CHAIN, chain.encode() + b"\0"))
        inner += nlattr(NFTA_SET_ELEM_DATA | NLA_F_NESTED, nlattr(NFTA_DATA_VERDICT | NLA_F_NESTED, v))
    return nlattr(NFTA_LIST_ELEM | NLA_F_NESTED, inner)


class NetlinkElementWriter(NetfilterSocket):
    """Sends element batches to the nftables of a named network namespace (``None``: this
    process's), on one socket kept open until :meth:`close`."""

    thread_name = "sgagent-nlelements"

    def __init__(self, netns_name: str | None = None) -> None:
        super().__init__(netns_name)
        self.last_batch = (0, 0.0)  # bytes and seconds of the last batch sent (benchmarks)

    def send(self, ops: list[ElementOp], genid: int | None = None) -> None:
        """Commit ``ops`` in one batch; NetlinkError (nothing changed) if the kernel refuses
        any part, or if the ruleset generation is no longer ``genid``."""
        with self._lock:
            try:
                self._send(ops, genid)
            except NetlinkError:
                raise
            except OSError as exc:
                self._drop_socket()
                raise NetlinkError(exc.errno or errno.EIO, f"element update: {exc}") from exc

    def _send(self, ops: list[ElementOp], genid: int | None) -> None:
        batch, seqs = encode_batch(ops, self._seq + 1, genid)
        self._seq += len(seqs) + 2
        if not seqs:
            return
        sock = self._socket()
        t0 = time.perf_counter()
        sock.send(batch)
        waiting = set(seqs)
        first, last = seqs[0] - 1, seqs[-1] + 1
        buf = bytearray(1 << 16)
        while waiting:
            n = sock.recv_into(buf)
            for off, _, mtype, mseq in messages(buf, n):
                if mtype == NLMSG_ERROR and first <= mseq <= last:
                    err = I32.unpack_from(buf, off + 16)[0]
                    if err:
                        raise NetlinkError(-err, f"element update refused: {os.strerror(-err)}")
                    waiting.discard(mseq)
        self.last_batch = (len(batch), time.perf_counter() - t0)
