"""Render the IR as nftables objects.  What both renderings share lives here: counters, group
sets, base chains, the stateful preamble, matches and verdicts.  ``linear`` puts one nft rule
per match of each decision in order; ``sets`` (see :mod:`sgagent.nft.setrender`) compiles runs
of decisions into verdict maps so the per-packet cost does not grow with the rules.
"""

from __future__ import annotations

from ..allowances import DHCP_PORTS, LINK_ICMPV6
from ..flowlog.prefix import encode as log_prefix
from ..ir import Chain, CounterKey, Decision, GroupSet, LogSpec, Match, Ruleset
from .names import chain_name, counter_comment, counter_name, nft_string, set_name
from .objects import Objects, Rule, SetDef

L4 = {"tcp": "tcp", "udp": "udp", "icmp": "icmp", "icmpv6": "ipv6-icmp", "gre": "gre"}
VERB = {"inbound": ("iifname", "saddr"), "outbound": ("oifname", "daddr")}
RENDERINGS = ("sets", "linear")


def render(rs: Ruleset, rendering: str = "sets") -> Objects:
    if rendering == "sets":
        from .setrender import chain_body
    elif rendering == "linear":
        chain_body = linear_body
    else:
        raise ValueError(f"unknown rendering {rendering!r} (one of {', '.join(RENDERINGS)})")
    objs = Objects()
    for chain in rs.chains:
        for key in chain.counters:
            objs.counters[counter_name(key)] = counter_comment(key)
        add_log_objects(chain, objs)
    for g in rs.groups:
        for family in (4, 6):
            objs.sets[set_name(g.name, family)] = member_set(g, family)
    groups = {g.name: g for g in rs.groups}
    for chain in rs.chains:
        rules = preamble(chain.direction) + chain_body(chain, objs, groups) + tail(chain)
        objs.chains[chain_name(chain.nic, chain.direction)] = (None, tuple(rules))
    objs.chains.update(base_chains(rs))
    return objs


def member_set(g: GroupSet, family: int) -> SetDef:
    """A group's members of one family, as inner access and linear group peers look them up."""
    return SetDef(f"ipv{family}_addr", frozenset(map(str, g.v4 if family == 4 else g.v6)))


def linear_body(chain: Chain, objs: Objects, groups) -> list[Rule]:
    rules: list[Rule] = []
    for decision in chain.decisions:
        rules.extend(decision_rules(decision, chain.direction))
    return rules


def base_chains(rs: Ruleset) -> dict[str, tuple[str, tuple[Rule, ...]]]:
    def vmap(direction: str) -> Rule | None:
        verb = VERB[direction][0]
        chains = [c for c in rs.chains if c.direction == direction]
        items = ", ".join(f"{nft_string(c.nic)} : jump {chain_name(c.nic, c.direction)}"
                          for c in chains)
        return Rule(f"{verb} vmap {{ {items} }}",
                    targets=tuple(chain_name(c.nic, c.direction) for c in chains)) \
            if items else None

    out = {}
    for hook, dirs in (("input", ["inbound"]), ("forward", ["inbound", "outbound"]),
                       ("output", ["outbound"])):
        header = f"type filter hook {hook} priority filter; policy accept;"
        out[hook] = (header, tuple(v for v in (vmap(d) for d in dirs) if v is not None))
    return out


def preamble(direction: str) -> list[Rule]:
    """State and the always-allowed traffic of SEMANTICS sections 4 and 5."""
    rules = [Rule("ct state established,related return")]
    for family, (client, server) in sorted(DHCP_PORTS.items()):
        nfproto = "ipv4" if family == 4 else "ipv6"
        sport, dport = (server, client) if direction == "inbound" else (client, server)
        rules.append(Rule(f"meta nfproto {nfproto} udp sport {sport} udp dport {dport} return"))
    rules.append(Rule(f"icmpv6 type {{ {', '.join(map(str, sorted(LINK_ICMPV6)))} }} return"))
    rules.append(Rule("ct state invalid drop"))
    return rules


def tail(chain: Chain) -> list[Rule]:
    """Inner access, then the default."""
    rules = []
    if chain.inner_counter is not None:
        name = counter_name(chain.inner_counter)
        c = f"counter name {name}"
        for g in chain.inner_access:
            for ip, family in (("ip", 4), ("ip6", 6)):
                s = set_name(g, family)
                if chain.default.log is not None:
                    rules.extend(verdict_rules(chain.inner_counter, "accept", None,
                                               f"{ip} saddr @{s}", (s,), chain.default.log))
                else:
                    rules.append(Rule(f"{ip} saddr @{s} {c} return", sets=(s,),
                                      counters=(name,)))
    rules.extend(verdict_rules(chain.default.counter, chain.default.action, None,
                               log=chain.default.log))
    return rules


def decision_rules(decision: Decision, direction: str) -> list[Rule]:
    out = []
    for m in decision.matches:
        sets = (set_name(m.group, m.family),) if m.group is not None else ()
        out.extend(verdict_rules(decision.counter, decision.action, m.proto,
                                 match_expr(m, direction), sets, decision.log, decision.audit))
    return out


