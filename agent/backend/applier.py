"""Applying objects through a kernel, change-sized when it can be, whole when it must be.

After a first apply, only the difference from what was applied is sent, as long as nothing
else committed to the ruleset since (the kernel's generation is the one right after our own
commit); otherwise, when asked for a full apply, or when the kernel refuses the difference,
the whole table's contents are replaced, also in one transaction -- and so when the difference
would rebuild much of the table and the kernel takes transactions as text (libnftables takes
such a difference in far more slowly than the table whole).  A kernel that took the last whole
table as one batch (netlink) takes a large difference the same way, faster than the whole
table: it goes as a difference, its changed interval sets added again whole (a batch carries
no single prefixes and ranges).  Counters of kept rules keep counting either way.
Backend-neutral: a backend hands it a kernel and a renderer.
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from .kernel import ApplyError, ApplyResult, Kernel, Refused
from .objects import Objects
from .transaction import AddChain, FlushChain, Transaction, diff, replace

R = TypeVar("R")  # what the renderer renders (a Ruleset)
# A difference that replaces many chains costs far more than loading the table whole (10,000
# rules, every one of 14,000 chains replaced: 17-21 s as a difference, 3.9 s whole; about 1.3 ms
# per chain against 0.28 ms): past this share of the chains, and this many, the whole table
# is replaced instead.
# (as text through libnftables; as one netlink batch a difference is the faster: 10,000 rules,
# a group binding removed, 9,000 of 14,000 chains replaced: ~0.4 s to encode and send against
# ~1.9 s for the table whole).
REPLACE_SHARE = 0.2
REPLACE_MIN_CHAINS = 500
TEXT = "libnftables"   # the channel (Executed.channel) that takes a transaction as text
Render = Callable[[R, "Objects | None", "R | None"], Objects]


class Applier(Generic[R]):
    """``render(desired, applied_objects, applied_ruleset)`` builds the objects for
    ``desired``; it may use what was applied (None after :meth:`forget`) to build them
    cheaply."""

    def __init__(self, kernel: Kernel, render: Render) -> None:
        self.kernel = kernel
        self._render = render
        self.applied: Objects | None = None
        self._applied_rs: R | None = None
        self._applied_gen: int | None = None    # ruleset generation right after our apply
        # Whether the kernel took the last whole table or large difference as one batch (not
        # as text): then a large difference goes as such (see the module's docstring).
        self.batches = False

    def forget(self) -> None:
        """Drop the memory of the last apply: the next one replaces the whole table."""
        self.applied = self._applied_rs = self._applied_gen = None

    def apply(self, rs: R, *, dry_run: bool = False, full: bool = False) -> ApplyResult:
        gen = self.kernel.generation()
        if gen is None or gen != self._applied_gen:
            self.forget()
        objs = self._render(rs, self.applied, self._applied_rs)
        done, mode, tx = None, "delta", None
        if not full and self.applied is not None:
            tx = diff(self.applied, objs)
            large = rebuilds(tx, len(self.applied.chains))
            if large and self.batches:
                tx = diff(self.applied, objs, whole_intervals=True)
            if not large or self.batches:
                try:
                    done = self.kernel.execute(tx, genid=gen, dry_run=dry_run)
                except Refused:
                    done = None
                if done is not None and large and not dry_run:
                    self.batches = done.channel != TEXT
        if done is None:
            mode, tx = "full", replace(self.kernel.live(), objs)
            try:
                done = self.kernel.execute(tx, dry_run=dry_run)
            except Refused as exc:
                raise ApplyError(
                    f"the kernel refused the ruleset, nothing was changed: {exc}") from None
            if not dry_run:
                self.batches = done.channel != TEXT
        if not dry_run:
            after = self.kernel.generation()
            committed = 1 if tx else 0
            self.applied, self._applied_rs = objs, rs
            # Trust the memory next time only if ours was the one commit in between.
            self._applied_gen = after if gen is not None and after == gen + committed else None
        return ApplyResult(objs, mode, done.commands, done.channel,
                           None if dry_run else self._applied_gen)


def rebuilds(tx: Transaction, chains: int) -> bool:
    """Whether ``tx`` creates or empties so many of the table's ``chains`` that loading the
    table whole is faster."""
    touched = sum(1 for op in tx.ops if isinstance(op, (AddChain, FlushChain)))
    return touched >= REPLACE_MIN_CHAINS and touched > REPLACE_SHARE * chains
