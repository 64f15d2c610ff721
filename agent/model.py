"""The host document (SEMANTICS sections 1, 2 and 7) as pydantic v2 models.

Field validators normalise the vendor spellings (``ingress``, ``ALL``, ``80-443``, ...) into one
canonical form, so the evaluator and compiler only ever see clean values.  Checks that need the
whole document (group references, classic/vpc rules) live in :mod:`sgagent.checks`.
"""

from __future__ import annotations

import ipaddress
import re
import reprlib
import unicodedata
from typing import Annotated, Any, Literal, NamedTuple, Union

from pydantic import (
    BaseModel,
    ValidationError,
    ValidationInfo,
    BeforeValidator,
    ConfigDict,
    StrictBool,
    WithJsonSchema,
    Field,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

Direction = Literal["inbound", "outbound"]
Policy = Literal["accept", "drop", "reject"]
Protocol = Literal["tcp", "udp", "icmp", "icmpv6", "gre", "all"]
Network = Literal["vpc", "classic"]
Ordering = Literal["priority", "sequential"]
Role = Literal["vpc", "intranet", "internet"]
GroupType = Literal["basic", "enterprise"]
NicSide = Literal["intranet", "internet"]
Mode = Literal["enforce", "audit"]

# Names end up in nftables counter comments (128 bytes at most), see docs/DECISIONS.md.
# Matched whole (``fullmatch``): ``$`` would also match before a trailing newline.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,47}")
RULE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,47}")
IFNAME_MAX_BYTES = 15
# Refused in interface names besides what the kernel refuses: nftables gives ``*`` and ``\``
# meaning (wildcard, escape), its quoted strings cannot carry ``"``, ``|`` separates the fields
# of a counter comment, and the kernel expands ``%`` into a number (``eth%d``), so no interface
# is ever called by such a name.  See docs/DECISIONS.md.
_IFNAME_REFUSED = {"/": "a slash", ":": "a colon", "*": "a '*' (an nftables wildcard)",
                   "\\": "a backslash (an nftables escape)",
                   '"': "a double quote (nftables strings cannot carry it)",
                   "|": "a '|' (it separates the fields of counter comments)",
                   "%": "a '%' (the kernel makes a number of it: no interface is called so)"}
SHOWN_CHARS = 40
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, SHOWN_CHARS, SHOWN_CHARS, SHOWN_CHARS
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6


def shown(value: Any) -> str:
    """``value`` as an error message quotes it: at most a short prefix, then the total length
    (SEMANTICS section 7), so that no document can make its error messages large."""
    if isinstance(value, str):
        if len(value) <= SHOWN_CHARS:
            return repr(value)
        return f"{value[:SHOWN_CHARS]!r}... ({len(value)} characters)"
    if isinstance(value, int) and not isinstance(value, bool):
        if abs(value) < 10 ** SHOWN_CHARS:
            return str(value)
        if value.bit_length() > 10_000:  # str() of it would be slow, or refused
            return f"an integer of {value.bit_length()} bits"
        digits = str(value)
        return f"{digits[:SHOWN_CHARS]}... ({len(digits.lstrip('-'))} digits)"
    try:
        text = _REPR.repr(value)
    except ValueError:  # an integer too long to print, inside a container
        text = f"a {type(value).__name__}"
    if len(text) > 2 * SHOWN_CHARS:
        text = text[:2 * SHOWN_CHARS] + "..."
    if isinstance(value, (list, tuple, dict)) and len(value) > 6:
        text += f" ({len(value)} items)"
    return text


