"""Sets and maps as nftables netlink messages, as ``nft`` itself sends them (nftables 1.0.6):
the declaration (``NFT_MSG_NEWSET``: flags, key and data types, user data) and the elements
(``NFT_MSG_NEWSETELEM``), for the named sets and maps the renderers declare and the anonymous
ones a rule carries inline (``{ 22, 80 }``, ``iifname vmap { "eth0" : jump in_eth0 }``).

Interval sets go in as nft sends them: per range a start element (with its value) and an end
element one past it (flagged ``NFT_SET_ELEM_INTERVAL_END``), an end element at zero first when
the first range does not start there, and an "open" start element for a range that reaches
the top of the key space.  Anonymous interval sets are merged first (nft's automerge).

Key types, their lengths and byte orders are nft's; a type not listed here is not encoded
(:class:`Unknown`), and the transaction goes through libnftables.
"""

from __future__ import annotations

import functools
import socket
import struct
from typing import Iterable, NamedTuple

from .netlink import nlattr

NLA_F_NESTED = 0x8000
NFT_SET_ANONYMOUS, NFT_SET_CONSTANT, NFT_SET_INTERVAL, NFT_SET_MAP = 1, 2, 4, 8
NFT_DATA_VERDICT = 0xFFFFFF00
NFTA_SET_TABLE, NFTA_SET_NAME, NFTA_SET_FLAGS, NFTA_SET_KEY_TYPE, NFTA_SET_KEY_LEN = 1, 2, 3, 4, 5
NFTA_SET_DATA_TYPE, NFTA_SET_DATA_LEN, NFTA_SET_DESC, NFTA_SET_ID, NFTA_SET_USERDATA = 6, 7, 9, 10, 13
NFTA_SET_DESC_SIZE = 1
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET = 1, 2
NFTA_SET_ELEM_LIST_ELEMENTS, NFTA_SET_ELEM_LIST_SET_ID = 3, 4
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_DATA, NFTA_SET_ELEM_FLAGS, NFTA_SET_ELEM_USERDATA = 1, 2, 3, 6
NFT_SET_ELEM_INTERVAL_END = 1
NFTA_DATA_VALUE, NFTA_DATA_VERDICT = 1, 2
NFTA_VERDICT_CODE, NFTA_VERDICT_CHAIN = 1, 2
VERDICT_CODES = {"accept": 1, "drop": 0, "return": -5, "jump": -3, "goto": -4}
# nft type -> (datatype id, key length, byte order as nft records it in the set's user data)
KEYS = {"ipv4_addr": (7, 4, 2), "ipv6_addr": (8, 16, 2), "inet_service": (13, 2, 2),
        "inet_proto": (12, 1, 0), "icmp_type": (14, 1, 2), "icmpv6_type": (29, 1, 2),
        "ifname": (41, 16, 1)}
# An element list's nested attribute holds at most 64 KiB: a larger set goes in several
# NEWSETELEM messages.
ELEMENTS_BYTES = 48 * 1024
_FAMILY = {"ipv4_addr": socket.AF_INET, "ipv6_addr": socket.AF_INET6}
_OPEN = bytes([1, 4]) + struct.pack("=I", 1)   # NFTNL_UDATA_SET_ELEM_FLAGS: interval open
_U32 = struct.Struct(">I")


class Unknown(ValueError):
    """A set type, key or value this encoder does not write (libnftables takes it)."""


def _z(text: str) -> bytes:
    return text.encode() + b"\0"


def _tlv(t: int, payload: bytes) -> bytes:
    return bytes([t, len(payload)]) + payload


def _host32(n: int) -> bytes:
    return struct.pack("=I", n)


