"""Set elements as netlink attributes, for the batches of :mod:`sgagent.nft.batch`.

A membership change only adds and removes elements of sets and of the exact address maps
(:func:`sgagent.nft.setrender.member_update`); through libnftables even a one-element
transaction first loads its cache of the whole table -- about 0.1 s at 10,000 rules -- so
elements go as ``NFT_MSG_DELSETELEM`` and ``NFT_MSG_NEWSETELEM`` messages of a netlink batch.
Keys are IPv4/IPv6 addresses; values, where a map has them, are ``goto``/``jump`` verdicts to a
chain.
"""

from __future__ import annotations

import errno
import socket
import struct

from .netlink import nlattr

NLA_F_NESTED = 0x8000
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY = 1
NFTA_SET_ELEM_DATA = 2
NFTA_DATA_VALUE = 1
NFTA_DATA_VERDICT = 2
NFTA_VERDICT_CODE = 1
NFTA_VERDICT_CHAIN = 2
_VERDICTS = {"jump": -3, "goto": -4}
FAMILIES = {"ipv4_addr": 4, "ipv6_addr": 6}   # the key types this encoder knows


def element(family: int, key: str, verdict: str | None = None) -> bytes:
    """One ``NFTA_LIST_ELEM``: an address key and, for a verdict map, its goto/jump value."""
    addr = socket.inet_pton(socket.AF_INET if family == 4 else socket.AF_INET6, key)
    inner = nlattr(NFTA_SET_ELEM_KEY | NLA_F_NESTED, nlattr(NFTA_DATA_VALUE, addr))
    if verdict is not None:
        kind, _, chain = verdict.partition(" ")
        v = (nlattr(NFTA_VERDICT_CODE, struct.pack(">i", _VERDICTS[kind]))
             + nlattr(NFTA_VERDICT_CHAIN, chain.encode() + b"\0"))
        inner += nlattr(NFTA_SET_ELEM_DATA | NLA_F_NESTED, nlattr(NFTA_DATA_VERDICT | NLA_F_NESTED, v))
    return nlattr(NFTA_LIST_ELEM | NLA_F_NESTED, inner)
