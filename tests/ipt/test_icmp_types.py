"""ICMP type ranges that reach type 255 (issue 11).  iptables' icmp match reads type 255 as
"any type" (iptables-save prints ``any``), so IPv4 writes such ranges, and 255 alone, as one
u32 rule; ip6tables' icmp6 match compares 255 as a type.  Proved three ways: the rendering
through the model of the syntax (tests/ipt/sim.py, which reads 255 as the kernel does); each
encoding alone in a namespace, read back as written and passing exactly its types (real
packets seen by a raw socket behind INPUT, both variants); and a document applied by the
backend, where real ICMP packets of types 8, 13, 254 and 255 (IPv6: 128, 200, 254, 255) get
the evaluator's verdicts once conntrack is told not to track them (tracked, conntrack finds
all but 8, 13 and 128 invalid: dropped before any rule, SEMANTICS section 4), and what was
written reads back equal (a re-apply has no chain to rewrite)."""

from __future__ import annotations

import ipaddress
import secrets
import socket
import struct
import time

import pytest

from sgagent.compiler import compile_document
from sgagent.evaluator import Packet as EvPacket
from sgagent.evaluator import evaluate
from sgagent.ipt.backend import IptBackend
from sgagent.ipt.render import icmp_matches, render
from sgagent.ipt.rules import restore_script
from sgagent.load import parse_data
from sgagent.sandbox import Sandbox

from .conftest import run_in
from .sim import PROTO, Packet, run

VARIANTS = ["legacy", "nft"]
HOST = {4: "192.0.2.1", 6: "2001:db8:ffff::1"}
PEERS = {"drop-ping": ("198.51.100.8", "2001:db8:2::8"),   # every ICMP type but echo
         "ping-only": ("203.0.113.9", "2001:db8:3::9")}     # echo only
DOC = {
    "version": 1,
    "host": {"instance": "i-c", "account": "1", "network": "vpc",
             "nics": [{"name": "eth0", "role": "vpc", "security_groups": ["sg-a"]}]},
    "security_groups": {"sg-a": {"rules": [
        {"id": "no-ping", "direction": "inbound", "policy": "drop", "priority": 1,
         "service": "ping", "source": "198.51.100.0/24"},
        {"id": "icmp", "direction": "inbound", "protocol": "icmp", "source": "198.51.100.0/24"},
        {"id": "no-ping6", "direction": "inbound", "policy": "drop", "priority": 1,
         "service": "ping", "source": "2001:db8:2::/48"},
        {"id": "icmp6", "direction": "inbound", "protocol": "icmpv6",
         "source": "2001:db8:2::/48"},
        {"id": "ping", "direction": "inbound", "service": "ping", "source": "203.0.113.0/24"},
        {"id": "ping6", "direction": "inbound", "service": "ping",
         "source": "2001:db8:3::/48"},
    ]}},
}
TYPES = {4: (8, 13, 254, 255), 6: (128, 200, 254, 255)}


def oracle(doc, peer: str, icmp_type: int) -> str:
    addr = ipaddress.ip_address(peer)
    proto = "icmp" if addr.version == 4 else "icmpv6"
    return evaluate(doc, EvPacket("eth0", "inbound", addr, proto, None, icmp_type)).verdict


def test_encoding_names_type_255_alone():
    assert icmp_matches(4, 8, 8) == ["-m icmp --icmp-type 8"]
    assert icmp_matches(4, 255, 255) == \
        ['-m u32 --u32 "0x4&0x1fff=0x0&&0x0>>0x16&0x3c@0x0>>0x18=0xff"']
    assert icmp_matches(4, 9, 255) == \
        ['-m u32 --u32 "0x4&0x1fff=0x0&&0x0>>0x16&0x3c@0x0>>0x18=0x9:0xff"']
    assert icmp_matches(6, 254, 255) == ["-m icmp6 --icmpv6-type 254",
                                         "-m icmp6 --icmpv6-type 255"]


@pytest.mark.parametrize("rendering", ["sets", "linear"])
def test_rendering_gives_the_oracles_verdicts_for_every_type(rendering):
    doc = parse_data(DOC)
    t = render(compile_document(doc), rendering)
    v4 = [r for rules in t.chains[4].values() for r in rules]
    assert not any("--icmp-type 255" in r or "--icmp-type any" in r for r in v4)
    assert sum("-p icmp " in r for r in v4) < 10  # a range is one rule, not one per type
    for peers in PEERS.values():
        for peer in peers:
            family = ipaddress.ip_address(peer).version
            for icmp_type in range(256):
                p = Packet("eth0", None, peer, HOST[family], PROTO["icmp" if family == 4
                                                                   else "icmpv6"],
                           None, icmp_type)
                assert run(t, "INPUT", p)[0][0] == oracle(doc, peer, icmp_type), \
                    (rendering, peer, icmp_type)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def _icmp(family: int, icmp_type: int, tag: int) -> bytes:
    body = struct.pack("!BBHI", icmp_type, 0, 0, tag) + b"sgagent-icmp-type"
    if family == 6:  # the kernel fills in the ICMPv6 checksum of a raw socket
        return body
    return body[:2] + struct.pack("!H", _checksum(body)) + body[4:]


def _proto(family: int) -> int:
    return socket.IPPROTO_ICMP if family == 4 else socket.IPPROTO_ICMPV6


def _listener(family: int) -> socket.socket:
    """A raw socket in the calling namespace: it sees the ICMP packets INPUT let through."""
    s = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_RAW,
                      _proto(family))
    s.settimeout(0.2)
    return s


