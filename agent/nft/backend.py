"""The nftables backend: apply a ruleset atomically, diff it against the live one, read
counters, flush.  Kernel work goes through one libnftables context, optionally inside a named
network namespace (every call then runs on a thread that entered it)."""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from dataclasses import dataclass

from .. import netns
from ..ir import Ruleset
from .libnft import Nft, NftError
from .elements import NetlinkElementWriter
from .netlink import CounterReading, NetlinkCounterReader, NetlinkError
from .names import FAMILY, TABLE, counter_name, parse_comment
from .objects import Objects
from .render import render
from .setrender import member_update

# Fault injection for tests: while the file this names exists, every transaction ends with a
# command the kernel refuses, so it fails after the kernel has processed the rest of it.
FAULT_ENV = "SGAGENT_FAULT_FILE"
TABLE_REF = f"{FAMILY} {TABLE}"


class ApplyError(Exception):
    """The kernel refused the ruleset; the previous one is still in force, unchanged."""


@dataclass(frozen=True)
class ApplyResult:
    objects: Objects
    mode: str         # "delta" | "full"
    commands: int     # lines in the transaction sent to the kernel (elements, over netlink)
    channel: str = "libnftables"  # or "netlink": element updates only, sent directly

    @property
    def counters(self) -> int:
        return len(self.objects.counters)


@dataclass(frozen=True)
class LiveObjects:
    chains: frozenset[str]
    sets: frozenset[str]   # sets and maps, each named with its kind: "set NAME" / "map NAME"
    counters: frozenset[str]
    table: bool


class NftBackend:
    name = "nftables"

    def __init__(self, netns_name: str | None = None, rendering: str = "sets") -> None:
        self.netns_name = netns_name
        self.rendering = rendering
        self._applied: Objects | None = None
        self._applied_rs: Ruleset | None = None
        self._applied_gen: int | None = None    # ruleset generation right after our apply
        self._reader: NetlinkCounterReader | None = None
        self._writer: NetlinkElementWriter | None = None
        self._exec = netns.NetnsExecutor(netns_name)
        self._nft: Nft | None = None

    # -- plumbing -------------------------------------------------------------------------
    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._nft is not None:
            nft, self._nft = self._nft, None
            self._exec.call(nft.close)
        self._exec.close()

    def __enter__(self) -> "NftBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _run(self, fn, *args, **kw):
        def call():
            if self._nft is None:
                self._nft = Nft()
            return fn(self._nft, *args, **kw)
        return self._exec.call(call)

    # -- reading --------------------------------------------------------------------------
    def live_objects(self) -> LiveObjects:
        """The names of what the sgagent table holds, without its rules and elements (cheap:
        chains and tersely listed sets and maps through libnftables, counters over netlink)."""
        def names(nft: Nft) -> tuple[set, set, bool]:
            chains, sets = set(), set()
            nft_items = []
            for what, terse in (("chains", False), ("sets", True), ("maps", True)):
                nft_items += nft.list_json(f"{what} {FAMILY}", terse=terse)
            for item in nft_items:
                for kind in ("chain", "set", "map"):
                    obj = item.get(kind)
                    if obj and obj.get("table") == TABLE:
                        if kind == "chain":
                            chains.add(obj["name"])
                        else:
                            sets.add(f"{kind} {obj['name']}")
            tables = nft.list_json(f"tables {FAMILY}", terse=True)
            return chains, sets, any(t.get("table", {}).get("name") == TABLE for t in tables)

        chains, sets, table = self._run(names)
        counters = {counter_name(r.key) for r in self.counters()} if table else set()
        return LiveObjects(frozenset(chains), frozenset(sets), frozenset(counters), table)

    def counters(self) -> list[CounterReading]:
        """Every sgagent counter with its identity, in one consistent read of the kernel
        (over netlink, on its own socket: a read never waits for an apply)."""
        return self._netlink()()

    def counters_via_listing(self) -> list[CounterReading]:
        """The same counters through libnftables' JSON listing: slower (it loads the whole
        table), kept as an independent second reader to check the netlink one against."""
        items = self._run(lambda nft: nft.list_json(f"counters table {TABLE_REF}"))
        out = []
        for item in items:
            c = item.get("counter")
            key = parse_comment(c.get("comment", "")) if c else None
            if key is not None:
                out.append(CounterReading(key, int(c.get("packets", 0)), int(c.get("bytes", 0))))
        return out

    def _netlink(self) -> NetlinkCounterReader:
        if self._reader is None:
            self._reader = NetlinkCounterReader(self.netns_name)
        return self._reader

    def live_text(self) -> str:
        """The live table as nft lists it, without counter values ('' if there is none)."""
        try:
            return self._run(lambda nft: nft.run(f"list table {TABLE_REF}", stateless=True))
        except NftError as exc:
            if "No such file or directory" in str(exc):
                return ""
            raise

    @staticmethod
    def fingerprint(listing: str) -> str | None:
        """A digest of a table listing (:meth:`live_text`) that does not depend on the order
        in which nft lists objects and set elements, so that the same ruleset loaded twice
        (by the boot restore, then by the daemon) has the same one; None for no table."""
        if not listing:
            return None
        return hashlib.sha256("".join(_normalised(listing)).encode()).hexdigest()

    # -- writing --------------------------------------------------------------------------
    def render(self, rs: Ruleset) -> Objects:
        old, old_rs = self._applied, self._applied_rs
        if (old is not None and old_rs is not None and self.rendering == "sets"
                and rs.chains == old_rs.chains):
            # Only members changed: touch their elements, not the whole ruleset.
            objs = member_update(old, old_rs, rs)
            if objs is not None:
                return objs
        return render(rs, self.rendering)

    def replace_script(self, objs: Objects) -> str:
        live = self.live_objects()
        return objs.replace_script(live.chains, live.sets, live.counters)

    def apply(self, rs: Ruleset, *, dry_run: bool = False, full: bool = False) -> ApplyResult:
        """Make the kernel enforce ``rs`` in one transaction.  After a first apply by this
        backend, only the difference is sent, as long as nothing else committed to the
        namespace's ruleset since (its generation is unchanged); otherwise, with ``full``, or
        when the delta is refused, the whole table's contents are replaced, also atomically.
        Counters of kept rules keep counting either way."""
        gen = self._generation()
        if gen is None or gen != self._applied_gen:
            self.forget()
        objs = self.render(rs)
        script, mode = None, "full"
        if not full and not dry_run and objs.element_changes is not None and self._applied:
            try:  # only elements changed: straight over netlink, one atomic batch
                self._elements().send(_faulty_changes(objs.element_changes), gen)
            except NetlinkError:
                objs.element_changes = None  # refused, nothing changed: libnftables below
            else:
                self._applied, self._applied_rs = objs, rs
                after = self._generation()
                self._applied_gen = after if gen is not None and after == gen + 1 else None
                return ApplyResult(objs, "delta", sum(len(g) + len(c) for _, _, g, c in
                                                      objs.element_changes), "netlink")
        if not full and self._applied is not None:
            script, mode = objs.delta_script(self._applied), "delta"
        if script is None:
            script = self.replace_script(objs)
        try:
            if script:
                self._run(lambda nft: nft.run(_faulty(script), dry_run=dry_run))
        except NftError as exc:
            if mode != "delta":
                raise ApplyError(f"the kernel refused the ruleset, nothing was changed: {exc}") from None
            script, mode = self.replace_script(objs), "full"
            try:
                self._run(lambda nft: nft.run(_faulty(script), dry_run=dry_run))
            except NftError as exc2:
                raise ApplyError(
                    f"the kernel refused the ruleset, nothing was changed: {exc2}") from None
        if not dry_run:
            after = self._generation()
            committed = 1 if script else 0
            self._applied, self._applied_rs = objs, rs
            # Trust the memory next time only if ours was the one commit in between.
            self._applied_gen = after if gen is not None and after == gen + committed else None
        return ApplyResult(objs, mode, script.count("\n"))

    def _elements(self) -> NetlinkElementWriter:
        if self._writer is None:
            self._writer = NetlinkElementWriter(self.netns_name)
        return self._writer

    def _generation(self) -> int | None:
        try:
            return self._netlink().generation()
        except NetlinkError:
            return None

    def forget(self) -> None:
        """Drop the memory of the last apply: the next one replaces the whole table."""
        self._applied = self._applied_rs = self._applied_gen = None

    def flush(self) -> bool:
        """Remove the sgagent table and everything in it; False if there was none."""
        self.forget()
        if not self.live_objects().table:
            return False
        self._run(lambda nft: nft.run(f"delete table {TABLE_REF}"))
        return True

    def diff(self, rs: Ruleset) -> str:
        """A unified diff from the live table to the one ``apply`` would leave."""
        text = render(rs, self.rendering).text()
        with netns.NetnsExecutor.scratch() as scratch:
            def load():
                nft = Nft()
                try:
                    nft.run(text)
                    return nft.run(f"list table {TABLE_REF}", stateless=True)
                finally:
                    nft.close()
            want = scratch.call(load)
        have = self.live_text()
        return "".join(difflib.unified_diff(
            _normalised(have), _normalised(want), fromfile="live", tofile="apply"))


