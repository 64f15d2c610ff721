"""Rules as nftables netlink expressions -- the very expressions ``nft`` (1.0.6) generates for
the same text, so that the kernel lists them back as that text.

The grammar is what the renderers write (:mod:`sgagent.nft.render`,
:mod:`sgagent.nft.setrender`): matches, then statements, then a verdict::

    ct state S[,S...]                 meta nfproto ipv4|ipv6
    meta l4proto P|N-M|{ ... }|vmap @MAP
    ip|ip6 saddr|daddr ADDR|NET/LEN|{ ... }|@SET|vmap @MAP
    tcp|udp sport|dport N|N-M|{ ... }|vmap @MAP
    icmp|icmpv6 type N|N-M|{ ... }|vmap @MAP
    iifname|oifname vmap { "IF" : jump CHAIN, ... }
    counter name C      limit rate over R/UNIT burst B packets
    log group G snaplen S prefix "P"      reject with tcp reset|icmpx admin-prohibited
    return | drop | accept | goto CHAIN | jump CHAIN

with nft's own rewriting: the protocol dependencies it adds (``meta nfproto``, ``meta
l4proto``) once per rule, a prefix on byte boundaries compared on its bytes alone, adjacent
header fields compared as one (``udp sport 67 udp dport 68``), one-element sets as a plain
comparison.  :func:`encode` returns None for any other text: the transaction then goes
through libnftables.
"""

from __future__ import annotations

import functools
import re
import struct
from typing import Callable, NamedTuple

from .netlink import nlattr
from .setdefs import (KEYS, Unknown, element, ifname_key, interval_elements, key_bytes,
                      key_range, merged, verdict_data)

NLA_F_NESTED = 0x8000
NFTA_LIST_ELEM = 1
NFTA_EXPR_NAME = 1
NFTA_EXPR_DATA = 2
NFTA_DATA_VALUE = 1
REG_VERDICT, REG_1 = 0, 1
NFT_META_IIFNAME, NFT_META_OIFNAME = 6, 7
NFT_META_NFPROTO, NFT_META_L4PROTO = 15, 16
NFT_CT_STATE = 0
NFT_CMP_EQ, NFT_CMP_NEQ, NFT_CMP_LTE, NFT_CMP_GTE = 0, 1, 3, 5
NETWORK, TRANSPORT = 1, 2
NFT_OBJECT_COUNTER = 1
NFPROTO = {"ipv4": 2, "ipv6": 10}
L4 = {"tcp": 6, "udp": 17, "icmp": 1, "ipv6-icmp": 58, "gre": 47}
CT_STATES = {"invalid": 1, "established": 2, "related": 4, "new": 8, "untracked": 64}
# (protocol, field) -> (family or None, payload base, offset, length, set key type)
FIELDS = {("ip", "saddr"): ("ipv4", NETWORK, 12, 4, "ipv4_addr"),
          ("ip", "daddr"): ("ipv4", NETWORK, 16, 4, "ipv4_addr"),
          ("ip6", "saddr"): ("ipv6", NETWORK, 8, 16, "ipv6_addr"),
          ("ip6", "daddr"): ("ipv6", NETWORK, 24, 16, "ipv6_addr"),
          ("tcp", "sport"): (None, TRANSPORT, 0, 2, "inet_service"),
          ("tcp", "dport"): (None, TRANSPORT, 2, 2, "inet_service"),
          ("udp", "sport"): (None, TRANSPORT, 0, 2, "inet_service"),
          ("udp", "dport"): (None, TRANSPORT, 2, 2, "inet_service"),
          ("icmp", "type"): ("ipv4", TRANSPORT, 0, 1, "icmp_type"),
          ("icmpv6", "type"): ("ipv6", TRANSPORT, 0, 1, "icmpv6_type")}
L4_OF = {"tcp": "tcp", "udp": "udp", "icmp": "icmp", "icmpv6": "ipv6-icmp"}
# What nft records of an anonymous set's key expression (NFTNL_UDATA_SET_KEY_TYPEOF), after
# the key's byte order (and, for an interval set, the merge flag).
_TYPEOF = "0314000407000000010c0004{0:02x}0000000104{1:02x}000000"
TYPEOF = {("ip", "saddr"): _TYPEOF.format(0x0c, 0x0b), ("ip", "daddr"): _TYPEOF.format(0x0c, 0x0c),
          ("ip6", "saddr"): _TYPEOF.format(0x0d, 0x08), ("ip6", "daddr"): _TYPEOF.format(0x0d, 0x09),
          ("tcp", "sport"): _TYPEOF.format(0x08, 0x01), ("tcp", "dport"): _TYPEOF.format(0x08, 0x02),
          ("udp", "sport"): _TYPEOF.format(0x06, 0x01), ("udp", "dport"): _TYPEOF.format(0x06, 0x02),
          ("icmp", "type"): _TYPEOF.format(0x04, 0x01),
          ("icmpv6", "type"): _TYPEOF.format(0x0e, 0x01),
          ("meta", "l4proto"): "030e0004090000000106000410000000"}
