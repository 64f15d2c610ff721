"""The two protocols behind the daemon and the CLI, and what they hand back.

A :class:`Kernel` executes :class:`~sgagent.backend.transaction.Transaction` s all or nothing
and reads back what it holds: nftables through libnftables and netlink
(:class:`sgagent.nft.kernel.NftKernel`), the in-memory :class:`sgagent.backend.fake.FakeKernel`,
either wrapped by :class:`sgagent.backend.faults.Faulty`.

A :class:`Backend` turns a ruleset into objects and applies them through its kernel
(:class:`sgagent.nft.backend.NftBackend`; an iptables backend would be another one over the
same kernels' protocol).  The daemon, ``sgagent restore`` and the CLI use only this protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Protocol

from ..ir import CounterKey, Ruleset
from .objects import Objects
from .transaction import LiveObjects, Transaction


class ApplyError(Exception):
    """The kernel refused the ruleset; the previous one is still in force, unchanged."""


class Refused(Exception):
    """A kernel refused a transaction; nothing of it was committed."""


@dataclass(frozen=True)
class CounterReading:
    key: CounterKey
    packets: int
    bytes: int


class Executed(NamedTuple):
    channel: str    # how it reached the kernel: "libnftables", "netlink", "fake"
    commands: int   # lines of text sent; over netlink: elements of an element-only batch,
    #                 else messages


@dataclass(frozen=True)
class ApplyResult:
    objects: Objects
    mode: str         # "delta" | "full"
    commands: int     # lines in the transaction sent to the kernel (over netlink: messages,
    #                   or elements of an element-only batch)
    channel: str = "libnftables"  # or "netlink": one batch straight to the kernel
    generation: int | None = None
    #  the kernel's ruleset generation right after this apply, when its commit was the only
    #  one in between (None: unknown, or another commit came between): as long as the kernel
    #  stays at it, the table is exactly what was applied

    @property
    def counters(self) -> int:
        return len(self.objects.counters)


class Closeable(Protocol):
    def close(self) -> None: ...


class Kernel(Protocol):
    def execute(self, tx: Transaction, *, genid: int | None = None,
                dry_run: bool = False) -> Executed:
        """Commit ``tx`` whole, or raise :class:`Refused` with nothing changed; ``genid``:
        refuse it if anything else committed since that generation (where the channel can
        tell); ``dry_run``: check only."""
        ...

    def generation(self) -> int | None:
        """The ruleset generation, bumped by every commit (None: cannot be read)."""
        ...

    def live(self) -> LiveObjects: ...

    def listing(self) -> str:
        """The live table as text, counter values aside ('' if there is none)."""
        ...

    def normalised(self, listing: str) -> list[str]:
        """A :meth:`listing`'s lines in an order that does not depend on the order objects
        and elements were created in (what a fingerprint and a diff compare)."""
        ...

    def counters(self) -> list[CounterReading]: ...

    def watch(self, on_change: Callable[[], None]) -> Closeable:
        """Call ``on_change()`` when someone else changes the table, until closed."""
        ...

    def scratch(self) -> "Kernel":
        """An empty kernel of the same kind, to load a table into and list it (close it)."""
        ...

    def delete_table(self) -> bool: ...

    def close(self) -> None: ...


class Backend(Protocol):
    name: str

    def apply(self, rs: Ruleset, *, dry_run: bool = False, full: bool = False) -> ApplyResult:
        """Make the kernel enforce ``rs`` in one transaction (``full``: replace the whole
        table, for a repair); :class:`ApplyError` if refused, nothing changed."""
        ...

    def diff(self, rs: Ruleset) -> str: ...

    def counters(self) -> list[CounterReading]: ...

    def live_text(self) -> str: ...

    def fingerprint(self, listing: str) -> str | None: ...

    def loaded(self) -> bool:
        """Whether the kernel holds the sgagent table."""
        ...

    # Optional (the daemon asks with getattr; a backend without it has its table listed and
    # compared at each drift check instead):
    #
    # def generation(self) -> int | None:
    #     """The kernel's ruleset generation now (see ApplyResult.generation)."""

    def flush(self) -> bool: ...

    def watch(self, on_change: Callable[[], None]) -> Closeable: ...

    def close(self) -> None: ...