@functools.lru_cache(maxsize=1 << 12)
def verdict_data(value: str) -> bytes:
    """A verdict (``accept``, ``goto CHAIN`` ...) as ``NFTA_DATA_VERDICT``."""
    kind, _, chain = value.partition(" ")
    if kind not in VERDICT_CODES or bool(chain) != (kind in ("jump", "goto")):
        raise Unknown(value)
    v = nlattr(NFTA_VERDICT_CODE, struct.pack(">i", VERDICT_CODES[kind]))
    if chain:
        v += nlattr(NFTA_VERDICT_CHAIN, _z(chain))
    return nlattr(NFTA_DATA_VERDICT | NLA_F_NESTED, v)


def _addr(text: str, family: int) -> int:
    try:
        raw = socket.inet_pton(socket.AF_INET if family == 4 else socket.AF_INET6, text)
    except OSError:
        raise Unknown(text) from None
    return int.from_bytes(raw, "big")


def key_range(typ: str, text: str) -> tuple[int, int]:
    """An element's key as the range of numbers it covers (an address, a prefix, ``a-b``)."""
    if typ in ("ipv4_addr", "ipv6_addr"):
        family, bits = (4, 32) if typ == "ipv4_addr" else (6, 128)
        addr, slash, plen = text.partition("/")
        if slash:
            if not plen.isdigit() or int(plen) > bits:
                raise Unknown(text)
            lo = _addr(addr, family)
            host = (1 << (bits - int(plen))) - 1
            if lo & host:
                raise Unknown(text)   # not a network address
            return lo, lo | host
        lo_t, dash, hi_t = text.partition("-")
        lo = _addr(lo_t, family)
        hi = _addr(hi_t, family) if dash else lo
        if lo > hi:
            raise Unknown(text)
        return lo, hi
    if typ in ("inet_service", "inet_proto", "icmp_type", "icmpv6_type"):
        lo_t, dash, hi_t = text.partition("-")
        if not lo_t.isdigit() or (dash and not hi_t.isdigit()):
            raise Unknown(text)
        lo, hi = int(lo_t), int(hi_t) if dash else int(lo_t)
        if not 0 <= lo <= hi < 1 << (8 * KEYS[typ][1]):
            raise Unknown(text)
        return lo, hi
    raise Unknown(typ)


def key_bytes(typ: str, n: int) -> bytes:
    return n.to_bytes(KEYS[typ][1], "big")


def ifname_key(text: str) -> bytes:
    if len(text) < 2 or text[0] != '"' or text[-1] != '"' or len(text) - 2 > 15:
        raise Unknown(text)
    return text[1:-1].encode().ljust(16, b"\0")


def _key(value: bytes) -> bytes:
    return nlattr(NFTA_SET_ELEM_KEY | NLA_F_NESTED, nlattr(NFTA_DATA_VALUE, value))


@functools.lru_cache(maxsize=1 << 12)
def _elem_data(value: str) -> bytes:
    return nlattr(NFTA_SET_ELEM_DATA | NLA_F_NESTED, verdict_data(value))


def element(key: bytes, value: str | None = None, *, end: bool = False,
            open_: bool = False) -> bytes:
    """One ``NFTA_LIST_ELEM`` in nft's attribute order."""
    if end:
        inner = nlattr(NFTA_SET_ELEM_FLAGS, _U32.pack(NFT_SET_ELEM_INTERVAL_END)) + _key(key)
    else:
        inner = _key(key)
        if value is not None:
            inner += _elem_data(value)
        if open_:
            inner += nlattr(NFTA_SET_ELEM_USERDATA, _OPEN)
    return nlattr(NFTA_LIST_ELEM | NLA_F_NESTED, inner)


def interval_elements(typ: str, ranges: Iterable[tuple[int, int, str | None]]) -> list[bytes]:
    """Ranges (sorted, not overlapping) as nft sends them to an interval set."""
    top = (1 << (8 * KEYS[typ][1])) - 1
    out = []
    for i, (lo, hi, value) in enumerate(ranges):
        if i == 0 and lo != 0:
            out.append(element(key_bytes(typ, 0), end=True))
        out.append(element(key_bytes(typ, lo), value, open_=hi == top))
        if hi != top:
            out.append(element(key_bytes(typ, hi + 1), end=True))
    return out


def merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping and adjacent ranges joined (nft's automerge of an anonymous set)."""
    out: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return [(a, b) for a, b in out]


def named_elements(typ: str, interval: bool, items: list[tuple[str, str | None]]) -> list[bytes]:
    """A declared set's or map's elements (``SetDef.items()``), in the order nft sends them."""
    if interval:
        ranges = []
        for k, v in items:
            lo, hi = key_range(typ, k)
            ranges.append((lo, hi, v))
        ranges.sort(key=lambda r: r[0])
        if any(a[1] >= b[0] for a, b in zip(ranges, ranges[1:])):
            raise Unknown("overlapping intervals")   # nft refuses them: let it say so
        return interval_elements(typ, ranges)
    if typ == "ifname":
        return [element(ifname_key(k), v) for k, v in items]
    if typ in _FAMILY:   # single addresses (a hash set or map): their bytes as they are
        family = _FAMILY[typ]
        try:
            return [element(socket.inet_pton(family, k), v) for k, v in items]
        except OSError:
            raise Unknown("not an address") from None
    out = []
    for k, v in items:
        lo, hi = key_range(typ, k)
        if lo != hi:
            raise Unknown(k)
        out.append(element(key_bytes(typ, lo), v))
    return out


class SetMessages(NamedTuple):
    declare: bytes                # the NEWSET body
    elements: list[bytes]         # NEWSETELEM bodies (none for an empty set)


def set_messages(table_attr: bytes, name: str, typ: str, *, set_id: int, is_map: bool,
                 interval: bool, elems: list[bytes], anon: bool = False,
                 typeof: bytes = b"", merge: bool = False,
                 order: int | None = None) -> SetMessages:
    if typ not in KEYS:
        raise Unknown(typ)
    dtype, klen, korder = KEYS[typ]
    flags = ((NFT_SET_ANONYMOUS | NFT_SET_CONSTANT if anon else 0)
             | (NFT_SET_INTERVAL if interval else 0) | (NFT_SET_MAP if is_map else 0))
    body = (table_attr + nlattr(NFTA_SET_NAME, _z(name)) + nlattr(NFTA_SET_FLAGS, _U32.pack(flags))
            + nlattr(NFTA_SET_KEY_TYPE, _U32.pack(dtype)) + nlattr(NFTA_SET_KEY_LEN, _U32.pack(klen)))
    if is_map:
        body += (nlattr(NFTA_SET_DATA_TYPE, _U32.pack(NFT_DATA_VERDICT))
                 + nlattr(NFTA_SET_DATA_LEN, _U32.pack(0)))
    body += nlattr(NFTA_SET_ID, _U32.pack(set_id))
    if anon:
        body += nlattr(NFTA_SET_DESC | NLA_F_NESTED, nlattr(NFTA_SET_DESC_SIZE, _U32.pack(len(elems))))
    udata = _tlv(0, _host32(korder if order is None else order))
    if merge:
        udata += _tlv(2, _host32(1))
    udata += typeof
    if is_map and not typeof:
        udata += _tlv(1, _host32(0)) + _tlv(6, _host32(0))
    body += nlattr(NFTA_SET_USERDATA, udata)
    head = table_attr + nlattr(NFTA_SET_ELEM_LIST_SET, _z(name)) + nlattr(
        NFTA_SET_ELEM_LIST_SET_ID, _U32.pack(set_id))
    chunks, cur, size = [], [], 0
    for e in elems:
        if cur and size + len(e) > ELEMENTS_BYTES:
            chunks.append(cur)
            cur, size = [], 0
        cur.append(e)
        size += len(e)
    if cur:
        chunks.append(cur)
    return SetMessages(body, [head + nlattr(NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, b"".join(c))
                              for c in chunks])
