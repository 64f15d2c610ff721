"""Rules of the shapes the set rendering writes into its class chains, as nftables netlink
expressions -- the very expressions ``nft`` generates for the same text, so that the kernel
lists them back as that text.

A rule is a few matches, an optional named counter and a verdict::

    [meta l4proto P] [tcp|udp dport N[-M]] [icmp|icmpv6 type N] [ip|ip6 saddr|daddr @SET]
    [counter name C] (return | drop | accept | goto CHAIN | jump CHAIN)
    tcp|udp dport vmap @MAP          ip|ip6 saddr|daddr vmap @MAP

:func:`encode_rule` returns None for any other text (anonymous sets, ``ct``, ``log``,
``reject``, ``limit``, interface names ...): those go through libnftables.
"""

from __future__ import annotations

import struct

from .netlink import nlattr

NLA_F_NESTED = 0x8000
NFTA_LIST_ELEM = 1
NFTA_EXPR_NAME = 1
NFTA_EXPR_DATA = 2
NFTA_DATA_VALUE = 1
NFTA_DATA_VERDICT = 2
NFTA_VERDICT_CODE = 1
NFTA_VERDICT_CHAIN = 2
REG_VERDICT, REG_1 = 0, 1
NFT_META_NFPROTO, NFT_META_L4PROTO = 15, 16
NFT_CMP_EQ, NFT_CMP_LTE, NFT_CMP_GTE = 0, 3, 5
NETWORK, TRANSPORT = 1, 2
NFT_OBJECT_COUNTER = 1
VERDICTS = {"accept": 1, "drop": 0, "return": -5, "jump": -3, "goto": -4}
NFPROTO = {4: 2, 6: 10}
L4 = {"tcp": 6, "udp": 17, "icmp": 1, "ipv6-icmp": 58}
ADDR = {("ip", "saddr"): (4, 12, 4), ("ip", "daddr"): (4, 16, 4),
        ("ip6", "saddr"): (6, 8, 16), ("ip6", "daddr"): (6, 24, 16)}
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")


def _u32(atype: int, value: int) -> bytes:
    return nlattr(atype, _U32.pack(value))


def _z(text: str) -> bytes:
    return text.encode() + b"\0"


def _expr(name: str, data: bytes) -> bytes:
    return nlattr(NFTA_LIST_ELEM | NLA_F_NESTED,
                  nlattr(NFTA_EXPR_NAME, _z(name)) + nlattr(NFTA_EXPR_DATA | NLA_F_NESTED, data))


def _meta(key: int) -> bytes:
    return _expr("meta", _u32(1, REG_1) + _u32(2, key))            # DREG, KEY


def _cmp(op: int, value: bytes) -> bytes:
    return _expr("cmp", _u32(1, REG_1) + _u32(2, op)                # SREG, OP
                 + nlattr(3 | NLA_F_NESTED, nlattr(NFTA_DATA_VALUE, value)))


def _payload(base: int, offset: int, length: int) -> bytes:
    return _expr("payload", _u32(1, REG_1) + _u32(2, base) + _u32(3, offset) + _u32(4, length))


def _lookup(set_name: str, verdict_map: bool) -> bytes:
    data = nlattr(1, _z(set_name)) + _u32(2, REG_1)                 # SET, SREG
    if verdict_map:
        data += _u32(3, REG_VERDICT)                                # DREG
    return _expr("lookup", data)


def _verdict(kind: str, chain: str | None = None) -> bytes:
    v = nlattr(NFTA_VERDICT_CODE, _I32.pack(VERDICTS[kind]))
    if chain is not None:
        v += nlattr(NFTA_VERDICT_CHAIN, _z(chain))
    return _expr("immediate", _u32(1, REG_VERDICT)
                 + nlattr(2 | NLA_F_NESTED, nlattr(NFTA_DATA_VERDICT | NLA_F_NESTED, v)))


def _objref(counter: str) -> bytes:
    return _expr("objref", _u32(1, NFT_OBJECT_COUNTER) + nlattr(2, _z(counter)))


