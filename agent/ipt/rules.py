"""Reading what ``iptables-save`` and ``ipset save`` print, and writing what
``iptables-restore --noflush`` takes to turn one set of sgagent chains into another."""

from __future__ import annotations

import functools
import shlex
import socket
from dataclasses import dataclass, field

from .names import PREFIX, ROOTS, key_of
from ..ir import CounterKey


@functools.lru_cache(maxsize=256)
def _proto_number(name: str) -> str:
    if name.isdigit():
        return name
    try:
        return str(socket.getprotobyname(name))
    except OSError:
        return name


@functools.lru_cache(maxsize=1 << 16)
def normal_rule(rule: str) -> str:
    """A rule in one spelling: protocols as numbers, no quotes (``iptables-save`` prints
    ``gre`` for ``-p 47`` and quotes some comments)."""
    tokens = shlex.split(rule)
    for i, tok in enumerate(tokens[:-1]):
        if tok == "-p":
            tokens[i + 1] = _proto_number(tokens[i + 1])
    return " ".join(tokens)


@dataclass
class Saved:
    """sgagent's part of one family's filter table as ``iptables-save -c`` printed it."""
    chains: dict[str, list[str]] = field(default_factory=dict)
    counts: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    hooked: set[str] = field(default_factory=set)     # hooks whose chain jumps to our root
    foreign: int = 0                                 # rules that are not sgagent's

    def counters(self) -> dict[CounterKey, tuple[int, int]]:
        out: dict[CounterKey, tuple[int, int]] = {}
        for name, rules in self.chains.items():
            if not name.startswith(f"{PREFIX}-d-"):
                continue
            for rule, (p, b) in zip(rules, self.counts[name]):
                key = key_of(comment_in(rule))
                if key is not None:
                    op, ob = out.get(key, (0, 0))
                    out[key] = (op + p, ob + b)
        return out


def comment_in(rule: str) -> str:
    tokens = shlex.split(rule)
    for i, tok in enumerate(tokens[:-1]):
        if tok == "--comment":
            return tokens[i + 1]
    return ""


def parse_save(text: str) -> Saved:
    """The filter table of an ``iptables-save [-c] -t filter`` output."""
    s = Saved()
    in_filter = False
    for line in text.splitlines():
        if line.startswith("*"):
            in_filter = line == "*filter"
            continue
        if not in_filter or not line or line.startswith("#"):
            continue
        if line.startswith(":"):
            name = line[1:].split(" ", 1)[0]
            if name.startswith(PREFIX):
                s.chains.setdefault(name, [])
                s.counts.setdefault(name, [])
            continue
        counts = (0, 0)
        if line.startswith("["):
            head, _, line = line.partition("] ")
            p, _, b = head[1:].partition(":")
            counts = (int(p), int(b))
        if not line.startswith("-A "):
            continue
        chain, _, rule = line[3:].partition(" ")
        if chain in s.chains:
            s.chains[chain].append(rule)
            s.counts[chain].append(counts)
        elif chain in ROOTS and rule == f"-j {ROOTS[chain]}":
            s.hooked.add(chain)
        else:
            s.foreign += 1
    return s


def parse_ipset_save(text: str) -> dict[str, tuple[str, list[str]]]:
    """sgagent's sets in an ``ipset save`` output: name -> (type, elements)."""
    out: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        parts = line.split(" ", 2)
        if len(parts) < 3 or not parts[1].startswith(PREFIX):
            continue
        if parts[0] == "create":
            out[parts[1]] = (parts[2].split(" ", 1)[0], [])
        elif parts[0] == "add" and parts[1] in out:
            out[parts[1]][1].append(parts[2])
    return out


def same_rules(have: list[str] | tuple[str, ...], want: list[str] | tuple[str, ...]) -> bool:
    return len(have) == len(want) and all(
        a == b or normal_rule(a) == normal_rule(b) for a, b in zip(have, want))


def restore_script(have: dict[str, list[str]], want: dict[str, tuple[str, ...]],
                   hooked: set[str] = frozenset(), hook: bool = True,
                   unhook: set[str] = frozenset()) -> str:
    """``iptables-restore --noflush`` input that turns sgagent chains ``have`` into ``want``
    and nothing else: a chain whose rules are the same is not mentioned (its counters keep
    counting), a changed one is emptied and filled again, one that goes is emptied and
    deleted; the jumps to the root chains are inserted at the top of INPUT, FORWARD and
    OUTPUT where missing (``hook``), and removed from the hooks in ``unhook``.  '' when
    nothing is to change."""
    changed = [n for n, rules in want.items()
               if n not in have or not same_rules(have[n], rules)]
    gone = [n for n in have if n not in want]
    jumps = [h for h in ROOTS if h not in hooked] if hook else []
    if not changed and not gone and not jumps and not unhook:
        return ""
    lines = ["*filter"]
    lines += [f"-D {h} -j {ROOTS[h]}" for h in sorted(unhook)]
    lines += [f":{n} - [0:0]" for n in changed + gone]
    for n in changed:
        lines += [f"-A {n} {r}" for r in want[n]]
    lines += [f"-X {n}" for n in gone]
    lines += [f"-I {h} 1 -j {ROOTS[h]}" for h in jumps]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def unhook_script(have: dict[str, list[str]], hooked: set[str]) -> str:
    """Input that removes the jumps to sgagent's chains, then every sgagent chain."""
    if not have and not hooked:
        return ""
    lines = ["*filter"]
    lines += [f"-D {h} -j {ROOTS[h]}" for h in sorted(hooked)]
    lines += [f":{n} - [0:0]" for n in have]
    lines += [f"-X {n}" for n in have]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"