# An interface-name verdict map's user data after its byte order (nft's, verbatim).
IFNAME_MAP_UDATA = bytes.fromhex("01040000000004080004010000000100060400000000")
LIMIT_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
REJECT = {("tcp", "reset"): (1, 0), ("icmpx", "admin-prohibited"): (2, 3)}
_TOKENS = re.compile(r'"[^"]*"|[{},]|[^\s{},"]+')
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
VERDICTS = ("return", "drop", "accept")


class Anon(NamedTuple):
    """An anonymous set or map a rule declares inline, to go in the batch before the rule."""
    prefix: str        # "__set%d" or "__map%d"
    typ: str           # key type
    is_map: bool
    interval: bool
    elements: list[bytes]
    typeof: bytes      # user data after the byte order (and merge flag)
    order: int         # the key's byte order as nft records it


# (anonymous set) -> (name, set id) it was declared with in the batch
Declare = Callable[[Anon], tuple[str, int]]


def _u32(atype: int, value: int) -> bytes:
    return nlattr(atype, _U32.pack(value))


def _z(text: str) -> bytes:
    return text.encode() + b"\0"


def _expr(name: str, data: bytes) -> bytes:
    return nlattr(NFTA_LIST_ELEM | NLA_F_NESTED,
                  nlattr(NFTA_EXPR_NAME, _z(name)) + nlattr(NFTA_EXPR_DATA | NLA_F_NESTED, data))


@functools.lru_cache(maxsize=1 << 12)
def _meta(key: int) -> bytes:
    return _expr("meta", _u32(2, key) + _u32(1, REG_1))             # KEY, DREG


@functools.lru_cache(maxsize=1 << 12)
def _cmp(op: int, value: bytes) -> bytes:
    return _expr("cmp", _u32(1, REG_1) + _u32(2, op)                # SREG, OP
                 + nlattr(3 | NLA_F_NESTED, nlattr(NFTA_DATA_VALUE, value)))


@functools.lru_cache(maxsize=1 << 12)
def _payload(base: int, offset: int, length: int) -> bytes:
    return _expr("payload", _u32(1, REG_1) + _u32(2, base) + _u32(3, offset) + _u32(4, length))


@functools.lru_cache(maxsize=1 << 12)
def _bitwise(mask: bytes) -> bytes:
    return _expr("bitwise", _u32(1, REG_1) + _u32(2, REG_1) + _u32(3, len(mask))
                 + nlattr(4 | NLA_F_NESTED, nlattr(NFTA_DATA_VALUE, mask))
                 + nlattr(5 | NLA_F_NESTED, nlattr(NFTA_DATA_VALUE, bytes(len(mask)))))


@functools.lru_cache(maxsize=1 << 12)
def _lookup(set_name: str, set_id: int | None, verdict_map: bool) -> bytes:
    data = _u32(2, REG_1)                                           # SREG
    if verdict_map:
        data += _u32(3, REG_VERDICT)                                # DREG
    data += nlattr(1, _z(set_name))                                 # SET
    if set_id is not None:
        data += _u32(4, set_id)                                     # SET_ID
    return _expr("lookup", data)


@functools.lru_cache(maxsize=1 << 12)
def _verdict(kind: str, chain: str | None = None) -> bytes:
    value = kind if chain is None else f"{kind} {chain}"
    return _expr("immediate", _u32(1, REG_VERDICT) + nlattr(2 | NLA_F_NESTED, verdict_data(value)))


def _objref(counter: str) -> bytes:
    return _expr("objref", _u32(1, NFT_OBJECT_COUNTER) + nlattr(2, counter.encode()))


@functools.lru_cache(maxsize=1 << 12)
def _compare(lo: int, hi: int, width: int) -> bytes:
    """``N`` or ``N-M`` as nft compares it: eq, or gte and lte (big-endian values)."""
    if lo == hi:
        return _cmp(NFT_CMP_EQ, lo.to_bytes(width, "big"))
    return (_cmp(NFT_CMP_GTE, lo.to_bytes(width, "big"))
            + _cmp(NFT_CMP_LTE, hi.to_bytes(width, "big")))


