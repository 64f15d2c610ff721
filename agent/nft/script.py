"""A transaction as nft text: what libnftables loads, one command a line, and for a full
replacement the whole table as one block after the deletions (the text ``sgagent compile``
prints, which loads fastest)."""

from __future__ import annotations

from ..backend.transaction import (DECLARATIONS, AddChain, AddCounter, AddElements, AddRules,
                                   AddSet, AddTable, DeleteChain, DeleteCounter,
                                   DeleteElements, DeleteSet, DeleteTable, FlushChain,
                                   FlushTable, Op, Transaction)
from .objects import REF, block, set_body
from .names import nft_string


def script(tx: Transaction) -> str:
    ops = tx.ops
    if not tx.full:
        return _commands(ops)
    start = next((i for i, op in enumerate(ops) if isinstance(op, DECLARATIONS)), len(ops))
    end = next((i for i in range(start, len(ops)) if not isinstance(ops[i], DECLARATIONS)),
               len(ops))
    return _commands(ops[:start]) + declared(ops[start:end]) + _commands(ops[end:])


def _commands(ops: list[Op]) -> str:
    return "".join(command(op) + "\n" for op in ops)


def declared(ops: list[Op]) -> str:
    """Declarations as one table block, in the order :meth:`Objects.text` writes them."""
    counters: dict[str, str] = {}
    sets = {}
    chains: dict[str, tuple[str | None, list]] = {}
    for op in ops:
        kind = type(op)
        if kind is AddRules:
            chains[op.chain][1].extend(op.rules)
        elif kind is AddCounter:
            counters[op.name] = op.comment
        elif kind is AddChain:
            chains[op.name] = (op.header, [])
        elif kind is AddSet:
            sets[op.name] = op.set
        else:
            raise ValueError(f"not a declaration: {op!r}")
    return block(counters, sets, chains)


def command(op: Op) -> str:
    if isinstance(op, AddRules):
        return "\n".join(f"add rule {REF} {op.chain} {r.text}" for r in op.rules)
    if isinstance(op, AddElements):
        items = ", ".join(k if v is None else f"{k} : {v}" for k, v in op.items)
        return f"add element {REF} {op.set} {{ {items} }}"
    if isinstance(op, DeleteElements):
        return f"delete element {REF} {op.set} {{ {', '.join(op.keys)} }}"
    if isinstance(op, AddChain):
        body = f" {{ {op.header} }}" if op.header else ""
        return f"add chain {REF} {op.name}{body}"
    if isinstance(op, FlushChain):
        return f"flush chain {REF} {op.name}"
    if isinstance(op, DeleteChain):
        return f"delete chain {REF} {op.name}"
    if isinstance(op, AddSet):
        return f"add {op.set.kind} {REF} {op.name} {set_body(op.set)}"
    if isinstance(op, DeleteSet):
        return f"delete {op.kind} {REF} {op.name}"
    if isinstance(op, AddCounter):
        return f"add counter {REF} {op.name} {{ comment {nft_string(op.comment)}; }}"
    if isinstance(op, DeleteCounter):
        return f"delete counter {REF} {op.name}"
    if isinstance(op, AddTable):
        return f"add table {REF}"
    if isinstance(op, FlushTable):
        return f"flush table {REF}"
    if isinstance(op, DeleteTable):
        return f"delete table {REF}"
    raise ValueError(f"not an operation: {op!r}")
