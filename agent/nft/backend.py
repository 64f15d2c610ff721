"""The nftables backend (:class:`sgagent.backend.kernel.Backend`): render a ruleset as
nftables objects and apply them through a kernel -- the real one of a network namespace
(:class:`~sgagent.nft.kernel.NftKernel`), or any other that executes the same transactions
(the in-memory fake, in tests) -- diff against the live table, read counters, flush."""

from __future__ import annotations

import difflib
import hashlib
from typing import Callable

from ..backend.applier import Applier
from ..backend.kernel import ApplyError, ApplyResult, CounterReading, Kernel
from ..backend.objects import Objects
from ..backend.transaction import NO_TABLE, LiveObjects, replace
from ..ir import Ruleset
from .kernel import NftKernel
from .render import render
from .setrender import chain_update, member_update

__all__ = ["ApplyError", "ApplyResult", "LiveObjects", "NftBackend"]


class NftBackend:
    name = "nftables"

    def __init__(self, netns_name: str | None = None, rendering: str = "sets", *,
                 kernel: Kernel | None = None) -> None:
        self.netns_name = netns_name
        self.rendering = rendering
        self.kernel: Kernel = kernel if kernel is not None else NftKernel(netns_name)
        self._applier: Applier[Ruleset] = Applier(self.kernel, self.render)

    def close(self) -> None:
        self.kernel.close()

    def __enter__(self) -> "NftBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- reading --------------------------------------------------------------------------
    def live_objects(self) -> LiveObjects:
        """The names of what the sgagent table holds, without its rules and elements."""
        return self.kernel.live()

    def loaded(self) -> bool:
        return self.kernel.live().table

    def counters(self) -> list[CounterReading]:
        """Every sgagent counter with its identity, in one consistent read of the kernel."""
        return self.kernel.counters()

    def suppressed(self) -> list[CounterReading]:
        """Per logged decision, the records its rate limit suppressed (SEMANTICS section 9):
        what the metrics report as ``sgagent_log_suppressed``."""
        return self.kernel.suppressed()  # type: ignore[attr-defined]

    def counters_via_listing(self) -> list[CounterReading]:
        """The same counters read another way (see :meth:`NftKernel.counters_via_listing`)."""
        return self.kernel.counters_via_listing()  # type: ignore[attr-defined]

    def generation(self) -> int | None:
        """The kernel's ruleset generation (bumped by every commit, anyone's; None: cannot
        be read).  While it is :attr:`ApplyResult.generation`, nothing changed since."""
        return self.kernel.generation()

    def live_text(self) -> str:
        """The live table as the kernel lists it, without counter values ('' if none)."""
        return self.kernel.listing()

    def fingerprint(self, listing: str) -> str | None:
        """A digest of a :meth:`live_text` that does not depend on the order in which objects
        and set elements were created, so that the same ruleset loaded twice (by the boot
        restore, then by the daemon) has the same one; None for no table."""
        if not listing:
            return None
        return hashlib.sha256("".join(self.kernel.normalised(listing)).encode()).hexdigest()

    def watch(self, on_change: Callable[[], None]):
        """Call ``on_change()`` when someone else changes the table; close what it returns
        to stop."""
        return self.kernel.watch(on_change)

    # -- writing --------------------------------------------------------------------------
    def render(self, rs: Ruleset, old: Objects | None = None,
               old_rs: Ruleset | None = None) -> Objects:
        """The objects for ``rs``, built from ``old`` (what the kernel holds, rendered from
        ``old_rs``) where they can be: when only members changed, by touching only their
        elements; otherwise by rendering again only the NIC chains that changed."""
        if old is not None and old_rs is not None and self.rendering == "sets":
            objs = None
            if rs.chains == old_rs.chains:
                objs = member_update(old, old_rs, rs)
            if objs is None:
                objs = chain_update(old, old_rs, rs)
            if objs is not None:
                return objs
        return render(rs, self.rendering)

    def apply(self, rs: Ruleset, *, dry_run: bool = False, full: bool = False) -> ApplyResult:
        """Make the kernel enforce ``rs`` in one transaction.  After a first apply by this
        backend, only the difference is sent, as long as nothing else committed to the
        namespace's ruleset since; otherwise, with ``full``, or when the difference is
        refused, the whole table's contents are replaced, also atomically.  Counters of kept
        rules keep counting either way (see :class:`sgagent.backend.applier.Applier`)."""
        return self._applier.apply(rs, dry_run=dry_run, full=full)

    def forget(self) -> None:
        """Drop the memory of the last apply: the next one replaces the whole table."""
        self._applier.forget()

    def flush(self) -> bool:
        """Remove the sgagent table and everything in it; False if there was none."""
        self.forget()
        return self.kernel.delete_table()

    def diff(self, rs: Ruleset) -> str:
        """A unified diff from the live table to the one ``apply`` would leave."""
        objs = render(rs, self.rendering)
        scratch = self.kernel.scratch()
        try:
            scratch.execute(replace(NO_TABLE, objs))
            want = scratch.listing()
        finally:
            scratch.close()
        have = self.live_text()
        return "".join(difflib.unified_diff(
            self.kernel.normalised(have), self.kernel.normalised(want), fromfile="live",
            tofile="apply"))
