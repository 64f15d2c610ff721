"""An in-memory kernel table, for tests without root: it executes transactions all or
nothing, refusing what the kernel refuses, and keeps what a kernel keeps.

Refused, with nothing changed (:class:`~sgagent.backend.kernel.Refused`):

* anything in a table that does not exist (but ``AddTable``), adding a set or map over one of
  another type, deleting or flushing what does not exist, deleting an element that is not
  there, adding elements to a set that does not exist;
* a rule that names a set, map or counter that does not exist (yet, at that point of the
  transaction: the kernel looks names up as it takes each message in), or that jumps or goes to
  a chain that does not exist; a map element that goes to a missing chain or names a missing
  counter;
* deleting a chain that a rule (of another chain) or a map element goes to, a set or map that
  a rule looks up, a counter that a rule or map counts on (a chain goes with its own rules);
* a transaction carrying a generation (``genid``) that is no longer the current one.

Named counters keep their values for as long as they exist; every commit bumps the generation.
:meth:`FakeKernel.tamper` commits a foreign change and tells the watchers, as the kernel's
notifications would; :meth:`FakeKernel.count` stands in for traffic.  Backend-neutral: it
works on the typed operations, never on rule text (a rule's references are its own fields).
"""

from __future__ import annotations

import copy
import hashlib
import threading
from dataclasses import dataclass, field
from typing import Callable

from ..ir import CounterKey
from .kernel import CounterReading, Executed, Refused
from .objects import Rule, verdict_chain
from .transaction import (AddChain, AddCounter, AddElements, AddRules, AddSet, AddTable,
                          DeleteChain, DeleteCounter, DeleteElements, DeleteSet, DeleteTable,
                          FlushChain, FlushTable, LiveObjects, Op, Transaction)


@dataclass
class FakeSet:
    type: str
    interval: bool
    is_map: bool
    value_type: str
    elements: dict[str, str | None] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "map" if self.is_map else "set"

    @property
    def shape(self) -> tuple:
        return (self.type, self.interval, self.is_map, self.value_type)


@dataclass
class FakeCounter:
    comment: str
    packets: int = 0
    bytes: int = 0


@dataclass
class FakeChain:
    header: str | None
    rules: list[Rule] = field(default_factory=list)


@dataclass
class FakeTable:
    counters: dict[str, FakeCounter] = field(default_factory=dict)
    sets: dict[str, FakeSet] = field(default_factory=dict)
    chains: dict[str, FakeChain] = field(default_factory=dict)


class _Watch:
    def __init__(self, kernel: "FakeKernel", on_change: Callable[[], None]) -> None:
        self.kernel, self.on_change = kernel, on_change

    def close(self) -> None:
        self.kernel._watchers = [w for w in self.kernel._watchers if w is not self]


class FakeKernel:
    """``identify`` turns a counter's comment into its identity for :meth:`counters`
    (comments it returns None for are left out)."""

    def __init__(self, identify: Callable[[str], CounterKey | None] | None = None) -> None:
        self.identify = identify
        self.table: FakeTable | None = None
        self.gen = 1
        self.commits = 0          # transactions committed (the agent's and foreign ones)
        self.closed = False
        self._watchers: list[_Watch] = []
        self._lock = threading.RLock()

    # -- the Kernel protocol ----------------------------------------------------------------
    def execute(self, tx: Transaction, *, genid: int | None = None,
                dry_run: bool = False) -> Executed:
        with self._lock:
            if genid is not None and genid != self.gen:
                raise Refused(f"the ruleset changed since generation {genid} (now {self.gen})")
            if not tx:
                return Executed("fake", 0)
            table = self._run(tx.ops)
            if not dry_run:
                self.table = table
                self.gen += 1
                self.commits += 1
            return Executed("fake", len(tx))

    def generation(self) -> int | None:
        return self.gen

    def live(self) -> LiveObjects:
        with self._lock:
            t = self.table
            if t is None:
                return LiveObjects(frozenset(), frozenset(), frozenset(), False)
            return LiveObjects(frozenset(t.chains),
                               frozenset(f"{s.kind} {n}" for n, s in t.sets.items()),
                               frozenset(t.counters), True)

    def listing(self) -> str:
        """The table in a canonical text (objects by kind and name, elements sorted, rules
        in order), counter values aside; '' for no table."""
        with self._lock:
            t = self.table
            if t is None:
                return ""
            lines = ["table"]
            lines += [f"counter {n} {c.comment!r}" for n, c in sorted(t.counters.items())]
            for n, s in sorted(t.sets.items()):
                flags = " interval" if s.interval else ""
                value = f" : {s.value_type}" if s.is_map else ""
                lines.append(f"{s.kind} {n} {s.type}{value}{flags}")
                lines += [f"\t{k}" if v is None else f"\t{k} : {v}"
                          for k, v in sorted(s.elements.items())]
            for n, c in sorted(t.chains.items()):
                lines.append(f"chain {n}" + (f" {c.header}" if c.header else ""))
                lines += [f"\t{r.text}" for r in c.rules]
            return "\n".join(lines) + "\n"

    def normalised(self, listing: str) -> list[str]:
        return listing.splitlines(keepends=True)

    def counters(self) -> list[CounterReading]:
        with self._lock:
            if self.table is None or self.identify is None:
                return []
            out = []
            for c in self.table.counters.values():
                key = self.identify(c.comment)
                if key is not None:
                    out.append(CounterReading(key, c.packets, c.bytes))
            return out

    def watch(self, on_change: Callable[[], None]) -> _Watch:
        w = _Watch(self, on_change)
        self._watchers.append(w)
        return w

    def scratch(self) -> "FakeKernel":
        return FakeKernel(self.identify)

    def delete_table(self) -> bool:
        with self._lock:
            if self.table is None:
                return False
            self.execute(Transaction([DeleteTable()]))
            return True

    def close(self) -> None:
        self.closed = True

    # -- what tests do to it ----------------------------------------------------------------
    def tamper(self, *ops: Op, notify: bool = True) -> None:
        """Commit ``ops`` as someone else would (``nft`` by hand), then tell the watchers
        (``notify=False``: a change they are not told of, as when notifications are lost).
        Raises :class:`Refused` like any transaction."""
        self.execute(Transaction(list(ops)))
        if notify:
            for w in list(self._watchers):
                w.on_change()

    def foreign_commit(self) -> None:
        """A commit that does not touch the table (another table's): the generation moves."""
        with self._lock:
            self.gen += 1
            self.commits += 1

    def count(self, counter: str, packets: int = 1, nbytes: int = 64) -> None:
        """Traffic counted on a named counter."""
        with self._lock:
            assert self.table is not None
            c = self.table.counters[counter]
            c.packets += packets
            c.bytes += nbytes * packets

    def values(self) -> dict[str, tuple[int, int]]:
        """Every counter's (packets, bytes) by name."""
        with self._lock:
            t = self.table
            return {} if t is None else {n: (c.packets, c.bytes) for n, c in t.counters.items()}

    def fingerprint(self) -> str:
        return hashlib.sha256(self.listing().encode()).hexdigest()

    # -- executing -------------------------------------------------------------------------
    def _run(self, ops: list[Op]) -> FakeTable | None:
        table = copy.deepcopy(self.table)
        for i, op in enumerate(ops):
            try:
                table = _step(table, op)
            except Refused as exc:
                raise Refused(f"operation {i + 1} of {len(ops)} ({op!r}): {exc}") from None
        return table