class _Rule:
    """The parse of one rule's tokens into expressions."""

    def __init__(self, tokens: list[str], declare: Declare | None,
                 set_ids: dict[str, int] | None) -> None:
        self.t = tokens
        self.i = 0
        self.declare = declare
        self.set_ids = set_ids or {}
        self.out: list[bytes] = []
        self.nfproto: str | None = None   # what the rule has established so far
        self.l4: str | None = None
        self.merge: tuple[int, int, bytes] | None = None   # the last payload eq, mergeable
        self.decided = False   # a verdict map was looked up: nothing may follow

    # -- tokens ------------------------------------------------------------------------
    def peek(self, k: int = 0) -> str | None:
        j = self.i + k
        return self.t[j] if j < len(self.t) else None

    def take(self) -> str:
        if self.i >= len(self.t):
            raise Unknown("end of rule")
        self.i += 1
        return self.t[self.i - 1]

    def braces(self) -> list[str]:
        """The items of ``{ a, b : c, ... }`` (the opening brace taken already)."""
        items, cur = [], []
        while True:
            w = self.take()
            if w == "}":
                if cur:
                    items.append(" ".join(cur))
                return items
            if w == ",":
                if not cur:
                    raise Unknown("empty item")
                items.append(" ".join(cur))
                cur = []
            else:
                cur.append(w)

    # -- output ------------------------------------------------------------------------
    def emit(self, *parts: bytes) -> None:
        self.merge = None
        self.out.extend(parts)

    def emit_payload_eq(self, base: int, offset: int, value: bytes) -> None:
        """A payload compared for equality: joined with the one just before when it
        continues it (nft loads adjacent fields at once)."""
        m = self.merge
        if m is not None and m[0] == base and m[1] + len(m[2]) == offset and \
                len(m[2]) + len(value) <= 16:
            self.out[-2:] = []
            offset, value = m[1], m[2] + value
        self.out += [_payload(base, offset, len(value)), _cmp(NFT_CMP_EQ, value)]
        self.merge = (base, offset, value)

    def need_nfproto(self, family: str) -> None:
        if self.nfproto is None:
            self.emit(_meta(NFT_META_NFPROTO), _cmp(NFT_CMP_EQ, bytes([NFPROTO[family]])))
            self.nfproto = family
        elif self.nfproto != family:
            raise Unknown("two families")

    def need_l4(self, proto: str) -> None:
        if self.l4 is None:
            self.emit(_meta(NFT_META_L4PROTO), _cmp(NFT_CMP_EQ, bytes([L4[proto]])))
            self.l4 = proto
        elif self.l4 != proto:
            raise Unknown("two protocols")

    def lookup(self, name: str, verdict_map: bool) -> bytes:
        return _lookup(name, self.set_ids.get(name), verdict_map)

    def anon(self, anon: Anon, verdict_map: bool) -> bytes:
        if self.declare is None:
            raise Unknown("anonymous set")
        name, set_id = self.declare(anon)
        return _lookup(name, set_id, verdict_map)

    # -- the grammar -------------------------------------------------------------------
    def parse(self) -> bytes:
        while self.i < len(self.t):
            if self.decided:
                raise Unknown("words after a verdict map")
            w = self.take()
            if w in VERDICTS:
                self.emit(_verdict(w))
                return self.end()
            if w in ("goto", "jump"):
                self.emit(_verdict(w, self.take()))
                return self.end()
            if w == "meta":
                self.meta(self.take())
            elif w == "ct":
                self.ct()
            elif (w, self.peek()) in FIELDS:
                self.field(w, self.take())
            elif w in ("iifname", "oifname"):
                self.ifname_vmap(w)
                return self.end()
            elif w == "counter":
                if self.take() != "name":
                    raise Unknown("counter")
                self.emit(_objref(self.take()))
            elif w == "limit":
                self.limit()
            elif w == "log":
                self.log()
            elif w == "reject":
                self.reject()
                return self.end()
            else:
                raise Unknown(w)
        if not self.out:
            raise Unknown("an empty rule")
        return b"".join(self.out)   # a verdict map decides, or no verdict (an audit's log)

    def end(self) -> bytes:
        if self.i != len(self.t):
            raise Unknown("words after the verdict")
        return b"".join(self.out)

    def meta(self, key: str) -> None:
        if key == "nfproto":
            family = self.take()
            if family not in NFPROTO or self.nfproto is not None:
                raise Unknown(family)
            self.emit(_meta(NFT_META_NFPROTO), _cmp(NFT_CMP_EQ, bytes([NFPROTO[family]])))
            self.nfproto = family
            return
        if key != "l4proto" or self.l4 is not None:
            raise Unknown(key)
        w = self.take()
        if w in L4:
            self.emit(_meta(NFT_META_L4PROTO), _cmp(NFT_CMP_EQ, bytes([L4[w]])))
            self.l4 = w
            return
        if w == "vmap":
            self.emit(_meta(NFT_META_L4PROTO), self.named(True))
            self.l4 = "?"
            return
        if w == "{":
            keys = [key_range("inet_proto", k) if k not in L4 else (L4[k], L4[k])
                    for k in self.braces()]
            self.emit(_meta(NFT_META_L4PROTO),
                      self.anon_set(("meta", "l4proto"), "inet_proto", keys, order=1))
            self.l4 = "?"
            return
        lo, hi = key_range("inet_proto", w)
        self.emit(_meta(NFT_META_L4PROTO), _compare(lo, hi, 1))
        self.l4 = str(lo) if lo == hi else "?"

    def ct(self) -> None:
        if self.take() != "state":
            raise Unknown("ct")
        mask = 0
        while True:
            s = self.take()
            if s not in CT_STATES:
                raise Unknown(s)
            mask |= CT_STATES[s]
            if self.peek() != ",":
                break
            self.take()
        self.emit(_expr("ct", _u32(2, NFT_CT_STATE) + _u32(1, REG_1)),
                  _bitwise(struct.pack("=I", mask)), _cmp(NFT_CMP_NEQ, bytes(4)))

    def named(self, verdict_map: bool) -> bytes:
        self.decided = verdict_map
        ref = self.take()
        if not ref.startswith("@") or len(ref) < 2:
            raise Unknown(ref)
        return self.lookup(ref[1:], verdict_map)

    def field(self, proto: str, name: str) -> None:
        family, base, offset, length, typ = FIELDS[(proto, name)]
        if family is not None:
            self.need_nfproto(family)
        if proto in L4_OF:
            self.need_l4(L4_OF[proto])
        w = self.take()
        load = _payload(base, offset, length)
        if w == "vmap":
            self.emit(load, self.named(True))
        elif w.startswith("@"):
            self.emit(load, self.lookup(w[1:], False))
        elif w == "{":
            items = self.braces()
            keys = [key_range(typ, k) for k in items]
            if len(keys) == 1:
                self.value(base, offset, length, typ, *keys[0])
            else:   # written as prefixes or ranges: an interval set, even of single values
                ranged = any("/" in k or "-" in k for k in items)
                self.emit(load, self.anon_set((proto, name), typ, keys, ranged=ranged))
        else:
            self.value(base, offset, length, typ, *key_range(typ, w))

    def value(self, base: int, offset: int, length: int, typ: str, lo: int, hi: int) -> None:
        if typ in ("ipv4_addr", "ipv6_addr"):
            size = hi - lo + 1
            if size & (size - 1) or lo % size:
                raise Unknown("an address range outside a set")
            bits = 8 * length - (size.bit_length() - 1)
            if bits % 8 == 0:   # on byte boundaries: compare those bytes alone
                n = bits // 8
                if n == 0:
                    raise Unknown("/0")
                self.emit_payload_eq(base, offset, lo.to_bytes(length, "big")[:n])
                return
            mask = ((1 << bits) - 1) << (8 * length - bits)
            self.emit(_payload(base, offset, length), _bitwise(mask.to_bytes(length, "big")),
                      _cmp(NFT_CMP_EQ, lo.to_bytes(length, "big")))
            return
        if lo == hi:
            self.emit_payload_eq(base, offset, lo.to_bytes(length, "big"))
        else:
            self.emit(_payload(base, offset, length), _compare(lo, hi, length))

    def anon_set(self, sel: tuple[str, str], typ: str, keys: list[tuple[int, int]],
                 order: int | None = None, ranged: bool = False) -> bytes:
        interval = ranged or any(lo != hi for lo, hi in keys)
        if interval:
            elems = interval_elements(typ, [(lo, hi, None) for lo, hi in merged(keys)])
        else:
            elems = [element(key_bytes(typ, lo)) for lo, _ in keys]
        typeof = bytes.fromhex(TYPEOF[sel])
        if interval:
            typeof = bytes([2, 4]) + struct.pack("=I", 1) + typeof
        return self.anon(Anon("__set%d", typ, False, interval, elems, typeof,
                              KEYS[typ][2] if order is None else order), False)

    def ifname_vmap(self, w: str) -> None:
        if self.take() != "vmap" or self.take() != "{":
            raise Unknown("interface match")
        elems = []
        for item in self.braces():
            name, colon, value = item.partition(" : ")
            if not colon:
                raise Unknown(item)
            elems.append(element(ifname_key(name), value))
        lookup = self.anon(Anon("__map%d", "ifname", True, False, elems, IFNAME_MAP_UDATA, 1),
                           True)
        self.emit(_meta(NFT_META_IIFNAME if w == "iifname" else NFT_META_OIFNAME), lookup)

    def limit(self) -> None:
        if [self.take(), self.take()] != ["rate", "over"]:
            raise Unknown("limit")
        rate, _, unit = self.take().partition("/")
        if not rate.isdigit() or unit not in LIMIT_UNITS or self.take() != "burst":
            raise Unknown("limit")
        burst = self.take()
        if not burst.isdigit() or self.take() != "packets":
            raise Unknown("limit")
        self.emit(_expr("limit", nlattr(1, _U64.pack(int(rate)))
                        + nlattr(2, _U64.pack(LIMIT_UNITS[unit])) + _u32(3, int(burst))
                        + _u32(4, 0) + _u32(5, 1)))

    def log(self) -> None:
        group = snaplen = prefix = None
        while self.peek() in ("group", "snaplen", "prefix"):
            what, value = self.take(), self.take()
            if what == "prefix":
                if len(value) < 2 or value[0] != '"' or value[-1] != '"':
                    raise Unknown(value)
                prefix = value[1:-1]
            elif value.isdigit():
                if what == "group":
                    group = int(value)
                else:
                    snaplen = int(value)
            else:
                raise Unknown(value)
        if group is None or snaplen is None or prefix is None or group > 0xFFFF:
            raise Unknown("log")
        self.emit(_expr("log", nlattr(2, _z(prefix)) + nlattr(1, struct.pack(">H", group))
                        + _u32(3, snaplen)))

    def reject(self) -> None:
        if self.take() != "with":
            raise Unknown("reject")
        kind = (self.take(), self.take())
        if kind not in REJECT or (kind[0] == "tcp" and self.l4 != "tcp"):
            raise Unknown("reject")
        rtype, code = REJECT[kind]
        self.emit(_expr("reject", _u32(1, rtype) + nlattr(2, bytes([code]))))