def verdict_rules(key: CounterKey, action: str, proto: str | None, match: str = "",
                  sets: tuple[str, ...] = (), log: LogSpec | None = None,
                  audit: bool = False) -> list[Rule]:
    """``match`` (none: every packet), then :func:`verdict`, as rules.  A logged decision
    counts, then goes to its log chain (:func:`log_chains`), which reports and decides; an
    audit decision counts and *jumps* to its log chain, then evaluation goes on."""
    counters = (counter_name(key),)
    if log is not None:
        c = f"counter name {counter_name(key)}"
        chain = log_chain_name(key)
        return [Rule(f"{match} {c} {'jump' if audit else 'goto'} {chain}".strip(), sets=sets,
                     counters=counters, targets=(chain,))]
    return [Rule(f"{match} {v}".strip(), sets=sets, counters=counters)
            for v in verdict(key, action, proto)]


def log_chain_name(key: CounterKey) -> str:
    """The chain that reports a logged decision's packets (and decides them)."""
    return "l" + counter_name(key)[1:]


MARK = "%|"  # a suppressed-records counter's comment: this, then its decision's (logcounters)


def suppressed_counter_name(key: CounterKey) -> str:
    """The counter of what a logged decision's rate limit held back."""
    return "s" + counter_name(key)[1:]


def suppressed_comment(key: CounterKey) -> str:
    return MARK + counter_comment(key)


SNAPLEN = 128  # bytes of each logged packet sent to the reader: the IP and L4 headers


def log_chains(key: CounterKey, action: str, log: LogSpec,
               audit: bool = False) -> dict[str, tuple[None, tuple[Rule, ...]]]:
    """A logged decision's chain: past its rate limit the packet is counted as suppressed,
    under it sent to the NFLOG group with the decision's tag; either way it is decided as the
    decision says (one evaluation of the limit per packet).  An audit decision's chain decides
    nothing: it ends, and the chain that jumped to it goes on.  A reject goes on to a chain
    of its own (``j_``), which rejects as :func:`verdict` does."""
    name = log_chain_name(key)
    s = suppressed_counter_name(key)
    j = "j" + counter_name(key)[1:]
    limit = f"limit rate over {log.rate}/{log.unit} burst {log.burst} packets counter name {s}"
    report = f"log group {log.group} snaplen {SNAPLEN} prefix {nft_string(log_prefix(key))}"
    out: dict[str, tuple[None, tuple[Rule, ...]]] = {}
    if audit:
        rules = (Rule(f"{limit} return", counters=(s,)), Rule(report))
    elif action == "reject":
        rules = (Rule(f"{limit} goto {j}", counters=(s,), targets=(j,)),
                 Rule(f"{report} goto {j}", targets=(j,)))
        out[j] = (None, tuple(Rule(v.replace(f"counter name {counter_name(key)} ", ""))
                              for v in verdict(key, action, None)))
    else:
        v = "return" if action == "accept" else "drop"
        rules = (Rule(f"{limit} {v}", counters=(s,)), Rule(f"{report} {v}"))
    out[name] = (None, rules)
    return out


def logged(chain: Chain) -> list[tuple[CounterKey, str, LogSpec, bool]]:
    """The chain's logged decisions: (counter, action, log, audit)."""
    out = [(d.counter, d.action, d.log, d.audit) for d in chain.decisions if d.log is not None]
    if chain.default.log is not None:
        if chain.inner_counter is not None:
            out.append((chain.inner_counter, "accept", chain.default.log, False))
        out.append((chain.default.counter, chain.default.action, chain.default.log, False))
    return out


def log_objects(chain: Chain) -> tuple[list[str], list[str]]:
    """The names of the chain's log chains and suppressed counters (made whether or not a rule
    goes to them: a decision that another always shadows still has them)."""
    chains, counters = [], []
    for key, action, log, audit in logged(chain):
        counters.append(suppressed_counter_name(key))
        chains.append(log_chain_name(key))
        if action == "reject" and not audit:
            chains.append("j" + counter_name(key)[1:])
    return chains, counters


def add_log_objects(chain: Chain, objs: Objects) -> list[str]:
    """The suppressed counters and log chains of the chain's logged decisions, into ``objs``;
    the names of the counters added."""
    added = []
    for key, action, log, audit in logged(chain):
        name = suppressed_counter_name(key)
        objs.counters[name] = suppressed_comment(key)
        added.append(name)
        objs.chains.update(log_chains(key, action, log, audit))
    return added


def verdict(key: CounterKey, action: str, proto: str | None) -> list[str]:
    """Count on the decision's counter, then accept (return), drop or reject."""
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
    addr = VERB[direction][1]
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
            parts.append(f"{m.proto} dport {_set_of(port_text(lo, hi) for lo, hi in m.ports)}")
    elif m.proto in ("icmp", "icmpv6"):
        if m.icmp_type is None:
            parts.append(f"meta l4proto {L4[m.proto]}")
        else:
            parts.append(f"{m.proto} type {m.icmp_type}")
    elif m.proto is not None:
        parts.append(f"meta l4proto {L4.get(m.proto, m.proto)}")
    return " ".join(parts)


def port_text(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _set_of(items) -> str:
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"
