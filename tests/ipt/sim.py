"""A small model of iptables and ipset, for the part of their syntax the iptables renderer
writes: walk the chains for one new packet, as the kernel would, and say which counting rule
decided it.  It lets the renderer be checked against the evaluator without root; the kernel
tests check the same rendering with real packets."""

from __future__ import annotations

import ipaddress
import shlex
import socket

from sgagent.ipt.names import ROOTS, key_of, suppressed_key
from sgagent.ipt.render import Tables

PROTO = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58}


class Packet:
    def __init__(self, iif, oif, src, dst, proto, dport=None, icmp_type=None, sport=40000):
        self.iif, self.oif = iif, oif
        self.src, self.dst = ipaddress.ip_address(src), ipaddress.ip_address(dst)
        self.proto, self.dport, self.icmp_type, self.sport = proto, dport, icmp_type, sport


def _proto(tok: str) -> int:
    return int(tok) if tok.isdigit() else socket.getprotobyname(tok)


_INDEX: dict[int, tuple] = {}  # id(elements) -> (elements, index): sets are immutable


def _index(elements: tuple[str, ...]) -> dict[int, dict[int, bool]]:
    """prefix length -> network address -> whether it is a nomatch element."""
    hit = _INDEX.get(id(elements))
    if hit is not None and hit[0] is elements:
        return hit[1]
    out: dict[int, dict[int, bool]] = {}
    for e in elements:
        net, _, flag = e.partition(" ")
        n = ipaddress.ip_network(net)
        out.setdefault(n.prefixlen, {})[int(n.network_address)] = flag == "nomatch"
    _INDEX[id(elements)] = (elements, out)
    return out


def in_set(t: Tables, name: str, addr) -> bool:
    s = t.sets[name]
    if s.type == "hash:net,iface":  # addr: the interface; every element is a whole family
        return any(e.split(",", 1)[1] == addr for e in s.elements)
    if s.type == "hash:ip":
        return str(addr) in s.elements
    bits = addr.max_prefixlen  # longest prefix first; a nomatch element answers no
    for plen, nets in sorted(_index(s.elements).items(), reverse=True):
        key = int(addr) >> (bits - plen) << (bits - plen)
        if key in nets:
            return not nets[key]
    return False


def matches(t: Tables, tokens: list[str], p: Packet) -> tuple[bool, list[str]]:
    """Whether the rule's matches hold, and its target tokens."""
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok in ("-j", "-g"):
            return True, tokens[i:]
        arg = tokens[i + 1]
        if tok == "-p":
            if p.proto != _proto(arg):
                return False, []
        elif tok == "-m":
            if arg == "conntrack":  # a new, valid packet: neither state holds
                return False, []
            if arg == "set":
                name, where = tokens[i + 3], tokens[i + 4]
                what = {"src": p.src, "dst": p.dst, "src,src": p.iif, "dst,dst": p.oif}[where]
                if not in_set(t, name, what):
                    return False, []
                i += 5
                continue
            if arg == "comment":
                i += 4
                continue
            if arg == "limit":  # the packet is within the limit unless it says it is not
                if getattr(p, "over_limit", False):
                    return False, []
                i += 4 if tokens[i + 4:i + 5] != ["--limit-burst"] else 6
                continue
        elif tok == "--dport":
            lo, _, hi = arg.partition(":")
            if p.dport is None or not int(lo) <= p.dport <= int(hi or lo):
                return False, []
        elif tok == "--sport":
            if p.sport != int(arg):
                return False, []
        elif tok == "--icmp-type":  # the kernel's icmp match reads 255 as any type
            if arg not in ("any", "255") and p.icmp_type != int(arg):
                return False, []
        elif tok == "--icmpv6-type":  # icmp6 compares 255 as a type
            if p.icmp_type != int(arg):
                return False, []
        elif tok == "--u32":  # the one test sgagent writes: an ICMP type range (IPv4)
            head, _, value = arg.rpartition("=")
            assert head == "0x4&0x1fff=0x0&&0x0>>0x16&0x3c@0x0>>0x18", arg
            lo, _, hi = value.partition(":")
            if p.src.version != 4 or p.icmp_type is None or \
                    not int(lo, 16) <= p.icmp_type <= int(hi or lo, 16):
                return False, []
        elif tok == "-i":
            if p.iif != arg:
                return False, []
        elif tok == "-o":
            if p.oif != arg:
                return False, []
        elif tok in ("-s", "-d"):
            if (p.src if tok == "-s" else p.dst) not in ipaddress.ip_network(arg):
                return False, []
        else:
            raise AssertionError(f"the model does not know {tok!r}")
        i += 2
    raise AssertionError(f"rule without a target: {tokens}")


def run(t: Tables, hook: str, p: Packet) -> list[tuple[str, object]]:
    """The verdicts (accept at the end of the hook, drop, reject) with the counter key of the
    rule that decided (None where no counting rule did)."""
    family = p.src.version
    chains = t.chains[family]
    key = None
    events = p.events = []  # ("log", prefix) and ("suppressed", key), in order
    stack: list[tuple[str, int]] = []
    chain, i = ROOTS[hook], 0
    steps = 0
    while True:
        steps += 1
        assert steps < 10000, "loop"
        rules = chains[chain]
        if i >= len(rules):
            if not stack:
                return [("accept", key)]
            chain, i = stack.pop()
            continue
        tokens = shlex.split(rules[i])
        i += 1
        ok, target = matches(t, tokens, p)
        if not ok:
            continue
        if "--comment" in tokens:
            comment = tokens[tokens.index("--comment") + 1]
            if suppressed_key(comment) is not None:
                events.append(("suppressed", suppressed_key(comment)))
            else:
                key = key_of(comment)
        verb, what = target[0], target[1]
        if what == "NFLOG":  # reports, and evaluation goes on
            events.append(("log", target[target.index("--nflog-prefix") + 1]))
            continue
        if what == "RETURN":
            if not stack:
                return [("accept", key)]
            chain, i = stack.pop()
        elif what == "DROP":
            return [("drop", key)]
        elif what == "REJECT":
            return [("reject", key)]
        elif verb == "-j":
            stack.append((chain, i))
            chain, i = what, 0
        else:  # -g: a RETURN goes back to where the last -j came from
            chain, i = what, 0
