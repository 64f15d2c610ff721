"""One transaction: what a change of the table consists of, as typed operations in an order
the kernel accepts when it takes them one after the other, whatever executes it (libnftables
text, a netlink batch, the in-memory fake).

:func:`diff` gives the operations that turn the applied objects into the desired ones;
:func:`replace` gives the operations that replace the live table's contents whole (for a first
apply, a repair, or when a difference was refused).  Both keep the named counters that stay:
a kept counter is never deleted, so its count never goes back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Union

from .objects import Objects, Rule, SetDef


@dataclass(frozen=True, slots=True)
class AddTable:
    pass


@dataclass(frozen=True, slots=True)
class FlushTable:
    """Remove every rule of every chain of the table (chains, sets, counters stay)."""


@dataclass(frozen=True, slots=True)
class DeleteTable:
    pass


@dataclass(frozen=True, slots=True)
class AddCounter:
    name: str
    comment: str


@dataclass(frozen=True, slots=True)
class DeleteCounter:
    name: str


@dataclass(frozen=True, slots=True)
class AddSet:
    """A set or map (``set.is_map``) with its elements."""
    name: str
    set: SetDef


@dataclass(frozen=True, slots=True)
class DeleteSet:
    name: str
    is_map: bool = False

    @property
    def kind(self) -> str:
        return "map" if self.is_map else "set"


@dataclass(frozen=True, slots=True)
class AddChain:
    name: str
    header: str | None = None   # a base chain's hook, priority and policy; None: a plain chain


@dataclass(frozen=True, slots=True)
class FlushChain:
    name: str


@dataclass(frozen=True, slots=True)
class DeleteChain:
    name: str


@dataclass(frozen=True, slots=True)
class AddRules:
    """Rules appended to a chain, in their order."""
    chain: str
    rules: tuple[Rule, ...]


@dataclass(frozen=True, slots=True)
class AddElements:
    set: str
    key_type: str                               # the set's type, e.g. "ipv4_addr"
    items: tuple[tuple[str, str | None], ...]   # (key, value); a set's values are None


@dataclass(frozen=True, slots=True)
class DeleteElements:
    set: str
    key_type: str
    keys: tuple[str, ...]


Op = Union[AddTable, FlushTable, DeleteTable, AddCounter, DeleteCounter, AddSet, DeleteSet,
           AddChain, FlushChain, DeleteChain, AddRules, AddElements, DeleteElements]
ELEMENT_OPS = (AddElements, DeleteElements)
DECLARATIONS = (AddCounter, AddSet, AddChain, AddRules)
PIECE = 128   # elements an AddElements or DeleteElements of a difference carries at most


@dataclass
class Transaction:
    """Operations committed together or not at all.  ``full``: it replaces the whole table's
    contents (:func:`replace`), its declarations in one block after the deletions."""
    ops: list[Op] = field(default_factory=list)
    full: bool = False

    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops)

    def __len__(self) -> int:
        return len(self.ops)

    def __bool__(self) -> bool:
        return bool(self.ops)

    def plus(self, *ops: Op) -> "Transaction":
        """The same transaction with ``ops`` at its end."""
        return Transaction(self.ops + list(ops), self.full)

    @property
    def elements_only(self) -> bool:
        """Only set and map elements change (what a netlink batch can carry directly)."""
        return bool(self.ops) and all(isinstance(op, ELEMENT_OPS) for op in self.ops)

    @property
    def element_count(self) -> int:
        return sum(len(op.items) if isinstance(op, AddElements) else len(op.keys)
                   for op in self.ops if isinstance(op, ELEMENT_OPS))


@dataclass(frozen=True)
class LiveObjects:
    """The names of what the live table holds (without rules and elements)."""
    chains: frozenset[str]
    sets: frozenset[str]   # sets and maps, each named with its kind: "set NAME" / "map NAME"
    counters: frozenset[str]
    table: bool


NO_TABLE = LiveObjects(frozenset(), frozenset(), frozenset(), False)


def declarations(objs: Objects) -> list[Op]:
    """Everything in ``objs``, in an order each operation finds what it refers to: counters,
    chains (empty: map elements and rules go to them), sets and maps, then the rules."""
    ops: list[Op] = [AddCounter(n, c) for n, c in objs.counters.items()]
    ops += [AddChain(n, header) for n, (header, _) in objs.chains.items()]
    ops += [AddSet(n, s) for n, s in objs.sets.items()]
    ops += [AddRules(n, rules) for n, (_, rules) in objs.chains.items() if rules]
    return ops


def replace(live: LiveObjects, objs: Objects) -> Transaction:
    """Replace the live table's contents with ``objs``, keeping the named counters that stay
    (their counts never go backwards)."""
    ops: list[Op] = [AddTable(), FlushTable()]
    # Sets and maps go and come back whole (emptying a large interval map element by element
    # inside the transaction that refills it costs the kernel seconds); maps may point at
    # chains (goto), so they go before any chain does.
    for kind_name in sorted(live.sets):  # "set NAME" or "map NAME"
        kind, name = kind_name.split(" ", 1)
        ops.append(DeleteSet(name, kind == "map"))
    ops += [DeleteChain(n) for n in sorted(set(live.chains) - set(objs.chains))]
    ops += [DeleteCounter(n) for n in sorted(set(live.counters) - set(objs.counters))]
    return Transaction(ops + declarations(objs), full=True)


def diff(old: Objects, new: Objects, *, whole_intervals: bool = False) -> Transaction:
    """Only what differs from ``old`` (which must be what the kernel holds now), as one
    transaction.  Counter names hash their whole identity, so a kept name keeps its comment
    and its count.  When ``new`` says which names it changed relative to ``old``
    (:class:`~sgagent.backend.objects.Changed`), only those are compared: the diff is as small
    as the change, whatever the size of the table.

    ``whole_intervals``: an interval set or map whose elements change is deleted and added
    again whole, with the rules of every chain that looks it up flushed before and added
    again after, instead of its prefixes and ranges being added and deleted one by one (what
    a netlink batch cannot carry: then the whole difference would go as text)."""
    ch = new.changed
    if ch is not None and ch.relative_to(old):
        return _diff(old, new, ch.counters, ch.sets, ch.chains, whole_intervals)
    return _diff(old, new, None, None, None, whole_intervals)


def _diff(old: Objects, new: Objects, counter_names, set_names, chain_names,
          whole_intervals: bool = False) -> Transaction:
    """The diff over the given names of each kind (None: all of them)."""
    create: list[Op] = []      # new counters, sets, maps
    new_chains: list[Op] = []  # new chains, empty (map elements may jump to them)
    flush: list[Op] = []       # chains whose rules change or go
    unelem: list[Op] = []      # elements that go
    recreate: list[Op] = []    # sets whose type changed: delete and add again
    elem: list[Op] = []        # elements that come
    rules: list[Op] = []       # the rules of new and changed chains
    delete: list[Op] = []      # chains, sets, counters that go
    whole: set[str] = set()    # interval sets added again whole (``whole_intervals``)
    # (key views compare at C speed: a change of members leaves them all equal)
    if counter_names is not None or new.counters.keys() != old.counters.keys():
        names = new.counters if counter_names is None else counter_names
        create += [AddCounter(n, new.counters[n]) for n in names
                   if n in new.counters and n not in old.counters]
    for name in new.sets if set_names is None else set_names:
        s = new.sets.get(name)
        o = old.sets.get(name)
        if o is s or s is None:
            continue  # the very same object (nothing changed), or gone (below)
        if o is None:
            create.append(AddSet(name, s))
            continue
        if not o.same_shape(s):
            recreate.append(DeleteSet(name, o.is_map))
            recreate.append(AddSet(name, s))
            continue
        come: list[tuple[str, str | None]]
        if s.values is not None:
            new_m, old_m = s.mapping(), o.mapping()
            gone = [k for k, v in old_m.items() if new_m.get(k) != v]
            come = [(k, v) for k, v in new_m.items() if old_m.get(k) != v]
        else:
            gone = sorted(o.elements - s.elements)
            come = [(k, None) for k in sorted(s.elements - o.elements)]
        if whole_intervals and s.interval and (gone or come):
            recreate.append(DeleteSet(name, o.is_map))
            recreate.append(AddSet(name, s))
            whole.add(name)
            continue
        # in pieces: one operation's elements go in one netlink attribute (64 KiB at most)
        unelem += [DeleteElements(name, s.type, tuple(gone[i:i + PIECE]))
                   for i in range(0, len(gone), PIECE)]
        elem += [AddElements(name, s.type, tuple(come[i:i + PIECE]))
                 for i in range(0, len(come), PIECE)]
    redone: set[str] = set()   # chains whose rules go and come back (flushed, added)
    for name in new.chains if chain_names is None else chain_names:
        entry = new.chains.get(name)
        prev = old.chains.get(name)
        if entry is None or prev is entry or prev == entry:
            continue
        redone.add(name)
        header, chain_rules = entry
        if prev is None:
            new_chains.append(AddChain(name, header))
        else:
            flush.append(FlushChain(name))
        if chain_rules:
            rules.append(AddRules(name, chain_rules))
    if whole:
        # A set is deleted only once no rule looks it up: the kept chains that do go empty
        # before it goes (a chain that goes is flushed below) and get their rules back after.
        for name, (header, chain_rules) in new.chains.items():
            if name in redone or name not in old.chains:
                continue
            if any(not whole.isdisjoint(r.sets) for r in old.chains[name][1]):
                flush.append(FlushChain(name))
                if chain_rules:
                    rules.append(AddRules(name, chain_rules))
    # Maps that go may jump to chains that go: the maps first.
    if set_names is not None or not old.sets.keys() <= new.sets.keys():
        delete += [DeleteSet(n, old.sets[n].is_map) for n in
                   (old.sets if set_names is None else set_names)
                   if n in old.sets and n not in new.sets]
    if chain_names is not None or not old.chains.keys() <= new.chains.keys():
        for name in old.chains if chain_names is None else chain_names:
            if name in old.chains and name not in new.chains:
                flush.append(FlushChain(name))
                delete.append(DeleteChain(name))
    if counter_names is not None or not old.counters.keys() <= new.counters.keys():
        delete += [DeleteCounter(n) for n in (old.counters if counter_names is None
                                              else counter_names)
                   if n in old.counters and n not in new.counters]
    return Transaction(new_chains + create + flush + unelem + recreate + elem + rules + delete)