def _send(family: int, source: str, target: str, icmp_type: int, tag: int) -> None:
    s = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_RAW,
                      _proto(family))
    try:
        s.bind((source, 0))
        s.sendto(_icmp(family, icmp_type, tag), (target, 0))
    finally:
        s.close()


def _arrived(sock: socket.socket, family: int, tags: set[int]) -> set[int]:
    """The tags of the packets sent that reached the socket (a short wait for stragglers)."""
    seen: set[int] = set()
    end = time.monotonic() + 1.0
    while time.monotonic() < end and seen != tags:
        try:
            data = sock.recv(4096)
        except socket.timeout:
            continue
        icmp = data[(data[0] & 0xF) * 4:] if family == 4 else data
        if icmp[8:].startswith(b"sgagent-icmp-type"):
            seen.add(struct.unpack("!I", icmp[4:8])[0])
    return seen & tags


def _deliveries(sb: Sandbox, sends: list[tuple[str, int]]) -> dict[tuple[str, int], bool]:
    """Each (peer, type) sent once from eth0's peer namespace to the host: whether it
    passed the host's INPUT."""
    out = {}
    for family in (4, 6):
        batch = [(peer, t) for peer, t in sends if ipaddress.ip_address(peer).version == family]
        if not batch:
            continue
        sock = sb.call("host", _listener, family)
        try:
            target = sb.nic_address("eth0", family)
            tags = {}
            for peer, t in batch:
                tag = secrets.randbits(31) | 1
                tags[tag] = (peer, t)
                sb.add_peer("eth0", peer)
                sb.call("eth0", _send, family, peer, target, t, tag)
            seen = _arrived(sock, family, set(tags))
        finally:
            sock.close()
        out.update({tags[tag]: tag in seen for tag in tags})
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_encoding_matches_its_types_only_in_the_kernel(root, variant):
    """Each encoding alone in front of a DROP, in both families: a packet of a type it
    names passes, one of a type it does not name is dropped."""
    cases = {4: [(255, 255), (9, 255), (13, 13)], 6: [(255, 255), (254, 255)]}
    with Sandbox([("eth0", "vpc")], prefix=f"sgi{secrets.token_hex(3)}") as sb:
        for family, ranges in cases.items():
            peer = PEERS["drop-ping"][0 if family == 4 else 1]
            tool = f"ip{'6' if family == 6 else ''}tables-{variant}"
            l4 = "icmp" if family == 4 else "ipv6-icmp"
            for lo, hi in ranges:
                rules = [f"-A INPUT -p {l4} {m} -j ACCEPT" for m in icmp_matches(family, lo, hi)]
                if family == 6:  # neighbour discovery, or nothing reaches the host
                    rules = [f"-A INPUT -p ipv6-icmp -m icmp6 --icmpv6-type {t} -j ACCEPT"
                             for t in (135, 136)] + rules
                text = "*filter\n:INPUT ACCEPT [0:0]\n-F INPUT\n" + "\n".join(rules) + \
                    f"\n-A INPUT -p {l4} -j DROP\nCOMMIT\n"
                run_in(sb.host_ns, f"{tool}-restore", "--noflush", text=text)
                saved = run_in(sb.host_ns, f"{tool}-save", "-t", "filter")
                assert [r for r in saved.splitlines() if r.startswith("-A INPUT")] == \
                    rules + \
                    [f"-A INPUT -p {l4} -j DROP"]  # read back exactly as written
                sends = [(peer, t) for t in TYPES[family] + (0 if family == 4 else 129,)]
                got = _deliveries(sb, sends)
                want = {(peer, t): lo <= t <= hi for peer, t in sends}
                assert got == want, (variant, family, lo, hi)


@pytest.mark.parametrize("variant", VARIANTS)
def test_real_icmp_types_get_the_oracles_verdicts(root, variant):
    doc = parse_data(DOC)
    sends = [(peer, t) for peers in PEERS.values() for peer in peers
             for t in TYPES[ipaddress.ip_address(peer).version]]
    want = {(peer, t): oracle(doc, peer, t) == "accept" for peer, t in sends}
    assert set(want.values()) == {True, False}
    assert want[(PEERS["drop-ping"][0], 255)] and not want[(PEERS["ping-only"][0], 255)]
    with Sandbox([("eth0", "vpc")], prefix=f"sgi{secrets.token_hex(3)}") as sb:
        with IptBackend(sb.host_ns, variant=variant) as be:
            rs = compile_document(doc)
            be.apply(rs)
            # what was written reads back equal: no chain would be rewritten (the mark aside)
            tables = be.render(rs)
            for family in (4, 6):
                saved = be.kernel.save(family)
                assert restore_script(saved, tables.chains[family]) == "", family
            assert be.diff(rs) == ""
            text = be.kernel.save_text(4)
            assert "--icmp-type any" not in text and "@0x0>>0x18=0x9:0xff" in text
            # conntrack starts no connection with most types (v4: 8, 13, 15, 17 do; v6: 128
            # and the link-local ones do): the rest is invalid, dropped (SEMANTICS section 4)
            tracked = {(peer, t): ok and t in (8, 13, 128) for (peer, t), ok in want.items()}
            assert _deliveries(sb, sends) == tracked
            # untracked (a raw-table NOTRACK, as some hosts have), every type meets the rules
            for tool, l4 in (("iptables", "icmp"), ("ip6tables", "ipv6-icmp")):
                run_in(sb.host_ns, f"{tool}-{variant}", "-t", "raw", "-A", "PREROUTING",
                       "-p", l4, "-j", "CT", "--notrack")
            assert _deliveries(sb, sends) == want
