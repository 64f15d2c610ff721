"""The host document (SEMANTICS sections 1, 2 and 7) as pydantic v2 models.

Field validators normalise the vendor spellings (``ingress``, ``ALL``, ``80-443``, ...) into one
canonical form, so the evaluator and compiler only ever see clean values.  Checks that need the
whole document (group references, classic/vpc rules) live in :mod:`sgagent.checks`.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    WithJsonSchema,
    Field,
    field_validator,
    model_validator,
)

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

Direction = Literal["inbound", "outbound"]
Policy = Literal["accept", "drop", "reject"]
Protocol = Literal["tcp", "udp", "icmp", "icmpv6", "gre", "all"]
Network = Literal["vpc", "classic"]
Ordering = Literal["priority", "sequential"]
Role = Literal["vpc", "intranet", "internet"]
GroupType = Literal["basic", "enterprise"]
NicSide = Literal["intranet", "internet"]

# Names end up in nftables counter comments (128 bytes at most), see docs/DECISIONS.md.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,47}$")
RULE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,47}$")
IFNAME_RE = re.compile(r"^[^\s/:|\"]{1,15}$")

_DIRECTIONS = {"inbound": "inbound", "ingress": "inbound", "in": "inbound",
               "outbound": "outbound", "egress": "outbound", "out": "outbound"}
_POLICIES = {"accept": "accept", "allow": "accept",
             "drop": "drop", "deny": "drop",
             "reject": "reject"}
_PROTOCOLS = {"tcp": "tcp", "6": "tcp", "udp": "udp", "17": "udp",
              "icmp": "icmp", "1": "icmp", "icmpv6": "icmpv6", "ipv6-icmp": "icmpv6", "58": "icmpv6",
              "gre": "gre", "47": "gre", "all": "all", "-1": "all", "any": "all"}

# service -> (protocol, ports, icmp echo request?)
SERVICES: dict[str, tuple[str, tuple[tuple[int, int], ...] | None]] = {
    "ssh": ("tcp", ((22, 22),)),
    "linux-login": ("tcp", ((22, 22),)),
    "rdp": ("tcp", ((3389, 3389),)),
    "windows-login": ("tcp", ((3389, 3389),)),
    "http": ("tcp", ((80, 80),)),
    "https": ("tcp", ((443, 443),)),
    "telnet": ("tcp", ((23, 23),)),
    "ftp": ("tcp", ((20, 21),)),
    "ping": ("ping", None),
    "dns": ("udp", ((53, 53),)),
    "mysql": ("tcp", ((3306, 3306),)),
    "postgresql": ("tcp", ((5432, 5432),)),
    "redis": ("tcp", ((6379, 6379),)),
    "mssql": ("tcp", ((1433, 1433),)),
    "oracle": ("tcp", ((1521, 1521),)),
}

PortRange = tuple[int, int]


def _enum_schema(table: dict[str, str], what: str) -> WithJsonSchema:
    canon = sorted(set(table.values()))
    return WithJsonSchema({"type": "string", "enum": sorted(set(table) | set(canon)),
                           "description": f"{what}: {' | '.join(canon)} (case-insensitive)"})


def _enum(table: dict[str, str], what: str):
    def parse(value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not a {what} (one of {', '.join(sorted(set(table.values())))})")
        if isinstance(value, int):
            value = str(value)
        if not isinstance(value, str):
            raise ValueError(f"{value!r} is not a {what}")
        key = value.strip().lower()
        if key not in table:
            raise ValueError(
                f"{value!r} is not a {what} (one of {', '.join(sorted(set(table.values())))})"
            )
        return table[key]
    return parse


def _lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


def _port(text: str) -> int:
    text = text.strip()
    if not re.fullmatch(r"[+-]?\d+", text):
        raise ValueError(f"{text!r} is not a port (1..65535)")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"{port} is not a port (1..65535)")
    return port


def parse_ports(value: Any) -> tuple[PortRange, ...] | None:
    """Parse every spelling of SEMANTICS section 2. None means "all ports"."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a port range")
    if isinstance(value, int):
        value = str(value)
    if isinstance(value, (list, tuple)):
        parts = [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
        if not parts or not all(isinstance(p, str) for p in parts):
            raise ValueError(f"{value!r} is not a port list")
        out: list[PortRange] = []
        for p in parts:
            parsed = parse_ports(p)
            if parsed is None:
                return None
            out.extend(parsed)
        return _merge(out)
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a port range")
    text = value.strip()
    if text.upper() in ("ALL", "-1/-1", "-1", "*", ""):
        if text == "":
            raise ValueError("empty port range")
        return None
    ranges: list[PortRange] = []
    for item in text.split(","):
        item = item.strip()
        m = re.fullmatch(r"(.+?)\s*(?:/|-|\s+to\s+)\s*(.+)", item, flags=re.IGNORECASE)
        if m and not item.startswith("-"):
            lo, hi = _port(m.group(1)), _port(m.group(2))
        elif m and item.startswith("-"):
            raise ValueError(f"{item!r} is not a port range (use -1/-1 for all ports)")
        else:
            lo = hi = _port(item)
        if lo > hi:
            raise ValueError(f"{item!r}: low port {lo} is above high port {hi}")
        ranges.append((lo, hi))
    return _merge(ranges)


def _merge(ranges: list[PortRange]) -> tuple[PortRange, ...]:
    ranges = sorted(ranges)
    out: list[PortRange] = []
    for lo, hi in ranges:
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return tuple(out)


def parse_network(value: Any) -> IPNetwork:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a CIDR or address")
    try:
        return ipaddress.ip_network(value.strip(), strict=True)
    except ValueError as exc:
        try:
            ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            raise ValueError(f"{value!r} is not a CIDR or address") from exc
        raise ValueError(f"{value!r} has host bits set (did you mean "
                         f"{ipaddress.ip_network(value.strip(), strict=False)}?)") from exc


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class GroupPeer(Strict):
    """A peer that is the current members of another group."""
    group: str = Field(description="name of a group in this document")
    account: str | None = Field(default=None, description="owner account; defaults to the host's")

    @field_validator("account", mode="before")
    @classmethod
    def _account(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v


PeerItem = Union[IPNetwork, GroupPeer]


def parse_peer(value: Any) -> tuple[PeerItem, ...] | None:
    if value is None:
        return None
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise ValueError("empty peer list")
    out: list[PeerItem] = []
    for item in items:
        if isinstance(item, GroupPeer):
            out.append(item)
        elif isinstance(item, dict):
            out.append(GroupPeer.model_validate(item))
        elif isinstance(item, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            out.append(item)
        else:
            out.append(parse_network(item))
    return tuple(out)


_CIDR_SCHEMA = {"type": "string", "description": "IPv4/IPv6 CIDR or address"}
_GROUP_PEER_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["group"],
                      "properties": {"group": {"type": "string"},
                                     "account": {"type": ["string", "integer"]}}}
Peer = Annotated[
    tuple[Union[IPNetwork, GroupPeer], ...] | None,
    BeforeValidator(parse_peer),
    WithJsonSchema({"anyOf": [_CIDR_SCHEMA, _GROUP_PEER_SCHEMA,
                              {"type": "array", "minItems": 1,
                               "items": {"anyOf": [_CIDR_SCHEMA, _GROUP_PEER_SCHEMA]}}]}),
]
Ports = Annotated[
    tuple[tuple[int, int], ...] | None,
    BeforeValidator(parse_ports),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "integer"},
                              {"type": "array", "items": {"type": ["string", "integer"]}}],
                    "description": "22/22, 1/200, -1/-1, 80, 80-443, '20 to 21', '22,3389', ALL"}),
]


