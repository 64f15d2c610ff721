"""Render the IR as an nftables ruleset in nft's own syntax (the linear form: one nft rule per
match of each decision, in decision order).

The text is a ``table inet sgagent { ... }`` block, exactly what ``sgagent compile`` prints and
what ``apply`` loads after flushing the table's rules in the same transaction.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ..ir import Chain, CounterKey, Decision, Match, Ruleset
from .names import FAMILY, TABLE, chain_name, counter_comment, counter_name, set_name

ND_TYPES = "nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, nd-redirect"
_L4 = {"tcp": "tcp", "udp": "udp", "icmp": "icmp", "icmpv6": "ipv6-icmp", "gre": "gre"}
_VERB = {"inbound": ("iifname", "saddr"), "outbound": ("oifname", "daddr")}


@dataclass(frozen=True)
class Rendered:
    text: str
    chains: frozenset[str]
    sets: frozenset[str]
    counters: frozenset[str]


def render(rs: Ruleset) -> Rendered:
    lines = [f"table {FAMILY} {TABLE} {{"]
    counters: list[CounterKey] = []
    for chain in rs.chains:
        counters.extend(chain.counters)
    for key in counters:
        lines.append(f"\tcounter {counter_name(key)} {{ comment {_q(counter_comment(key))}; }}")
    sets = []
    for g in rs.groups:
        for family, members, typ in ((4, g.v4, "ipv4_addr"), (6, g.v6, "ipv6_addr")):
            name = set_name(g.name, family)
            sets.append(name)
            elements = f" elements = {{ {', '.join(map(str, members))} }};" if members else ""
            lines.append(f"\tset {name} {{ type {typ};{elements} }}")
    chains = []
    for chain in rs.chains:
        name = chain_name(chain.nic, chain.direction)
        chains.append(name)
        lines.append(f"\tchain {name} {{")
        lines.extend(f"\t\t{r}" for r in chain_rules(chain))
        lines.append("\t}")
    lines.extend(base_chains(rs))
    lines.append("}")
    return Rendered("\n".join(lines) + "\n", frozenset(chains + ["input", "forward", "output"]),
                    frozenset(sets), frozenset(counter_name(k) for k in counters))


def base_chains(rs: Ruleset) -> list[str]:
    def vmap(direction: str) -> str:
        verb = _VERB[direction][0]
        items = ", ".join(f'"{c.nic}" : jump {chain_name(c.nic, c.direction)}'
                          for c in rs.chains if c.direction == direction)
        return f"{verb} vmap {{ {items} }}" if items else ""

    out = []
    for hook, dirs in (("input", ["inbound"]), ("forward", ["inbound", "outbound"]),
                       ("output", ["outbound"])):
        out.append(f"\tchain {hook} {{")
        out.append(f"\t\ttype filter hook {hook} priority filter; policy accept;")
        out.extend(f"\t\t{v}" for v in (vmap(d) for d in dirs) if v)
        out.append("\t}")
    return out


def preamble(direction: str) -> list[str]:
    """State and the always-allowed traffic of SEMANTICS sections 4 and 5."""
    if direction == "inbound":
        dhcp = ["udp sport 67 udp dport 68 return", "udp sport 547 udp dport 546 return"]
    else:
        dhcp = ["udp sport 68 udp dport 67 return", "udp sport 546 udp dport 547 return"]
    return [
        "ct state established,related return",
        *dhcp,
        f"icmpv6 type {{ {ND_TYPES} }} return",
        "ct state invalid drop",
    ]


def chain_rules(chain: Chain) -> list[str]:
    rules = preamble(chain.direction)
    for decision in chain.decisions:
        rules.extend(decision_rules(decision, chain.direction))
    if chain.inner_counter is not None:
        c = f"counter name {counter_name(chain.inner_counter)}"
        for g in chain.inner_access:
            rules.append(f"ip saddr @{set_name(g, 4)} {c} return")
            rules.append(f"ip6 saddr @{set_name(g, 6)} {c} return")
    rules.extend(verdict(chain.default.counter, chain.default.action, None))
    return rules


def decision_rules(decision: Decision, direction: str) -> list[str]:
    out = []
    for m in decision.matches:
        out.extend(f"{match_expr(m, direction)} {v}".strip()
                   for v in verdict(decision.counter, decision.action, m.proto))
    return out


def verdict(key: CounterKey, action: str, proto: str | None) -> list[str]:
    c = f"counter name {counter_name(key)}"
    if action == "accept":
        return [f"{c} return"]
    if action == "drop":
        return [f"{c} drop"]
    if proto == "tcp":
        return [f"{c} reject with tcp reset"]
    if proto is None:
        return [f"meta l4proto tcp {c} reject with tcp reset",
                f"{c} reject with icmpx admin-prohibited"]
    return [f"{c} reject with icmpx admin-prohibited"]


def match_expr(m: Match, direction: str) -> str:
    parts = []
    ip = "ip" if m.family == 4 else "ip6"
    addr = _VERB[direction][1]
    if m.group is not None:
        parts.append(f"{ip} {addr} @{set_name(m.group, m.family)}")
    elif any(n.prefixlen == 0 for n in m.nets):
        parts.append(f"meta nfproto {'ipv4' if m.family == 4 else 'ipv6'}")
    else:
        parts.append(f"{ip} {addr} {_set_of(m.nets)}")
    if m.proto in ("tcp", "udp"):
        if m.ports is None:
            parts.append(f"meta l4proto {m.proto}")
        else:
            parts.append(f"{m.proto} dport {_set_of(_port_items(m.ports))}")
    elif m.proto in ("icmp", "icmpv6"):
        if m.icmp_type is None:
            parts.append(f"meta l4proto {_L4[m.proto]}")
        else:
            parts.append(f"{m.proto} type {m.icmp_type}")
    elif m.proto is not None:
        parts.append(f"meta l4proto {_L4.get(m.proto, m.proto)}")
    return " ".join(parts)


def _port_items(ports) -> list[str]:
    return [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ports]


def _set_of(items) -> str:
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_ = ipaddress  # re-exported types in annotations only