def _values(text: str, width: int, top: int) -> tuple[int, int] | None:
    lo, dash, hi = text.partition("-")
    if not lo.isdigit() or (dash and not hi.isdigit()):
        return None
    a, b = int(lo), int(hi) if dash else int(lo)
    if not 0 <= a <= b <= top or (dash and a == b):
        return None
    return a, b


def _compare(text: str, width: int) -> bytes | None:
    """``N`` or ``N-M`` as nft compares it: eq, or gte and lte (big-endian values)."""
    r = _values(text, width, (1 << (8 * width)) - 1)
    if r is None:
        return None
    a, b = r
    if a == b:
        return _cmp(NFT_CMP_EQ, a.to_bytes(width, "big"))
    return _cmp(NFT_CMP_GTE, a.to_bytes(width, "big")) + _cmp(NFT_CMP_LTE, b.to_bytes(width, "big"))


def _l4(text: str) -> bytes | None:
    if text in L4:
        return _cmp(NFT_CMP_EQ, bytes([L4[text]]))
    return _compare(text, 1)


def encode_rule(text: str) -> bytes | None:
    """The rule's ``NFTA_RULE_EXPRESSIONS`` payload, or None if it is not of a known shape."""
    words = text.split()
    out: list[bytes] = []
    l4 = False   # a meta l4proto comparison is already in place
    i, n = 0, len(words)
    while i < n:
        w = words[i]
        rest = n - i
        if w == "meta" and rest >= 3 and words[i + 1] == "l4proto":
            part = _l4(words[i + 2])
            if part is None or l4:
                return None
            out += [_meta(NFT_META_L4PROTO), part]
            l4 = True
            i += 3
        elif w in ("tcp", "udp") and rest >= 3 and words[i + 1] == "dport":
            if l4:
                return None
            out += [_meta(NFT_META_L4PROTO), _cmp(NFT_CMP_EQ, bytes([L4[w]])),
                    _payload(TRANSPORT, 2, 2)]
            if words[i + 2] == "vmap":
                if rest != 4 or not words[i + 3].startswith("@"):
                    return None
                return b"".join(out) + _lookup(words[i + 3][1:], True)
            part = _compare(words[i + 2], 2)
            if part is None:
                return None
            out.append(part)
            l4 = True
            i += 3
        elif w in ("icmp", "icmpv6") and rest >= 3 and words[i + 1] == "type":
            family = 4 if w == "icmp" else 6
            part = _compare(words[i + 2], 1)
            if part is None or l4:
                return None
            out += [_meta(NFT_META_NFPROTO), _cmp(NFT_CMP_EQ, bytes([NFPROTO[family]])),
                    _meta(NFT_META_L4PROTO),
                    _cmp(NFT_CMP_EQ, bytes([L4["icmp" if family == 4 else "ipv6-icmp"]])),
                    _payload(TRANSPORT, 0, 1), part]
            l4 = True
            i += 3
        elif (w, words[i + 1] if rest > 1 else "") in ADDR and rest >= 3:
            family, offset, length = ADDR[(w, words[i + 1])]
            out += [_meta(NFT_META_NFPROTO), _cmp(NFT_CMP_EQ, bytes([NFPROTO[family]])),
                    _payload(NETWORK, offset, length)]
            if words[i + 2] == "vmap":
                if rest != 4 or not words[i + 3].startswith("@") or l4:
                    return None
                return b"".join(out) + _lookup(words[i + 3][1:], True)
            if not words[i + 2].startswith("@") or l4:
                return None   # nft would put the address match before the protocol's
            out.append(_lookup(words[i + 2][1:], False))
            i += 3
        elif w == "counter" and rest >= 3 and words[i + 1] == "name":
            out.append(_objref(words[i + 2]))
            i += 3
        elif w in ("return", "drop", "accept") and rest == 1:
            return b"".join(out) + _verdict(w)
        elif w in ("goto", "jump") and rest == 2:
            return b"".join(out) + _verdict(w, words[i + 1])
        else:
            return None
    return None   # no verdict: not a shape written here
