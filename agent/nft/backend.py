"""The nftables backend: apply a ruleset atomically, diff it against the live one, read
counters, flush.  Kernel work goes through one libnftables context, optionally inside a named
network namespace (every call then runs on a thread that entered it)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from .. import netns
from ..ir import CounterKey, Ruleset
from .libnft import Nft, NftError
from .names import FAMILY, TABLE, parse_comment
from .render import Rendered, render

BASE_CHAINS = ("input", "forward", "output")
TABLE_REF = f"{FAMILY} {TABLE}"


class ApplyError(Exception):
    """The kernel refused the ruleset; the previous one is still in force, unchanged."""


@dataclass(frozen=True)
class CounterReading:
    key: CounterKey
    packets: int
    bytes: int


@dataclass(frozen=True)
class LiveObjects:
    chains: frozenset[str]
    sets: frozenset[str]
    counters: frozenset[str]
    table: bool


class NftBackend:
    name = "nftables"

    def __init__(self, netns_name: str | None = None) -> None:
        self.netns_name = netns_name
        self._exec = netns.NetnsExecutor(netns_name)
        self._nft: Nft | None = None

    # -- plumbing -------------------------------------------------------------------------
    def close(self) -> None:
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
        items = self._run(lambda nft: nft.list_json(f"table {TABLE_REF}"))
        chains, sets, counters, table = set(), set(), set(), False
        for item in items:
            if "table" in item:
                table = True
            elif "chain" in item:
                chains.add(item["chain"]["name"])
            elif "set" in item:
                sets.add(item["set"]["name"])
            elif "counter" in item:
                counters.add(item["counter"]["name"])
        return LiveObjects(frozenset(chains), frozenset(sets), frozenset(counters), table)

    def counters(self) -> list[CounterReading]:
        """Every sgagent counter with its identity, in one read of the kernel."""
        items = self._run(lambda nft: nft.list_json(f"counters table {TABLE_REF}"))
        out = []
        for item in items:
            c = item.get("counter")
            if not c:
                continue
            key = parse_comment(c.get("comment", ""))
            if key is not None:
                out.append(CounterReading(key, int(c.get("packets", 0)), int(c.get("bytes", 0))))
        return out

    def live_text(self) -> str:
        """The live table as nft lists it, without counter values ('' if there is none)."""
        try:
            return self._run(lambda nft: nft.run(f"list table {TABLE_REF}", stateless=True))
        except NftError as exc:
            if "No such file or directory" in str(exc):
                return ""
            raise

    # -- writing --------------------------------------------------------------------------
    def transaction(self, rs: Ruleset, live: LiveObjects | None = None) -> tuple[str, Rendered]:
        """The one script that replaces the live table's contents with ``rs``, keeping the
        named counters of rules that stay (so their counts never go backwards)."""
        rendered = render(rs)
        live = live if live is not None else self.live_objects()
        head = [f"add table {TABLE_REF}", f"flush table {TABLE_REF}"]
        for name in sorted(live.chains - rendered.chains):
            head.append(f"delete chain {TABLE_REF} {name}")
        for name in sorted(live.sets):
            head.append(f"{'flush' if name in rendered.sets else 'delete'} set {TABLE_REF} {name}")
        for name in sorted(live.counters - rendered.counters):
            head.append(f"delete counter {TABLE_REF} {name}")
        return "\n".join(head) + "\n" + rendered.text, rendered

    def apply(self, rs: Ruleset, *, dry_run: bool = False) -> Rendered:
        script, rendered = self.transaction(rs)
        try:
            self._run(lambda nft: nft.run(script, dry_run=dry_run))
        except NftError as exc:
            raise ApplyError(f"the kernel refused the ruleset, nothing was changed: {exc}") from None
        return rendered

    def flush(self) -> bool:
        """Remove the sgagent table and everything in it; False if there was none."""
        if not self.live_objects().table:
            return False
        self._run(lambda nft: nft.run(f"delete table {TABLE_REF}"))
        return True

    def diff(self, rs: Ruleset) -> str:
        """A unified diff from the live table to the one ``apply`` would leave."""
        rendered = render(rs)
        with netns.NetnsExecutor.scratch() as scratch:
            def load():
                nft = Nft()
                try:
                    nft.run(rendered.text)
                    return nft.run(f"list table {TABLE_REF}", stateless=True)
                finally:
                    nft.close()
            want = scratch.call(load)
        have = self.live_text()
        return "".join(difflib.unified_diff(
            have.splitlines(keepends=True), want.splitlines(keepends=True),
            fromfile="live", tofile="apply"))
