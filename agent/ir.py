"""The backend-neutral intermediate representation: per NIC and direction, the ordered decisions.

No backend syntax lives here.  The per-rule types are named tuples, so that comparing two
rulesets (does a new document change any rule, or only members?) runs at C speed.  A renderer (linear nftables, set-compiled nftables, iptables)
walks a :class:`Ruleset` and turns each :class:`Chain` into its own statements.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
PortRange = tuple[int, int]
Action = Literal["accept", "drop", "reject"]
Direction = Literal["inbound", "outbound"]
Mode = Literal["enforce", "audit"]
# The NFLOG group flow records are sent to (a 16-bit number; any other program's logging uses
# its own group).  See docs/DECISIONS.md.
NFLOG_GROUP = 2520


class Match(NamedTuple):
    """One conjunction: peer (addresses or a group's members) x protocol x ports, one family."""
    family: int                       # 4 | 6
    nets: tuple[IPNetwork, ...] = ()  # literal peers (empty when ``group`` is set)
    group: str | None = None          # peer is the members of this group (of this family)
    proto: str | None = None          # tcp | udp | icmp | icmpv6 | gre; None: any protocol
    ports: tuple[PortRange, ...] | None = None  # tcp/udp destination ports; None: all
    icmp_type: int | None = None      # icmp/icmpv6 type; None: all


class CounterKey(NamedTuple):
    """The identity of a hit counter (SEMANTICS section 8)."""
    nic: str
    direction: Direction
    group: str | None   # None for failsafe and default counters
    rule: str           # rule id, "failsafe/<i>" or "default"
    policy: Action
    mode: Mode = "enforce"  # "audit": counts what the rule would decide (SEMANTICS section 9)


class LogSpec(NamedTuple):
    """A decision reported as flow records (SEMANTICS section 9): each packet it decides is
    sent to the kernel's NFLOG ``group`` (the agent's flow-log reader), at most ``rate`` per
    ``unit`` with bursts of ``burst``; what the limit holds back is counted on the decision's
    suppressed counter.  A backend tags each record with :func:`sgagent.flowlog.prefix.encode`
    of the decision's counter key, which the reader decodes."""
    rate: int
    unit: Literal["second", "minute", "hour"]
    burst: int
    group: int = NFLOG_GROUP


class Decision(NamedTuple):
    """A rule as enforced on one NIC: the first decision whose matches hold decides.

    ``log``: its decisions are also reported (flow records).  ``audit``: it never decides; a
    packet that reaches it (no decision before it in order matches) and matches it is counted on
    its counter and reported as ``would <action>``, and the chain goes on to the next decision
    as if it were absent.  An audit decision always has a ``log``."""
    counter: CounterKey
    action: Action
    matches: tuple[Match, ...]  # a disjunction; may be empty (a rule that can never match here)
    log: LogSpec | None = None
    audit: bool = False


@dataclass(frozen=True)
class Chain:
    nic: str
    role: str
    direction: Direction
    decisions: tuple[Decision, ...]         # failsafe first, then group rules in decision order
    inner_access: tuple[str, ...]           # groups whose members are accepted before the default
    inner_counter: CounterKey | None        # counts inner-access accepts (a default, policy accept)
    default: Decision                       # matches nothing; its action is the final verdict
    # (its ``log`` also reports what inner access accepts: both are what the default decides)

    @property
    def counters(self) -> tuple[CounterKey, ...]:
        keys = [d.counter for d in self.decisions]
        if self.inner_counter is not None:
            keys.append(self.inner_counter)
        keys.append(self.default.counter)
        return tuple(keys)


@dataclass(frozen=True)
class GroupSet:
    """The members of a group, as referenced by group peers and inner access."""
    name: str
    v4: tuple[ipaddress.IPv4Address, ...]
    v6: tuple[ipaddress.IPv6Address, ...]


@dataclass(frozen=True)
class Ruleset:
    chains: tuple[Chain, ...]
    groups: tuple[GroupSet, ...] = field(default=())

    def chain(self, nic: str, direction: str) -> Chain:
        for c in self.chains:
            if c.nic == nic and c.direction == direction:
                return c
        raise KeyError((nic, direction))

    @property
    def nics(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c.nic for c in self.chains))
