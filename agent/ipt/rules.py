"""Reading what ``iptables-save`` and ``ipset save`` print, and writing what
``iptables-restore --noflush`` takes to turn one set of sgagent chains into another."""

from __future__ import annotations

import functools
import re
import socket
from dataclasses import dataclass, field

from .names import PREFIX, ROOTS, key_of, suppressed_key
from ..ir import CounterKey


@functools.lru_cache(maxsize=256)
def _proto_number(name: str) -> str:
    if name.isdigit():
        return name
    try:
        return str(socket.getprotobyname(name))
    except OSError:
        return name


_PROTO = re.compile(r"(?<=-p )([A-Za-z][\w-]*)")


def normal_rule(rule: str) -> str:
    """A rule in one spelling: protocols as numbers, no quotes (``iptables-save`` prints
    ``gre`` for ``-p 47`` and quotes some comments).  sgagent's comments hold neither spaces
    nor quotes (:func:`sgagent.ipt.names.comment_of`), so dropping the quotes is exact."""
    if '"' in rule:
        rule = rule.replace('"', "")
    if "-p " in rule:
        rule = _PROTO.sub(lambda m: _proto_number(m.group(1)), rule)
    return rule


@dataclass
class Saved:
    """sgagent's part of one family's filter table as ``iptables-save -c`` printed it."""
    chains: dict[str, list[str]] = field(default_factory=dict)
    counts: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    hooked: set[str] = field(default_factory=set)     # hooks whose chain jumps to our root
    foreign: int = 0                                 # rules that are not sgagent's

    def counters(self) -> dict[CounterKey, tuple[int, int]]:
        """Per decision, the sum of the counters of the rules carrying its comment."""
        out: dict[CounterKey, tuple[int, int]] = {}
        for comment, (p, b) in self.by_comment().items():
            key = key_of(comment)
            if key is not None:
                op, ob = out.get(key, (0, 0))
                out[key] = (op + p, ob + b)
        return out

    def by_comment(self, chains=None) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        for name in self.chains if chains is None else chains:
            for rule, (p, b) in zip(self.chains[name], self.counts[name]):
                c = comment_in(rule)
                if c:
                    op, ob = out.get(c, (0, 0))
                    out[c] = (op + p, ob + b)
        return out


_COMMENT = re.compile(r'--comment "?([^ "]*)')


def comment_in(rule: str) -> str:
    m = _COMMENT.search(rule)
    return m.group(1) if m else ""


_COUNTED = re.compile(r'^\[(\d+):(\d+)\] -A sgagent\S* .*?--comment "?([^ "\n]*)', re.M)


def counters_in(text: str, of=key_of) -> dict[CounterKey, tuple[int, int]]:
    """Per decision, the sum of its rules' counters in an ``iptables-save -c`` of the filter
    table (one pass of a regular expression: what a metrics scrape reads).  ``of`` reads a
    comment's decision: :func:`sgagent.ipt.names.suppressed_key` gives, per logged decision,
    the packets its rate limit kept from the flow log (suppressed records)."""
    by: dict[str, list[int]] = {}
    for p, b, c in _COUNTED.findall(text):
        acc = by.setdefault(c, [0, 0])
        acc[0] += int(p)
        acc[1] += int(b)
    out: dict[CounterKey, tuple[int, int]] = {}
    for c, (p, b) in by.items():
        key = of(c)
        if key is not None:
            op, ob = out.get(key, (0, 0))
            out[key] = (op + p, ob + b)
    return out


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


def restore_script(have: Saved, want: dict[str, tuple[str, ...]],
                   hook: bool = True, unhook: set[str] = frozenset()) -> str:
    """``iptables-restore -c --noflush`` input that turns sgagent's chains ``have`` into
    ``want`` and nothing else: a chain whose rules are the same is not mentioned (its rules
    keep counting), a changed one is emptied and filled again, one that goes is emptied and
    deleted; the jumps to the root chains are inserted at the top of INPUT, FORWARD and
    OUTPUT where missing (``hook``), and removed from the hooks in ``unhook``.

    Counters are carried: what a decision had counted in the rules that go is given to the
    first of its rules that come (``[packets:bytes]``), so its sum never goes back while it
    stays; a kept chain is written again (with its own counts) when a decision that lost
    rules has no new one to carry them.  '' when nothing is to change."""
    chains = have.chains
    changed = {n: None for n, rules in want.items()
               if n not in chains or not same_rules(chains[n], rules)}
    gone = [n for n in chains if n not in want]
    carried = _carry(have, want, changed, gone)
    jumps = [h for h in ROOTS if h not in have.hooked] if hook else []
    if not changed and not gone and not jumps and not unhook:
        return ""
    lines = ["*filter"]
    lines += [f"-D {h} -j {ROOTS[h]}" for h in sorted(unhook)]
    lines += [f":{n} - [0:0]" for n in [*changed, *gone]]
    for n in changed:
        for i, r in enumerate(want[n]):
            p, b = carried.get((n, i), (0, 0))
            lines.append(f"[{p}:{b}] -A {n} {r}")
    lines += [f"-X {n}" for n in gone]
    lines += [f"-I {h} 1 -j {ROOTS[h]}" for h in jumps]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def _carry(have: Saved, want: dict[str, tuple[str, ...]], changed: dict[str, None],
           gone: list[str]) -> dict[tuple[str, int], tuple[int, int]]:
    """Counts for rules of ``changed`` chains (grown when it must be, see
    :func:`restore_script`): (chain, index) -> (packets, bytes)."""
    total = have.by_comment()
    if not any(p or b for p, b in total.values()):
        return {}
    while True:
        kept = have.by_comment(n for n in have.chains if n in want and n not in changed)
        need = {c: (p - kept.get(c, (0, 0))[0], b - kept.get(c, (0, 0))[1])
                for c, (p, b) in total.items()}
        first: dict[str, tuple[str, int]] = {}
        for n in changed:
            for i, r in enumerate(want[n]):
                c = comment_in(r)
                if c and c not in first:
                    first[c] = (n, i)
        lost = [c for c, v in need.items() if v != (0, 0) and c not in first]
        more = [n for n in have.chains if n in want and n not in changed
                and any(comment_in(r) in lost for r in want[n])]
        if not more:
            break
        changed.update(dict.fromkeys(more))
    return {first[c]: v for c, v in need.items() if c in first and v != (0, 0)}


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
