"""The nftables objects a ruleset consists of, as plain data, and the two ways to load them:
the whole table as text, or the difference from what is loaded now.

Both renderings (linear and set-compiled) produce :class:`Objects`; apply either replaces the
table's contents in one transaction or sends only what changed, also in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .names import FAMILY, TABLE, nft_string

REF = f"{FAMILY} {TABLE}"


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

    def body(self, with_elements: bool = True) -> str:
        typ = f"type {self.type} : {self.value_type};" if self.is_map else f"type {self.type};"
        flags = " flags interval;" if self.interval else ""
        items = ""
        if with_elements and self.elements:
            items = f" elements = {{ {', '.join(self._items())} }};"
        return f"{{ {typ}{flags}{items} }}"

    def _items(self) -> list[str]:
        if self.values is not None:
            return [f"{k} : {v}" for k, v in self.values]
        return sorted(self.elements)

    def mapping(self) -> dict[str, str]:
        return dict(self.values or ())


@dataclass
class Objects:
    counters: dict[str, str] = field(default_factory=dict)      # name -> comment
    sets: dict[str, SetDef] = field(default_factory=dict)       # sets and verdict maps
    chains: dict[str, tuple[str | None, tuple[str, ...]]] = field(default_factory=dict)
    #        name -> (base chain header or None, rules)
    refs: dict[str, int] = field(default_factory=dict)
    #        class chain -> how many map elements and class chains go to it
    exact: dict[str, dict[str, str]] = field(default_factory=dict)
    #        exact address map -> {address: verdict}, as loaded
    plans: dict[str, dict] = field(default_factory=dict)
    element_changes: list | None = None
    #        set by a membership change whose only difference from the objects it was built
    #        from is set elements (see setrender.member_update, nft.elements)
    #        NIC chain -> {family: peerclass.Plan}: what the set rendering's address maps were
    #        built from, kept so that a membership change can touch only its pieces

    def ref(self, chain: str, n: int = 1) -> None:
        """Count ``n`` more references to a class chain (negative: fewer)."""
        self.refs[chain] = self.refs.get(chain, 0) + n

    def text(self) -> str:
        """The whole table in nft's block syntax: what ``sgagent compile`` prints."""
        lines = [f"table {REF} {{"]
        for name, comment in self.counters.items():
            lines.append(f"\tcounter {name} {{ comment {nft_string(comment)}; }}")
        for name, s in self.sets.items():
            lines.append(f"\t{'map' if s.is_map else 'set'} {name} {s.body()}")
        for name, (header, rules) in self.chains.items():
            lines.append(f"\tchain {name} {{")
            if header:
                lines.append(f"\t\t{header}")
            lines.extend(f"\t\t{r}" for r in rules)
            lines.append("\t}")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def replace_script(self, live_chains, live_sets, live_counters) -> str:
        """Replace the live table's contents with these objects, atomically, keeping the
        named counters that stay (their counts never go backwards)."""
        head = [f"add table {REF}", f"flush table {REF}"]
        # Sets and maps go and come back whole (emptying a large interval map element by
        # element inside the transaction that refills it costs the kernel seconds); maps may
        # point at chains (goto), so they go before any chain does.
        for kind_name in sorted(live_sets):  # "set NAME" or "map NAME"
            kind, name = kind_name.split(" ", 1)
            head.append(f"delete {kind} {REF} {name}")
        for name in sorted(set(live_chains) - set(self.chains)):
            head.append(f"delete chain {REF} {name}")
        for name in sorted(set(live_counters) - set(self.counters)):
            head.append(f"delete counter {REF} {name}")
        return "\n".join(head) + "\n" + self.text()

    def delta_script(self, old: "Objects") -> str:
        """Only what differs from ``old`` (which must be what the kernel holds now), as one
        transaction.  Counter names hash their whole identity, so a kept name keeps its
        comment and its count."""
        create: list[str] = []    # new counters, sets, maps
        new_chains: list[str] = []  # new chains, empty (map elements may jump to them)
        flush: list[str] = []     # chains whose rules change or go
        unelem: list[str] = []    # elements that go
        recreate: list[str] = []  # sets whose type changed: delete and add again
        elem: list[str] = []      # elements that come
        rules: list[str] = []     # the rules of new and changed chains
        delete: list[str] = []    # chains, sets, counters that go
        for name, comment in self.counters.items():
            if name not in old.counters:
                create.append(f"add counter {REF} {name} {{ comment {nft_string(comment)}; }}")
        for name, s in self.sets.items():
            kind = "map" if s.is_map else "set"
            o = old.sets.get(name)
            if o is s:
                continue  # the very same object: nothing changed
            if o is None:
                create.append(f"add {kind} {REF} {name} {s.body()}")
                continue
            if (o.type, o.interval, o.is_map, o.value_type) != (s.type, s.interval, s.is_map,
                                                                s.value_type):
                recreate.append(f"delete {'map' if o.is_map else 'set'} {REF} {name}")
                recreate.append(f"add {kind} {REF} {name} {s.body()}")
                continue
            if s.is_map:
                new_m, old_m = s.mapping(), o.mapping()
                gone = [k for k, v in old_m.items() if new_m.get(k) != v]
                come = [f"{k} : {v}" for k, v in new_m.items() if old_m.get(k) != v]
            else:
                gone = sorted(o.elements - s.elements)
                come = sorted(s.elements - o.elements)
            if gone:
                unelem.append(f"delete element {REF} {name} {{ {', '.join(gone)} }}")
            if come:
                elem.append(f"add element {REF} {name} {{ {', '.join(come)} }}")
        for name, (header, chain_rules) in self.chains.items():
            prev = old.chains.get(name)
            if prev == (header, chain_rules):
                continue
            if prev is None:
                body = f" {{ {header} }}" if header else ""
                new_chains.append(f"add chain {REF} {name}{body}")
            else:
                flush.append(f"flush chain {REF} {name}")
            rules.extend(f"add rule {REF} {name} {r}" for r in chain_rules)
        # Maps that go may jump to chains that go: the maps first.
        delete += [f"delete {'map' if s.is_map else 'set'} {REF} {n}"
                   for n, s in old.sets.items() if n not in self.sets]
        for name in old.chains:
            if name not in self.chains:
                flush.append(f"flush chain {REF} {name}")
                delete.append(f"delete chain {REF} {name}")
        delete += [f"delete counter {REF} {n}" for n in old.counters if n not in self.counters]
        lines = new_chains + create + flush + unelem + recreate + elem + rules + delete
        return "\n".join(lines) + ("\n" if lines else "")
