"""The netlink rule encoder (sgagent.nft.exprs) without a kernel: each shape becomes the
expressions ``nft --debug=netlink`` shows for the same text (nftables 1.0.6), in that order and
with those values; anything else is left to libnftables.  tests/kernel/test_netlink_batch.py
holds the kernel's listing of what it encodes equal to libnftables' load of the text."""

from __future__ import annotations

import struct

import pytest

from sgagent.nft.exprs import encode_rule


def attrs(buf: bytes):
    off = 0
    while off + 4 <= len(buf):
        length, atype = struct.unpack_from("=HH", buf, off)
        yield atype & 0x3FFF, buf[off + 4:off + length]
        off += (length + 3) & ~3


def string(value: bytes) -> str:
    return value.rstrip(b"\0").decode()


def decoded(text: str) -> list[str]:
    """The expressions as nft --debug=netlink writes them (only what these shapes use)."""
    out = []
    for _, elem in attrs(encode_rule(text)):
        fields = dict(attrs(elem))
        name = fields[1].rstrip(b"\0").decode()
        data = dict(attrs(fields[2]))
        u32 = {k: struct.unpack(">I", v)[0] for k, v in data.items() if len(v) == 4}
        if name == "meta":
            out.append(f"meta load {({15: 'nfproto', 16: 'l4proto'})[u32[2]]} => reg {u32[1]}")
        elif name == "cmp":
            op = {0: "eq", 3: "lte", 5: "gte"}[u32[2]]
            value = dict(attrs(data[3]))[1]
            out.append(f"cmp {op} reg {u32[1]} 0x{int.from_bytes(value, 'little'):08x}")
        elif name == "payload":
            base = {1: "network", 2: "transport"}[u32[2]]
            out.append(f"payload load {u32[4]}b @ {base} header + {u32[3]} => reg {u32[1]}")
        elif name == "lookup":
            s = data[1].rstrip(b"\0").decode()
            out.append(f"lookup reg {u32[2]} set {s}" + (" dreg 0" if 3 in data else ""))
        elif name == "objref":
            out.append(f"objref type {u32[1]} name {string(data[2])}")
        elif name == "immediate":
            v = dict(attrs(dict(attrs(data[2]))[2]))
            code = struct.unpack(">i", v[1])[0]
            verdict = {1: "accept", 0: "drop", -5: "return", -3: "jump", -4: "goto"}[code]
            chain = f" -> {string(v[2])}" if 2 in v else ""
            out.append(f"immediate reg 0 {verdict}{chain}")
    return out


# as printed by nft --debug=netlink -f for the same rules (nftables 1.0.6)
SHAPES = {
    "tcp dport 80-443 counter name c1 drop": [
        "meta load l4proto => reg 1", "cmp eq reg 1 0x00000006",
        "payload load 2b @ transport header + 2 => reg 1", "cmp gte reg 1 0x00005000",
        "cmp lte reg 1 0x0000bb01", "objref type 1 name c1", "immediate reg 0 drop"],
    "udp dport 53 counter name c1 return": [
        "meta load l4proto => reg 1", "cmp eq reg 1 0x00000011",
        "payload load 2b @ transport header + 2 => reg 1", "cmp eq reg 1 0x00003500",
        "objref type 1 name c1", "immediate reg 0 return"],
    "meta l4proto 1-17 counter name c1 return": [
        "meta load l4proto => reg 1", "cmp gte reg 1 0x00000001", "cmp lte reg 1 0x00000011",
        "objref type 1 name c1", "immediate reg 0 return"],
    "meta l4proto ipv6-icmp counter name c1 return": [
        "meta load l4proto => reg 1", "cmp eq reg 1 0x0000003a", "objref type 1 name c1",
        "immediate reg 0 return"],
    "icmp type 8 counter name c1 return": [
        "meta load nfproto => reg 1", "cmp eq reg 1 0x00000002", "meta load l4proto => reg 1",
        "cmp eq reg 1 0x00000001", "payload load 1b @ transport header + 0 => reg 1",
        "cmp eq reg 1 0x00000008", "objref type 1 name c1", "immediate reg 0 return"],
    "ip6 daddr @s6 goto k2": [
        "meta load nfproto => reg 1", "cmp eq reg 1 0x0000000a",
        "payload load 16b @ network header + 24 => reg 1", "lookup reg 1 set s6",
        "immediate reg 0 goto -> k2"],
    "ip saddr vmap @h4": [
        "meta load nfproto => reg 1", "cmp eq reg 1 0x00000002",
        "payload load 4b @ network header + 12 => reg 1", "lookup reg 1 set h4 dreg 0"],
    "tcp dport vmap @m1": [
        "meta load l4proto => reg 1", "cmp eq reg 1 0x00000006",
        "payload load 2b @ transport header + 2 => reg 1", "lookup reg 1 set m1 dreg 0"],
    "counter name c1 jump l1": ["objref type 1 name c1", "immediate reg 0 jump -> l1"],
    "goto k2": ["immediate reg 0 goto -> k2"],
}


@pytest.mark.parametrize("text", list(SHAPES))
def test_each_shape_is_what_nft_generates(text):
    assert decoded(text) == SHAPES[text]


@pytest.mark.parametrize("text", [
    "tcp dport 70000 return", "return drop", "tcp dport vmap @m1 return",
    "log group 1 prefix \"x\" return", "ct state bogus return", "ip saddr 10.0.0.0/33 return",
    "ip saddr 10.0.0.1/8 return", "quota 10 mbytes return", "ip6 saddr 10.0.0.1 return",
    "udp dport 53 reject with tcp reset", ""])
def test_other_text_is_left_to_libnftables(text):
    assert encode_rule(text) is None


@pytest.mark.parametrize("text", ["tcp dport { 80, 443 } return",
                                  "iifname vmap { \"eth0\" : jump in_eth0 }"])
def test_a_rule_with_an_anonymous_set_needs_a_batch_to_declare_it(text):
    assert encode_rule(text) is None