def _faulty_changes(changes: list) -> list:
    path = os.environ.get(FAULT_ENV)
    if path and os.path.exists(path):
        return changes + [("injected_fault_no_such_set", 4, ["192.0.2.1"], [])]
    return changes


def _faulty(script: str) -> str:
    path = os.environ.get(FAULT_ENV)
    if path and os.path.exists(path):
        return script + f"delete chain {TABLE_REF} injected_fault_no_such_chain\n"
    return script


def _normalised(listing: str) -> list[str]:
    """nft's listing with its top-level blocks sorted by kind and name, so that the order in
    which objects were created does not show up as a difference."""
    head: list[str] = []
    blocks: list[list[str]] = []
    for line in listing.splitlines(keepends=True):
        if not line.strip() or line.strip() == "}" and not line.startswith("\t"):
            continue
        if line.startswith("\t") and not line.startswith("\t\t") and line.rstrip().endswith("{"):
            blocks.append([line])
        elif blocks:
            blocks[-1].append(line)
        else:
            head.append(line)
    order = {"counter": 0, "set": 1, "map": 2, "chain": 3}
    blocks.sort(key=lambda b: (order.get(b[0].split()[0], 9), b[0]))
    return head + [line for b in blocks for line in _sorted_elements(b)] + (["}\n"] if head else [])


def _sorted_elements(block: list[str]) -> list[str]:
    """A set or map's elements one per line, sorted (nft lists them in insertion order)."""
    text = "".join(block)
    m = re.search(r"elements = \{(.*?)\}\n", text, flags=re.S)
    if not m:
        return block
    items = sorted(i.strip() for i in m.group(1).split(",") if i.strip())
    listed = "".join(f"\t\t\t{i}\n" for i in items)
    return (text[:m.start()] + "elements = {\n" + listed + "\t\t}\n" + text[m.end():]).splitlines(
        keepends=True)
