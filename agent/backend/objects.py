"""The table a ruleset is loaded as, as plain data: named counters, sets and maps, chains and
their rules.  A renderer builds it; :func:`sgagent.backend.transaction.diff` compares two of
them; a kernel (real or fake) executes the difference.

A :class:`Rule` carries its text in the backend's own syntax and, separately, every object it
refers to -- the chains it goes to, the sets and maps it looks up, the named counters it
counts on -- as the renderer knew them when it wrote the text, so that nothing has to read
references back out of rule text.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, NamedTuple


class Rule(NamedTuple):
    text: str                       # in the backend's syntax, as loaded
    targets: tuple[str, ...] = ()   # chains it jumps or goes to
    sets: tuple[str, ...] = ()      # sets and maps it looks up
    counters: tuple[str, ...] = ()  # named counters it counts on


def verdict(kind: str, chain: str) -> str:
    """A map element's value that continues in ``chain``: ``goto NAME`` or ``jump NAME``."""
    return f"{kind} {chain}"


def verdict_chain(value: str) -> str:
    """The chain of a :func:`verdict` value."""
    return value.partition(" ")[2]


@dataclass(frozen=True)
class SetDef:
    type: str                       # e.g. "ipv4_addr", "ipv4_addr . inet_proto . inet_service"
    elements: frozenset[str]        # set elements, or map keys
    values: tuple[tuple[str, str], ...] | None = None  # map: sorted (key, value) pairs
    interval: bool = False
    value_type: str = "verdict"     # a map's values: verdict | counter (named counter objects)

    @property
    def is_map(self) -> bool:
        return self.values is not None

    @property
    def kind(self) -> str:
        return "map" if self.values is not None else "set"

    def items(self) -> list[tuple[str, str | None]]:
        """Elements as (key, value) pairs; a set's values are None."""
        if self.values is not None:
            return list(self.values)
        return [(k, None) for k in sorted(self.elements)]

    def mapping(self) -> dict[str, str]:
        return dict(self.values or ())

    def same_shape(self, other: "SetDef") -> bool:
        """Whether elements alone can turn one into the other (same types and flags)."""
        return (self.type, self.interval, self.is_map, self.value_type) == \
            (other.type, other.interval, other.is_map, other.value_type)

    def targets(self) -> set[str]:
        """The chains a verdict map's elements go to."""
        if self.values is None or self.value_type != "verdict":
            return set()
        return {verdict_chain(v) for _, v in self.values}

    def counter_values(self) -> set[str]:
        """The named counters a counter map's elements name."""
        if self.values is None or self.value_type != "counter":
            return set()
        return {v for _, v in self.values}


Chains = dict[str, tuple[str | None, tuple[Rule, ...]]]


@dataclass
class Objects:
    counters: dict[str, str] = field(default_factory=dict)      # name -> comment
    sets: dict[str, SetDef] = field(default_factory=dict)       # sets and verdict maps
    chains: Chains = field(default_factory=dict)
    #        name -> (base chain header or None, rules)
    refs: dict[str, int] = field(default_factory=dict)
    #        class chain -> how many map elements and class chains go to it
    exact: dict[str, dict[str, str]] = field(default_factory=dict)
    #        exact address map -> {address: verdict}, as loaded
    plans: dict[str, Any] = field(default_factory=dict)
    #        NIC chain -> {family: peerclass.Plan}: what the set rendering's address maps were
    #        built from, kept so that a membership change can touch only its pieces
    changed: Changed | None = None
    #        set by whoever builds these objects from others by touching only some names (a
    #        membership change), so that the diff against those looks at nothing else

    def ref(self, chain: str, n: int = 1) -> None:
        """Count ``n`` more references to a class chain (negative: fewer)."""
        self.refs[chain] = self.refs.get(chain, 0) + n


class Changed:
    """The names (added, changed or removed) in which some objects may differ from the ones
    they were built from; every other name holds the very same value.  The base is held
    weakly: the promise is only about that object, and must not keep it alive."""

    def __init__(self, base: Objects) -> None:
        self._base = weakref.ref(base)
        self.counters: dict[str, None] = {}   # dicts as ordered sets: a deterministic order
        self.sets: dict[str, None] = {}
        self.chains: dict[str, None] = {}

    def relative_to(self, objs: Objects) -> bool:
        return self._base() is objs
