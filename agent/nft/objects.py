"""The nftables text of the table's objects (:mod:`sgagent.backend.objects`): the whole table
as one block, what ``sgagent compile`` prints and a full replacement loads.  A transaction's
text is :mod:`sgagent.nft.script`'s."""

from __future__ import annotations

from typing import Iterable, Mapping

from ..backend import objects
from ..backend.objects import Rule, SetDef
from .names import FAMILY, TABLE, nft_string

__all__ = ["REF", "Objects", "Rule", "SetDef", "block", "set_body"]

REF = f"{FAMILY} {TABLE}"


def set_body(s: SetDef, with_elements: bool = True) -> str:
    typ = f"type {s.type} : {s.value_type};" if s.is_map else f"type {s.type};"
    flags = " flags interval;" if s.interval else ""
    items = ""
    if with_elements and s.elements:
        items = f" elements = {{ {', '.join(_items(s))} }};"
    return f"{{ {typ}{flags}{items} }}"


def _items(s: SetDef) -> list[str]:
    if s.values is not None:
        return [f"{k} : {v}" for k, v in s.values]
    return sorted(s.elements)


def block(counters: Mapping[str, str], sets: Mapping[str, SetDef],
          chains: Mapping[str, tuple[str | None, Iterable[Rule]]]) -> str:
    """The table in nft's block syntax."""
    lines = [f"table {REF} {{"]
    for name, comment in counters.items():
        lines.append(f"\tcounter {name} {{ comment {nft_string(comment)}; }}")
    for name, s in sets.items():
        lines.append(f"\t{s.kind} {name} {set_body(s)}")
    for name, (header, rules) in chains.items():
        lines.append(f"\tchain {name} {{")
        if header:
            lines.append(f"\t\t{header}")
        lines.extend(f"\t\t{r.text}" for r in rules)
        lines.append("\t}")
    lines.append("}")
    return "\n".join(lines) + "\n"


class Objects(objects.Objects):
    def text(self) -> str:
        """The whole table in nft's block syntax: what ``sgagent compile`` prints."""
        return block(self.counters, self.sets, self.chains)
