"""The nftables kernel of a network namespace, as :class:`sgagent.backend.kernel.Kernel`:
a transaction goes in as one netlink batch (:mod:`sgagent.nft.batch`), a full load as well as
a change (libnftables would first parse the text, or load its cache of the whole table);
a transaction with a shape the batch encoder does not know, a batch the kernel refused, and a
dry run go as nft text through one libnftables context; counters and the generation are read
over netlink; changes made by others are reported by a :class:`~sgagent.nft.monitor.TableMonitor`.  Every
libnftables call runs on a thread inside the namespace (``None``: this process's)."""

from __future__ import annotations

import re
from typing import Callable

from .. import netns
from ..backend.kernel import CounterReading, Executed, Refused
from ..backend.transaction import DeleteTable, LiveObjects, Transaction
from .batch import NetlinkBatchWriter, encode_batch
from .libnft import Nft, NftError
from .logcounters import SuppressedReader
from .names import parse_comment
from .netlink import NetlinkCounterReader, NetlinkError, TableNames, new_socket
from .objects import REF
from .script import script


class NftKernel:
    def __init__(self, netns_name: str | None = None, *,
                 executor: netns.NetnsExecutor | None = None) -> None:
        self.netns_name = netns_name
        self._exec = executor or netns.NetnsExecutor(netns_name)
        self._nft: Nft | None = None
        self._reader: NetlinkCounterReader | None = None
        self._suppressed: SuppressedReader | None = None
        self._writer: NetlinkBatchWriter | None = None
        self._names: TableNames | None = None

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._suppressed is not None:
            self._suppressed.close()
            self._suppressed = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._names is not None:
            self._names.close()
            self._names = None
        if self._nft is not None:
            nft, self._nft = self._nft, None
            self._exec.call(nft.close)
        self._exec.close()

    def _run(self, fn, *args, **kw):
        def call():
            if self._nft is None:
                self._nft = Nft()
            return fn(self._nft, *args, **kw)
        return self._exec.call(call)

    def _open_socket(self):
        """A netlink socket in this kernel's namespace, opened on its executor's thread (a
        scratch namespace has no name to open one by)."""
        return self._exec.call(new_socket)

    def _netlink(self) -> NetlinkCounterReader:
        if self._reader is None:
            self._reader = NetlinkCounterReader(self.netns_name, opener=self._open_socket)
        return self._reader

    def _batches(self) -> NetlinkBatchWriter:
        if self._writer is None:
            self._writer = NetlinkBatchWriter(self.netns_name, opener=self._open_socket)
        return self._writer

    # -- writing --------------------------------------------------------------------------
    def execute(self, tx: Transaction, *, genid: int | None = None,
                dry_run: bool = False) -> Executed:
        """The transaction as one netlink batch (refused if anything else committed since
        ``genid``), whatever its size -- a full load too; a transaction with a shape the
        encoder does not know, a batch the kernel refused, and a dry run as nft text
        through libnftables (which then says why it refuses)."""
        if not dry_run:
            writer = self._batches()
            batch = encode_batch(tx.ops, writer.next_seq(), genid)
            if batch is not None:
                try:
                    writer.send(batch)
                except NetlinkError:
                    pass  # refused, nothing changed: through libnftables below
                else:
                    return Executed("netlink", tx.element_count if tx.elements_only
                                    else batch.count)
                del batch
        text = script(tx)
        if text:
            try:
                self._run(lambda nft: nft.run(text, dry_run=dry_run))
            except NftError as exc:
                raise Refused(str(exc)) from None
        return Executed("libnftables", text.count("\n"))

    @property
    def last_batch(self) -> tuple[int, float]:
        """Bytes and seconds (send to the kernel's last answer) of the last netlink batch."""
        return self._writer.last_batch if self._writer is not None else (0, 0.0)

    def delete_table(self) -> bool:
        """Remove the sgagent table and everything in it; False if there was none."""
        if not self.live().table:
            return False
        self._run(lambda nft: nft.run(script(Transaction([DeleteTable()]))))
        return True

    # -- reading --------------------------------------------------------------------------
    def generation(self) -> int | None:
        try:
            return self._netlink().generation()
        except NetlinkError:
            return None

    def live(self) -> LiveObjects:
        """The names of what the sgagent table holds, without its rules and elements (cheap:
        its chains, named sets and maps, and counters are dumped over netlink)."""
        if self._names is None:
            self._names = TableNames(self.netns_name, opener=self._open_socket)
        table, chains, sets, counters = self._names.names()
        return LiveObjects(frozenset(chains), frozenset(sets), frozenset(counters), table)

    def counters(self) -> list[CounterReading]:
        """Every sgagent counter with its identity, in one consistent read of the kernel
        (over netlink, on its own socket: a read never waits for an apply)."""
        return self._netlink()()

    def suppressed(self) -> list[CounterReading]:
        """Per logged decision, the records its rate limit held back (``packets``), over
        netlink on a socket of its own kept open like the counters' (thread-safe)."""
        if self._suppressed is None:
            self._suppressed = SuppressedReader(self.netns_name, opener=self._open_socket)
        return self._suppressed()

    def counters_via_listing(self) -> list[CounterReading]:
        """The same counters through libnftables' JSON listing: slower (it loads the whole
        table), kept as an independent second reader to check the netlink one against."""
        items = self._run(lambda nft: nft.list_json(f"counters table {REF}"))
        out = []
        for item in items:
            c = item.get("counter")
            key = parse_comment(c.get("comment", "")) if c else None
            if key is not None:
                out.append(CounterReading(key, int(c.get("packets", 0)), int(c.get("bytes", 0))))
        return out

    def listing(self) -> str:
        """The live table as nft lists it, without counter values ('' if there is none)."""
        try:
            return self._run(lambda nft: nft.run(f"list table {REF}", stateless=True))
        except NftError as exc:
            if "No such file or directory" in str(exc):
                return ""
            raise

    def normalised(self, listing: str) -> list[str]:
        return normalised(listing)

    def watch(self, on_change: Callable[[], None]):
        """A started :class:`~sgagent.nft.monitor.TableMonitor` of this namespace."""
        from .monitor import TableMonitor
        monitor = TableMonitor(self.netns_name, on_change)
        monitor.start()
        return monitor

    def scratch(self) -> "NftKernel":
        """A kernel in a fresh anonymous network namespace, freed when closed."""
        return NftKernel(executor=netns.NetnsExecutor.scratch())

    def __enter__(self) -> "NftKernel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def normalised(listing: str) -> list[str]:
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
