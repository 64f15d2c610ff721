"""The iptables backend (:class:`sgagent.backend.kernel.Backend`): the plan of the nftables
set rendering as iptables chains and ipsets (:mod:`sgagent.ipt.render`), applied to a
namespace's iptables (:class:`~sgagent.ipt.kernel.IptKernel`, legacy or nf_tables variant).

Each apply compares the wanted chains and sets with what ``iptables-save`` and ``ipset save``
show, and sends only what differs, one restore per family: a chain whose rules stay is not
touched, so its counters keep counting (the decision counters live in chains named after
their identity).  Drift repair is the same apply.

An apply leaves a mark in the kernel: a digest of the ruleset, the rendering, the variant and
the rendering's code, with the fingerprint of the state the apply left.  An apply that finds
its own mark with the kernel at that state (read then, sets' elements included) has nothing
to do and renders nothing: an unchanged document costs its reads, also from a new process."""

from __future__ import annotations

import difflib
import functools
import hashlib
import inspect
import sys
from typing import Callable

from ..backend.kernel import ApplyError, ApplyResult, CounterReading, Refused
from ..backend.objects import Objects
from ..ir import Ruleset
from ..nft.names import counter_comment, counter_name
from . import render as render_module
from .kernel import IptKernel
from .names import ROOTS
from .render import FAMILIES, RenderError, Tables, render
from .rules import normal_rule


class IptBackend:
    name = "iptables"

    def __init__(self, netns_name: str | None = None, rendering: str = "sets", *,
                 variant: str | None = None, kernel: IptKernel | None = None) -> None:
        if kernel is None:
            if variant is None:
                from .variant import detect
                variant = detect(netns_name)
            kernel = IptKernel(netns_name, variant)
        self.netns_name = netns_name
        self.rendering = rendering
        self.kernel = kernel
        self._last: tuple[Ruleset, Tables] | None = None

    @property
    def variant(self) -> str:
        return self.kernel.variant

    def close(self) -> None:
        self.kernel.close()

    def __enter__(self) -> "IptBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- reading --------------------------------------------------------------------------
    def loaded(self) -> bool:
        return self.kernel.live().loaded

    def counters(self) -> list[CounterReading]:
        return self.kernel.counters()

    def suppressed(self) -> list[CounterReading]:
        """Per logged decision, the flow records its rate limit held back (SEMANTICS section
        9): what the metrics report as ``sgagent_log_suppressed``."""
        return self.kernel.suppressed()

    def live_text(self) -> str:
        """sgagent's chains, jumps and sets as the kernel holds them, counters aside, in an
        order that does not depend on the order they were made in ('' if none)."""
        live = self.kernel.live()
        if not live.loaded and not live.sets:
            return ""
        t = Tables({f: {n: tuple(r) for n, r in live.saved[f].chains.items()} for f in FAMILIES})
        lines = _listing(t, {f: live.saved[f].hooked for f in FAMILIES})
        for name in sorted(live.sets):
            typ, elements = live.sets[name]
            lines.append(f"ipset {name} {typ}\n")
            lines += [f"  {e}\n" for e in sorted(elements)]
        return "".join(lines)

    def fingerprint(self, listing: str) -> str | None:
        if not listing:
            return None
        return hashlib.sha256(listing.encode()).hexdigest()

    def watch(self, on_change: Callable[[], None]):
        """Poll a cheap fingerprint every second (see :class:`sgagent.ipt.kernel.Poller`)."""
        return self.kernel.watch(on_change)

    # -- writing --------------------------------------------------------------------------
    def render(self, rs: Ruleset) -> Tables:
        """The tables for ``rs``; the last ones again when ``rs`` is the last ruleset (a
        repair, a retry: rendering 10,000 rules costs seconds)."""
        last = self._last
        if last is not None and (last[0] is rs or last[0] == rs):
            return last[1]
        try:
            tables = render(rs, self.rendering)
        except RenderError as exc:
            raise ApplyError(str(exc)) from None
        self._last = (rs, tables)
        return tables

    def mark(self, rs: Ruleset) -> str:
        """What an apply of ``rs`` loads, as a digest: the ruleset, the rendering, the variant
        and the code that renders it (another version of sgagent may render it otherwise)."""
        h = hashlib.sha256(f"{self.rendering} {self.variant} {render_code()}\n".encode())
        h.update(repr(rs).encode())
        return h.hexdigest()

    def apply(self, rs: Ruleset, *, dry_run: bool = False, full: bool = False) -> ApplyResult:
        before = self.kernel.commands
        channel = f"iptables-{self.variant}-restore"
        mark = self.mark(rs)
        try:
            same, snap = self.kernel.unchanged(mark)
            if same:  # the kernel holds what this ruleset renders, as the mark's apply left it
                return ApplyResult(_objects(rs), "delta", self.kernel.commands - before, channel)
            tables = self.render(rs)
            was_loaded = self.kernel.apply(tables, full=full, dry_run=dry_run,
                                           mark=None if dry_run else mark, snapshot=snap)
        except Refused as exc:
            raise ApplyError(
                f"iptables refused the ruleset, nothing was changed: {exc}") from None
        return ApplyResult(_objects(rs), "delta" if was_loaded and not full else "full",
                           self.kernel.commands - before, channel)

    def flush(self) -> bool:
        return self.kernel.flush()

    def diff(self, rs: Ruleset) -> str:
        tables = self.render(rs)
        want = _listing(tables, {f: set(ROOTS) for f in FAMILIES})
        for name in sorted(tables.sets):
            s = tables.sets[name]
            want.append(f"ipset {name} {s.type}\n")
            want += [f"  {e}\n" for e in sorted(s.elements)]
        have = self.live_text().splitlines(keepends=True)
        return "".join(difflib.unified_diff(have, want, fromfile="live", tofile="apply"))


def _objects(rs: Ruleset) -> Objects:
    """The counters an apply of ``rs`` loads (every decision's: a rendering gives each one)."""
    return Objects(counters={counter_name(k): counter_comment(k)
                             for c in rs.chains for k in c.counters})


@functools.cache
def render_code() -> str:
    """A digest of the source of :mod:`sgagent.ipt.render` and of every sgagent module it
    uses, directly or not (what decides the tables a ruleset renders to)."""
    seen: dict[str, object] = {}
    todo = [render_module]
    while todo:
        mod = todo.pop()
        if mod.__name__ in seen:
            continue
        seen[mod.__name__] = mod
        for value in vars(mod).values():
            used = value if inspect.ismodule(value) else \
                sys.modules.get(getattr(value, "__module__", None) or "")
            if used is not None and used.__name__.startswith("sgagent.") \
                    and getattr(used, "__file__", None):
                todo.append(used)
    h = hashlib.sha256()
    for name in sorted(seen):
        with open(seen[name].__file__, "rb") as fh:  # type: ignore[attr-defined]
            h.update(name.encode() + b"\n" + fh.read())
    return h.hexdigest()


def _listing(t: Tables, hooked: dict[int, set[str]]) -> list[str]:
    out = []
    for family in FAMILIES:
        tool = "iptables" if family == 4 else "ip6tables"
        out += [f"{tool} {h} -j {ROOTS[h]}\n" for h in ROOTS if h in hooked[family]]
        for name in sorted(t.chains[family]):
            out.append(f"{tool} chain {name}\n")
            out += [f"  {normal_rule(r)}\n" for r in t.chains[family][name]]
    return out