def _rule_proto_ports(data: dict[str, Any]) -> dict[str, Any]:
    """Resolve ``service`` into protocol/ports and check the protocol/port combination."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    if data.get("service") is not None:
        if data.get("protocol") is not None or data.get("ports") is not None:
            raise ValueError("service excludes protocol and ports")
    elif data.get("protocol") is None:
        raise ValueError("a rule needs a protocol or a service")
    return data


class _Matchable(Strict):
    """What a rule and a failsafe entry have in common: the match."""
    direction: Annotated[Direction, BeforeValidator(_enum(_DIRECTIONS, "direction")), _enum_schema(_DIRECTIONS, "direction")]
    protocol: Annotated[Protocol | None, BeforeValidator(_enum(_PROTOCOLS, "protocol")),
                        _enum_schema(_PROTOCOLS, "protocol")] = None
    ports: Ports = Field(default=None, description="tcp/udp destination ports; default all")
    service: Annotated[str | None, BeforeValidator(_lower)] = Field(
        default=None, description="instead of protocol and ports: " + ", ".join(SERVICES))
    source: Peer = Field(default=None, description="inbound only: the remote side")
    destination: Peer = Field(default=None, description="outbound only: the remote side")

    @model_validator(mode="before")
    @classmethod
    def _before(cls, data: Any) -> Any:
        return _rule_proto_ports(data)

    @field_validator("service")
    @classmethod
    def _service(cls, v: str | None) -> str | None:
        if v is not None and v not in SERVICES:
            raise ValueError(f"{v!r} is not a service (one of {', '.join(SERVICES)})")
        return v

    @model_validator(mode="after")
    def _after(self):
        problems = []
        if self.protocol in ("icmp", "icmpv6", "gre", "all") and self.ports is not None:
            problems.append(f"protocol {self.protocol} takes no ports")
        if self.direction == "inbound" and self.destination is not None:
            problems.append("destination is for outbound rules; inbound rules name a source")
        if self.direction == "outbound" and self.source is not None:
            problems.append("source is for inbound rules; outbound rules name a destination")
        elif self.peer is None:
            want = "source" if self.direction == "inbound" else "destination"
            problems.append(f"a rule needs a peer: {want} is missing")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def peer(self) -> tuple[PeerItem, ...] | None:
        return self.source if self.direction == "inbound" else self.destination

    @property
    def effective_protocol(self) -> str:
        """tcp, udp, icmp, icmpv6, gre, all, or ``ping`` (echo request of the peer's family)."""
        if self.service is not None:
            return SERVICES[self.service][0]
        assert self.protocol is not None
        return self.protocol

    @property
    def effective_ports(self) -> tuple[PortRange, ...] | None:
        if self.service is not None:
            return SERVICES[self.service][1]
        return self.ports


class Rule(_Matchable):
    id: str | None = Field(default=None, description="stable name; default <group>/<index>")
    policy: Annotated[Policy, BeforeValidator(_enum(_POLICIES, "policy")), _enum_schema(_POLICIES, "policy")] = "accept"
    priority: int = Field(default=1, description="1..100, 1 is highest")
    nic: Annotated[NicSide | None, BeforeValidator(_lower)] = Field(
        default=None, description="classic only: intranet | internet")
    description: str | None = None

    @field_validator("id")
    @classmethod
    def _id(cls, v: str | None) -> str | None:
        if v is not None and not RULE_ID_RE.match(v):
            raise ValueError(f"{v!r} is not a rule id (1-48 of A-Z a-z 0-9 _ . : @ / -)")
        return v

    @field_validator("priority", mode="before")
    @classmethod
    def _priority(cls, v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, (int, str)):
            raise ValueError(f"{v!r} is not a priority (1..100)")
        try:
            p = int(v)
        except ValueError:
            raise ValueError(f"{v!r} is not a priority (1..100)") from None
        if not 1 <= p <= 100:
            raise ValueError(f"{p} is not a priority (1..100)")
        return p


class FailsafeEntry(_Matchable):
    """Accepted on every managed NIC before any group rule (SEMANTICS section 5)."""


class SecurityGroup(Strict):
    account: str | None = Field(default=None, description="owner account; defaults to the host's")
    type: Annotated[GroupType, BeforeValidator(_lower)] = "basic"
    inner_access: Annotated[Literal["accept", "drop"] | None,
                            BeforeValidator(_enum(_POLICIES, "inner_access"))] = Field(
        default=None, description="basic only: accept (default) | drop")
    members: tuple[Union[ipaddress.IPv4Address, ipaddress.IPv6Address], ...] = ()
    rules: tuple[Rule, ...] = ()
    description: str | None = None

    @field_validator("account", mode="before")
    @classmethod
    def _account(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("members", mode="before")
    @classmethod
    def _members(cls, v: Any) -> Any:
        if v is None:
            return ()
        if not isinstance(v, (list, tuple)):
            raise ValueError("members is a list of addresses")
        out = []
        for m in v:
            if not isinstance(m, str):
                raise ValueError(f"{m!r} is not an address")
            try:
                out.append(ipaddress.ip_address(m.strip().removesuffix("/32").removesuffix("/128")))
            except ValueError:
                raise ValueError(f"{m!r} is not an address") from None
        return tuple(out)

    @model_validator(mode="after")
    def _after(self):
        if self.type == "enterprise" and self.inner_access is not None:
            raise ValueError("inner_access applies to basic groups only")
        return self

    @property
    def inner_accepts(self) -> bool:
        return self.type == "basic" and (self.inner_access or "accept") == "accept"


class Nic(Strict):
    name: str = Field(description="Linux interface name")
    role: Annotated[Role, BeforeValidator(_lower)] = "vpc"
    security_groups: tuple[str, ...] = Field(default=(), description="binding order")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not IFNAME_RE.match(v):
            raise ValueError(f"{v!r} is not an interface name (1-15 chars, no space / : | \")")
        return v


class Defaults(Strict):
    inbound: Literal["accept", "drop"] | None = None
    outbound: Literal["accept", "drop"] | None = None


class Host(Strict):
    instance: str
    account: str | None = None
    network: Annotated[Network, BeforeValidator(_lower)] = "vpc"
    ordering: Annotated[Ordering, BeforeValidator(_lower)] = "priority"
    nics: tuple[Nic, ...] = Field(min_length=1)
    failsafe: tuple[FailsafeEntry, ...] = ()
    defaults: Defaults = Defaults()

    @field_validator("account", mode="before")
    @classmethod
    def _account(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v


class Document(Strict):
    version: Literal[1]
    host: Host
    security_groups: dict[str, SecurityGroup] = {}

    @field_validator("security_groups")
    @classmethod
    def _names(cls, v: dict[str, SecurityGroup]) -> dict[str, SecurityGroup]:
        for name in v:
            if not NAME_RE.match(name):
                raise ValueError(f"{name!r} is not a group name (1-48 of A-Z a-z 0-9 _ . -)")
        return v

    # --- derived views, used by evaluator and compiler alike ---
    def rule_id(self, group: str, index: int) -> str:
        rule = self.security_groups[group].rules[index]
        return rule.id if rule.id is not None else f"{group}/{index}"

    def group_account(self, group: str) -> str | None:
        g = self.security_groups[group]
        return g.account if g.account is not None else self.host.account

    def nic(self, name: str) -> Nic:
        for n in self.host.nics:
            if n.name == name:
                return n
        raise KeyError(name)