def _step(t: FakeTable | None, op: Op) -> FakeTable | None:
    if isinstance(op, AddTable):
        return t if t is not None else FakeTable()
    if t is None:
        raise Refused("no such table")
    if isinstance(op, AddRules):
        chain = _get(t.chains, op.chain, "chain")
        for rule in op.rules:
            _resolves(t, rule)
            chain.rules.append(rule)
    elif isinstance(op, AddElements):
        s = _get(t.sets, op.set, "set")
        for k, v in op.items:
            if (v is None) == s.is_map:
                raise Refused(f"element {k!r} of {s.kind} {op.set}: value {v!r}")
            _value_resolves(t, s, v)
            s.elements[k] = v
    elif isinstance(op, DeleteElements):
        s = _get(t.sets, op.set, "set")
        for k in op.keys:
            if k not in s.elements:
                raise Refused(f"no element {k!r} in {s.kind} {op.set}")
            del s.elements[k]
    elif isinstance(op, FlushTable):
        for c in t.chains.values():
            c.rules.clear()
    elif isinstance(op, DeleteTable):
        return None
    elif isinstance(op, AddCounter):
        t.counters.setdefault(op.name, FakeCounter(op.comment))
    elif isinstance(op, DeleteCounter):
        _get(t.counters, op.name, "counter")
        _unused(t, op.name, "counter")
        del t.counters[op.name]
    elif isinstance(op, AddSet):
        d = op.set
        new = FakeSet(d.type, d.interval, d.is_map, d.value_type)
        s = t.sets.setdefault(op.name, new)
        if s.shape != new.shape:
            raise Refused(f"{s.kind} {op.name} exists with another type")
        for k, v in d.items():
            _value_resolves(t, s, v)
            s.elements[k] = v
    elif isinstance(op, DeleteSet):  # a set or a map, whichever it is (so does the kernel)
        _get(t.sets, op.name, op.kind)
        _unused(t, op.name, "set")
        del t.sets[op.name]
    elif isinstance(op, AddChain):
        t.chains.setdefault(op.name, FakeChain(op.header))
    elif isinstance(op, FlushChain):
        _get(t.chains, op.name, "chain").rules.clear()
    elif isinstance(op, DeleteChain):  # with its rules
        chain = _get(t.chains, op.name, "chain")
        rules, chain.rules = chain.rules, []
        try:
            _unused(t, op.name, "chain")
        finally:
            chain.rules = rules
        del t.chains[op.name]
    else:
        raise Refused(f"not an operation: {op!r}")
    return t


def _get(objs: dict, name: str, kind: str):
    try:
        return objs[name]
    except KeyError:
        raise Refused(f"no such {kind} {name}") from None


def _resolves(t: FakeTable, rule: Rule) -> None:
    for name in rule.targets:
        _get(t.chains, name, "chain")
    for name in rule.sets:
        _get(t.sets, name, "set")
    for name in rule.counters:
        _get(t.counters, name, "counter")


def _value_resolves(t: FakeTable, s: FakeSet, value: str | None) -> None:
    if value is None:
        return
    if s.value_type == "verdict":
        _get(t.chains, verdict_chain(value), "chain")
    elif s.value_type == "counter":
        _get(t.counters, value, "counter")


def _unused(t: FakeTable, name: str, kind: str) -> None:
    """Refuse deleting what a rule or a map element still refers to."""
    for chain_name, chain in t.chains.items():
        for rule in chain.rules:
            refs = {"chain": rule.targets, "set": rule.sets, "counter": rule.counters}[kind]
            if name in refs:
                raise Refused(f"{kind} {name} is in use by a rule of chain {chain_name}")
    if kind in ("chain", "counter"):
        for set_name, s in t.sets.items():
            if s.is_map and s.value_type == ("verdict" if kind == "chain" else "counter"):
                for v in s.elements.values():
                    if v is not None and (verdict_chain(v) if kind == "chain" else v) == name:
                        raise Refused(f"{kind} {name} is in use by map {set_name}")