def encode(text: str, declare: Declare | None = None,
           set_ids: dict[str, int] | None = None) -> bytes | None:
    """The rule's ``NFTA_RULE_EXPRESSIONS`` payload, or None if it is not of a known shape.
    ``declare`` puts an anonymous set the rule needs into the batch (None: such a rule is not
    encoded); ``set_ids``: the ids of the sets declared earlier in the same batch."""
    head, sep, tail = text.partition(" counter name ")
    try:
        if sep and "@" not in head and "{" not in head:
            # the matches before a named counter repeat across rules (tcp dport 80 ...):
            # encoded once, the counter and verdict after them each time
            done = _matches(head)
            if done is None:
                return None
            words = tail.split(" ")
            if len(words) == 2 and words[1] in VERDICTS:       # counter name C return
                return done[0] + _objref(words[0]) + _verdict(words[1])
            if len(words) == 3 and words[1] in ("goto", "jump") and words[2]:
                return done[0] + _objref(words[0]) + _verdict(words[1], words[2])
            rule = _Rule(_TOKENS.findall("counter name " + tail), declare, set_ids)
            rule.out, rule.nfproto, rule.l4 = [done[0]], done[1], done[2]
            return rule.parse()
        return _Rule(_TOKENS.findall(text), declare, set_ids).parse()
    except (Unknown, ValueError, OverflowError, struct.error):
        return None


@functools.lru_cache(maxsize=1 << 12)
def _matches(text: str) -> tuple[bytes, str | None, str | None] | None:
    """Matches without set lookups, and what they establish (family, protocol)."""
    try:
        rule = _Rule(_TOKENS.findall(text), None, None)
        out = rule.parse()
    except (Unknown, ValueError, OverflowError, struct.error):
        return None
    if rule.decided:
        return None
    return out, rule.nfproto, rule.l4


def encode_rule(text: str) -> bytes | None:
    """:func:`encode` of a rule that declares no anonymous set."""
    return encode(text)