def interface_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a managed NIC's name (SEMANTICS section 1), or None if it can.

    What the kernel takes (``dev_valid_name``): 1-15 bytes, not ``.`` or ``..``, no ``/``,
    ``:`` or space -- where the kernel's ``isspace`` is bytewise and includes 0xa0, so a
    character whose UTF-8 holds that byte (``à``) is refused by it too.  Further: no control
    characters, nothing nftables or the counter comments give meaning, and never ``lo``."""
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        return "it is not UTF-8 text (a lone surrogate)"
    if not 1 <= len(raw) <= IFNAME_MAX_BYTES:
        return f"it is {len(raw)} bytes of UTF-8 (an interface name is 1-{IFNAME_MAX_BYTES} bytes)"
    if name in (".", ".."):
        return "the kernel refuses '.' and '..'"
    if name == "lo":
        return "it is loopback, which sgagent never touches"
    for ch in name:
        if ch in _IFNAME_REFUSED:
            return f"it contains {_IFNAME_REFUSED[ch]}"
        if ch.isspace():
            return f"it contains whitespace ({ch!r})"
        if unicodedata.category(ch) == "Cc":
            return f"it contains a control character ({ch!r})"
        if 0xA0 in ch.encode():
            return (f"it contains {ch!r}, whose UTF-8 holds byte 0xa0, which the kernel counts "
                    f"as a space")
    return None


DIRECTIONS = {"inbound": "inbound", "ingress": "inbound", "in": "inbound",
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


def _ci_pattern(words) -> str:
    """A JSON Schema (ECMA-262) pattern matching any of ``words`` in any letter case."""
    def ci(word: str) -> str:
        assert re.fullmatch(r"[A-Za-z0-9-]+", word), word  # nothing to escape
        return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in word)
    return "^(" + "|".join(ci(w) for w in sorted(words)) + ")$"


def _ci_enum_schema(words, description: str, *, nullable: bool = False) -> WithJsonSchema:
    """The schema of a field the model reads case-insensitively (``ACCEPT``, ``Ingress``, ``-1``):
    the printed schema accepts what the agent accepts."""
    words = sorted(set(words))
    branches: list[dict[str, Any]] = [{"type": "string", "pattern": _ci_pattern(words),
                                       "examples": words}]
    numbers = sorted(int(w) for w in words if re.fullmatch(r"-?\d+", w))
    if numbers:
        branches.append({"type": "integer", "enum": numbers})
    if nullable:
        branches.append({"type": "null"})
    schema: dict[str, Any] = branches[0] if len(branches) == 1 else {"anyOf": branches}
    return WithJsonSchema({**schema, "description": description})


def _enum_schema(table: dict[str, str], what: str, *, nullable: bool = False) -> WithJsonSchema:
    canon = sorted(set(table.values()))
    return _ci_enum_schema(set(table) | set(canon),
                           f"{what}: {' | '.join(canon)} (case-insensitive)", nullable=nullable)


_ACCOUNT_SCHEMA = WithJsonSchema({"type": ["string", "integer", "null"],
                                  "description": "owner account; defaults to the host's"})


def _enum(table: dict[str, str], what: str):
    def parse(value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"{shown(value)} is not a {what} (one of {', '.join(sorted(set(table.values())))})")
        if isinstance(value, int):
            value = str(value)
        if not isinstance(value, str):
            raise ValueError(f"{shown(value)} is not a {what}")
        key = value.strip().lower()
        if key not in table:
            raise ValueError(
                f"{shown(value)} is not a {what} (one of {', '.join(sorted(set(table.values())))})"
            )
        return table[key]
    return parse


def _lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


def _port(text: str) -> int:
    text = text.strip()
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        raise ValueError(f"{shown(text)} is not a port (1..65535)")
    if len(text) > 12:  # int() of a long run of digits is slow, or refused
        raise ValueError(f"{shown(text)} is not a port (1..65535)")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"{port} is not a port (1..65535)")
    return port


def parse_ports(value: Any) -> tuple[PortRange, ...] | None:
    """Parse every spelling of SEMANTICS section 2. None means "all ports"."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{shown(value)} is not a port range")
    if isinstance(value, int):
        value = str(value)
    if isinstance(value, (list, tuple)):
        parts = [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
        if not parts or not all(isinstance(p, str) for p in parts):
            raise ValueError(f"{shown(value)} is not a port list")
        out: list[PortRange] = []
        for p in parts:
            parsed = parse_ports(p)
            if parsed is None:
                return None
            out.extend(parsed)
        return _merge(out)
    if not isinstance(value, str):
        raise ValueError(f"{shown(value)} is not a port range")
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
            raise ValueError(f"{shown(item)} is not a port range (use -1/-1 for all ports)")
        else:
            lo = hi = _port(item)
        if lo > hi:
            raise ValueError(f"{shown(item)}: low port {lo} is above high port {hi}")
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
        raise ValueError(f"{shown(value)} is not a CIDR or address")
    try:
        return ipaddress.ip_network(value.strip(), strict=True)
    except ValueError as exc:
        try:
            ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            raise ValueError(f"{shown(value)} is not a CIDR or address") from exc
        raise ValueError(f"{shown(value)} has host bits set (did you mean "
                         f"{ipaddress.ip_network(value.strip(), strict=False)}?)") from exc


class LogRate(NamedTuple):
    """At most ``rate`` flow records per ``unit``, in bursts of at most ``burst``."""
    rate: int
    unit: str  # second | minute | hour
    burst: int


LOG_UNITS = {"s": "second", "sec": "second", "second": "second",
             "m": "minute", "min": "minute", "minute": "minute",
             "h": "hour", "hour": "hour"}
LOG_RATE_MAX = 100_000  # records per unit


def parse_log_rate(value: Any) -> LogRate | None:
    """``10`` (per second), ``"10/second"``, ``"600/minute"``, ``"10/s burst 50"``, or
    ``{rate: 10/second, burst: 50}``; the burst defaults to twice the rate (SEMANTICS 9: 10/s,
    burst 20)."""
    if value is None or isinstance(value, LogRate):
        return value
    burst: Any = None
    if isinstance(value, dict):
        extra = set(value) - {"rate", "burst"}
        if extra or "rate" not in value:
            raise ValueError("log_rate is a rate (10, '10/second') or {rate: ..., burst: N}")
        burst, value = value.get("burst"), value["rate"]
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{shown(value)} is not a log rate (10, '10/second', '600/minute')")
    text = str(value).strip().lower()
    m = re.fullmatch(r"([0-9]{1,7})\s*(?:/\s*([a-z]+))?(?:\s+burst\s+([0-9]{1,7}))?", text)
    if not m or (m.group(2) is not None and m.group(2).rstrip("s") not in LOG_UNITS
                 and m.group(2) not in LOG_UNITS):
        raise ValueError(f"{shown(value)} is not a log rate (10, '10/second', '600/minute')")
    unit_word = m.group(2) or "second"
    unit = LOG_UNITS.get(unit_word) or LOG_UNITS[unit_word.rstrip("s")]
    rate = int(m.group(1))
    if m.group(3) is not None:
        if burst is not None:
            raise ValueError("log_rate gives its burst twice")
        burst = int(m.group(3))
    if not 1 <= rate <= LOG_RATE_MAX:
        raise ValueError(f"{rate} is not a log rate (1..{LOG_RATE_MAX} per {unit})")
    if burst is None:
        burst = 2 * rate
    if isinstance(burst, bool) or not isinstance(burst, int) or not 1 <= burst <= 2 * LOG_RATE_MAX:
        raise ValueError(f"burst: {shown(burst)} is not a burst (1..{2 * LOG_RATE_MAX} records)")
    return LogRate(rate, unit, burst)


_LOG_RATE_SCHEMA = WithJsonSchema({
    "anyOf": [{"type": "integer", "minimum": 1, "maximum": LOG_RATE_MAX},
              {"type": "string",
               "pattern": "^[0-9]{1,7}\\s*(/\\s*[A-Za-z]+)?(\\s+[Bb][Uu][Rr][Ss][Tt]\\s+[0-9]{1,7})?$"},
              {"type": "object", "additionalProperties": False, "required": ["rate"],
               "properties": {"rate": {"type": ["integer", "string"]},
                              "burst": {"type": "integer", "minimum": 1}}},
              {"type": "null"}],
    "description": "flow records at most: 10 (per second), '10/second', '600/minute', "
                   "'10/s burst 50' or {rate, burst}; default 10/second, burst 20"})


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
    problems: list[tuple[str | int, str]] = []
    for k, item in enumerate(items):
        if isinstance(item, GroupPeer):
            out.append(item)
        elif isinstance(item, dict):
            try:
                out.append(GroupPeer.model_validate(item))
            except ValidationError as exc:
                if not isinstance(value, (list, tuple)):
                    raise
                raise ValidationError.from_exception_data("peer", [  # located at its index
                    InitErrorDetails(type=e["type"], loc=(k, *e["loc"]), input=e["input"],
                                     **({"ctx": e["ctx"]} if "ctx" in e else {}))  # type: ignore[typeddict-item]
                    for e in exc.errors(include_url=False)]) from None
        elif isinstance(item, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            out.append(item)
        else:
            try:
                out.append(parse_network(item))
            except ValueError as exc:
                problems.append((k, str(exc)))
    if problems:
        if not isinstance(value, (list, tuple)):
            raise ValueError(problems[0][1])
        raise _field_errors("peer", value, problems)
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


def _field_errors(model: str, data: Any, problems: list[tuple[str | int, str]]) -> ValidationError:
    """Errors of a whole-model check, each located at the field it is about (``rules[3].ports``,
    not ``rules[3]``); pydantic nests the locations of a ValidationError raised in a validator."""
    return ValidationError.from_exception_data(model, [
        InitErrorDetails(type=PydanticCustomError("value_error", "{problem}", {"problem": msg}),
                         loc=(field,), input=data)
        for field, msg in problems])


def _rule_proto_ports(data: dict[str, Any]) -> dict[str, Any]:
    """Resolve ``service`` into protocol/ports and check the protocol/port combination."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    if data.get("service") is not None:
        if data.get("protocol") is not None or data.get("ports") is not None:
            raise _field_errors("rule", data, [("service", "service excludes protocol and ports")])
    elif data.get("protocol") is None:
        raise _field_errors("rule", data, [("protocol", "a rule needs a protocol or a service")])
    return data


class _Matchable(Strict):
    """What a rule and a failsafe entry have in common: the match."""
    direction: Annotated[Direction, BeforeValidator(_enum(DIRECTIONS, "direction")), _enum_schema(DIRECTIONS, "direction")]
    protocol: Annotated[Protocol | None, BeforeValidator(_enum(_PROTOCOLS, "protocol")),
                        _enum_schema(_PROTOCOLS, "protocol", nullable=True)] = None
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
            raise ValueError(f"{shown(v)} is not a service (one of {', '.join(SERVICES)})")
        return v

    # Checks across fields are field validators where they can be (fields are validated in
    # declaration order, so ``info.data`` holds the earlier ones if they were valid): they are
    # then reported together with the errors of the rule's other fields.
    @field_validator("ports")
    @classmethod
    def _ports(cls, v: Any, info: ValidationInfo) -> Any:
        protocol = info.data.get("protocol")
        if v is not None and protocol in ("icmp", "icmpv6", "gre", "all"):
            raise ValueError(f"protocol {protocol} takes no ports")
        return v

    @field_validator("source")
    @classmethod
    def _source(cls, v: Any, info: ValidationInfo) -> Any:
        if v is not None and info.data.get("direction") == "outbound":
            raise ValueError("source is for inbound rules; outbound rules name a destination")
        return v

    @field_validator("destination")
    @classmethod
    def _destination(cls, v: Any, info: ValidationInfo) -> Any:
        if v is not None and info.data.get("direction") == "inbound":
            raise ValueError("destination is for outbound rules; inbound rules name a source")
        return v

    @model_validator(mode="after")
    def _after(self):
        if self.peer is None and not (self.direction == "outbound" and self.source is not None):
            want = "source" if self.direction == "inbound" else "destination"
            raise _field_errors("rule", self, [(want, f"a rule needs a peer: {want} is missing")])
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
    priority: Annotated[int, WithJsonSchema({
        "anyOf": [{"type": "integer", "minimum": 1, "maximum": 100},
                  {"type": "string", "pattern": "^[0-9]+$"}],
        "description": "1..100, 1 is highest"})] = 1
    nic: Annotated[NicSide | None, BeforeValidator(_lower),
                   _ci_enum_schema(["intranet", "internet"], "classic only: intranet | internet",
                                   nullable=True)] = Field(
        default=None, description="classic only: intranet | internet")
    description: str | None = None
    log: StrictBool = Field(default=False, description="report each packet this rule decides as a "
                                                 "flow record (SEMANTICS section 9)")
    log_rate: Annotated[LogRate | None, BeforeValidator(parse_log_rate), _LOG_RATE_SCHEMA] = None
    mode: Annotated[Mode, BeforeValidator(_lower),
                    _ci_enum_schema(["enforce", "audit"],
                                    "enforce (default) | audit: never decides, counts and "
                                    "reports what it would decide")] = "enforce"

    @model_validator(mode="after")
    def _after_rule(self):
        if self.log_rate is not None and not self.log and self.mode != "audit":
            raise _field_errors("rule", self, [(
                "log_rate", "log_rate limits flow records: it needs log: true or mode: audit")])
        return self

    @field_validator("id")
    @classmethod
    def _id(cls, v: str | None) -> str | None:
        if v is not None and not RULE_ID_RE.fullmatch(v):
            raise ValueError(f"{shown(v)} is not a rule id (1-48 of A-Z a-z 0-9 _ . : @ / -)")
        return v

    @field_validator("priority", mode="before")
    @classmethod
    def _priority(cls, v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, (int, str)):
            raise ValueError(f"{shown(v)} is not a priority (1..100)")
        try:
            p = int(v)
        except ValueError:
            raise ValueError(f"{shown(v)} is not a priority (1..100)") from None
        if not 1 <= p <= 100:
            raise ValueError(f"{shown(p)} is not a priority (1..100)")
        return p


class FailsafeEntry(_Matchable):
    """Accepted on every managed NIC before any group rule (SEMANTICS section 5)."""


def address_list(field: str, v: Any) -> Any:
    """A list of addresses (``/32`` and ``/128`` allowed), each bad one reported by index."""
    if v is None:
        return ()
    if not isinstance(v, (list, tuple)):
        raise ValueError(f"{field} is a list of addresses")
    out = []
    problems: list[tuple[str | int, str]] = []
    for k, m in enumerate(v):
        try:
            if not isinstance(m, str):
                raise ValueError
            out.append(ipaddress.ip_address(m.strip().removesuffix("/32").removesuffix("/128")))
        except ValueError:
            problems.append((k, f"{shown(m)} is not an address"))
    if problems:
        raise _field_errors(field, v, problems)
    return tuple(out)


class SecurityGroup(Strict):
    account: Annotated[str | None, _ACCOUNT_SCHEMA] = None
    type: Annotated[GroupType, BeforeValidator(_lower),
                    _ci_enum_schema(["basic", "enterprise"], "basic | enterprise")] = "basic"
    inner_access: Annotated[Literal["accept", "drop"] | None,
                            BeforeValidator(_enum(_POLICIES, "inner_access")),
                            _ci_enum_schema(["accept", "allow", "drop", "deny"],
                                            "basic only: accept (default) | drop",
                                            nullable=True)] = Field(
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
        return address_list("members", v)

    @field_validator("inner_access")
    @classmethod
    def _inner_access(cls, v: str | None, info: ValidationInfo) -> str | None:
        # A field check (``type`` is validated before it), so that it is reported even when
        # another field of the group, such as a rule, is wrong too.
        if v is not None and info.data.get("type") == "enterprise":
            raise ValueError("inner_access applies to basic groups only")
        return v

    @property
    def inner_accepts(self) -> bool:
        return self.type == "basic" and (self.inner_access or "accept") == "accept"


class Nic(Strict):
    name: str = Field(description="Linux interface name")
    role: Annotated[Role, BeforeValidator(_lower),
                    _ci_enum_schema(["vpc", "intranet", "internet"], "vpc | intranet | internet")] = "vpc"
    security_groups: tuple[str, ...] = Field(default=(), description="binding order")
    log_default: StrictBool = Field(default=False, description="report what this NIC's default "
                                                         "decides as flow records (SEMANTICS section 9)")
    addresses: tuple[Union[ipaddress.IPv4Address, ipaddress.IPv6Address], ...] = Field(
        default=(), description="fleet: this NIC's addresses, members of the groups it is "
                                "bound to (vpc and intranet NICs; SEMANTICS section 10)")

    @field_validator("addresses", mode="before")
    @classmethod
    def _addresses(cls, v: Any) -> Any:
        return address_list("addresses", v)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        problem = interface_name_problem(v)
        if problem is not None:
            raise ValueError(f"{shown(v)} is not an interface name: {problem}")
        return v


class Defaults(Strict):
    inbound: Literal["accept", "drop"] | None = None
    outbound: Literal["accept", "drop"] | None = None


class Host(Strict):
    instance: str
    account: Annotated[str | None, _ACCOUNT_SCHEMA] = None
    network: Annotated[Network, BeforeValidator(_lower),
                       _ci_enum_schema(["vpc", "classic"], "vpc | classic")] = "vpc"
    ordering: Annotated[Ordering, BeforeValidator(_lower),
                        _ci_enum_schema(["priority", "sequential"],
                                        "priority (Alibaba) | sequential (Tencent)")] = "priority"
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
            if not NAME_RE.fullmatch(name):
                raise ValueError(f"{shown(name)} is not a group name (1-48 of A-Z a-z 0-9 _ . -)")
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
