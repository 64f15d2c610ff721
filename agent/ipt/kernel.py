"""The iptables of a network namespace: ``iptables-restore -w --noflush`` and
``ip6tables-restore`` for the chains, ``ipset restore`` for the sets, ``iptables-save -c``
to read back, all run inside the namespace (``ip netns exec``).  One variant, ``legacy`` or
``nft`` (iptables-nft), chosen by the caller or detected (:mod:`sgagent.ipt.variant`).

An apply creates the sets it needs that are not loaded yet (sets are named after their
content, so a changed set is a new one), then commits each family's chains in one restore,
then destroys the sets nothing uses any more.  If a restore is refused, the sets it created
are destroyed and a family already committed is put back as it was: the previous ruleset
stays whole.  A set found with other elements than its name promises (someone edited it) is
rebuilt under a temporary name and swapped in.

Reading costs one ``iptables-save`` per family (and an ``ipset save``), whatever is read:
a :class:`Snapshot` serves the apply, the fingerprint and the counters from the same texts.
An apply given a ``mark`` (the digest of what it renders) leaves an empty ipset named after
that mark and the fingerprint of the state it left (:data:`MARK`): a later process that
finds the kernel at that fingerprint with that mark knows the kernel holds exactly what the
mark renders, and need not render it again (:meth:`IptKernel.unchanged`).
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

from .. import netns
from ..backend.kernel import CounterReading, Refused
from .names import PREFIX, ROOTS, key_of, suppressed_key
from .render import FAMILIES, Tables
from .rules import Saved, counters_in, parse_ipset_save, parse_save, restore_script, unhook_script

VARIANTS = ("legacy", "nft")
TIMEOUT = 120
# An empty ipset whose name says what the last apply loaded and the state it left
# (:meth:`IptKernel.unchanged`); ipset names hold at most 31 characters: 84 bits of digest.
MARK = f"{PREFIX}-m-"
_MARK_HEX = 31 - len(MARK)

# What a fingerprint covers, in the order the tools print it: sgagent's chains and their
# rules, the jumps to them (without counters), and sgagent's sets with their elements.
_OWN_LINES = re.compile(r"^(?:\[\d+:\d+\] )?((?::|-A )" + PREFIX + r"\S* .*|"
                        r"-A (?:INPUT|FORWARD|OUTPUT) -j " + PREFIX + r"\S+)$", re.M)
_OWN_SETS = re.compile(r"^((?:create|add) " + PREFIX + r"(?!-m-)\S* .*)$", re.M)
_MARKS = re.compile(r"^create (" + MARK + r"\S+) ", re.M)


@dataclass
class Live:
    saved: dict[int, Saved]
    sets: dict[str, tuple[str, list[str]]]
    marks: tuple[str, ...] = ()

    @property
    def loaded(self) -> bool:
        return any(s.chains for s in self.saved.values())


@dataclass
class Snapshot:
    """One read of sgagent's part of the kernel: ``iptables-save [-c] -t filter`` per family
    and ``ipset save`` ('' when no sgagent set exists), as the tools printed them."""
    saves: dict[int, str]
    ipsets: str

    @cached_property
    def live(self) -> Live:
        sets = {n: v for n, v in parse_ipset_save(self.ipsets).items() if not n.startswith(MARK)}
        return Live({f: parse_save(self.saves[f]) for f in FAMILIES}, sets, self.marks)

    @cached_property
    def marks(self) -> tuple[str, ...]:
        return tuple(_MARKS.findall(self.ipsets))

    @cached_property
    def fingerprint(self) -> str:
        """A digest of sgagent's chains, rules, jumps and sets with their elements (counters
        and marks aside): equal for two reads of the same state, with or without ``-c``."""
        h = hashlib.sha256()
        for family in FAMILIES:
            h.update(f"{family}\n".encode())
            h.update("\n".join(_OWN_LINES.findall(self.saves[family])).encode())
        h.update(b"\nipset\n")
        h.update("\n".join(_OWN_SETS.findall(self.ipsets)).encode())
        return h.hexdigest()


def mark_name(mark: str, fingerprint: str) -> str:
    """The name of the mark set that says: ``mark`` was applied and left ``fingerprint``."""
    return MARK + hashlib.sha256(f"{mark}\n{fingerprint}".encode()).hexdigest()[:_MARK_HEX]


class IptKernel:
    def __init__(self, netns_name: str | None = None, variant: str = "nft") -> None:
        if variant not in VARIANTS:
            raise ValueError(f"iptables variant {variant!r} is not one of {VARIANTS}")
        self.netns_name = netns_name
        self.variant = variant
        self.commands = 0  # processes run (what an apply cost)
        self._watchers: list["Poller"] = []  # told the state each own change left
        # the suppressed-record counts the last counters() read parsed, for suppressed()
        self._suppressed: tuple[float, list[CounterReading]] | None = None
        self._lock = threading.Lock()

    def tool(self, family: int, what: str) -> str:
        return f"{'ip' if family == 4 else 'ip6'}tables-{self.variant}-{what}"

    def run(self, argv: list[str], text: str | None = None, check: bool = True) -> str:
        self.commands += 1
        proc = subprocess.run(netns.argv_in(self.netns_name, argv), input=text,
                              capture_output=True, text=True, timeout=TIMEOUT)
        if check and proc.returncode != 0:
            raise Refused(f"{argv[0]}: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc.stdout

    # -- reading --------------------------------------------------------------------------
    def save(self, family: int, counters: bool = True) -> Saved:
        return parse_save(self.save_text(family, counters))

    def save_text(self, family: int, counters: bool = True) -> str:
        return self.run([self.tool(family, "save"), "-t", "filter"] + (["-c"] if counters else []))

    def ipset_text(self) -> str:
        """``ipset save`` if any sgagent set exists (else '': nothing of others is read)."""
        if not any(n.startswith(PREFIX) for n in self.run(["ipset", "list", "-n"]).split()):
            return ""
        return self.run(["ipset", "save"])

    def ipsets(self) -> dict[str, tuple[str, list[str]]]:
        """sgagent's sets (marks aside): name -> (type, elements)."""
        return {n: v for n, v in parse_ipset_save(self.ipset_text()).items()
                if not n.startswith(MARK)}

    def snapshot(self, counters: bool = True) -> Snapshot:
        return Snapshot({f: self.save_text(f, counters) for f in FAMILIES}, self.ipset_text())

    def live(self) -> Live:
        return self.snapshot().live

    def counters(self) -> list[CounterReading]:
        """Every sgagent counter, from one ``iptables-save -c`` and one ``ip6tables-save -c``
        (a decision counts in both families: the sum).  The same read parses the counts of
        suppressed flow records, which a :meth:`suppressed` right after takes (one read per
        family serves a whole metrics scrape)."""
        rules, held = [], []
        for r in self._read(_rule_or_suppressed):
            kind, key = r.key
            (rules if kind == "rule" else held).append(CounterReading(key, r.packets, r.bytes))
        with self._lock:
            self._suppressed = (time.monotonic(), held)
        return rules

    def _read(self, of) -> list[CounterReading]:
        total: dict = {}
        for family in FAMILIES:
            for key, (p, b) in counters_in(self.save_text(family), of).items():
                op, ob = total.get(key, (0, 0))
                total[key] = (op + p, ob + b)
        return [CounterReading(k, p, b) for k, (p, b) in total.items()]

    def suppressed(self) -> list[CounterReading]:
        """Per logged decision, the records its rate limit suppressed (``packets``), summed
        over both families (each has a limit of its own): what the last :meth:`counters`
        read, if that was less than :data:`SAME_SCRAPE` seconds ago and no other call took
        it (a scrape reads the rule counters first), else a read of its own."""
        with self._lock:
            last, self._suppressed = self._suppressed, None
        if last is not None and time.monotonic() - last[0] < SAME_SCRAPE:
            return last[1]
        return self._read(suppressed_key)

    def fingerprint(self) -> str:
        """A digest of sgagent's chains, jumps and sets with their elements (see
        :attr:`Snapshot.fingerprint`)."""
        return self.snapshot(counters=False).fingerprint

    def unchanged(self, mark: str) -> tuple[bool, Snapshot]:
        """Whether the kernel holds exactly what the apply marked ``mark`` left (the state
        it read after it, and nothing since), and the snapshot that says so."""
        snap = self.snapshot()
        return mark_name(mark, snap.fingerprint) in snap.marks, snap

    # -- writing --------------------------------------------------------------------------
    def _restore(self, family: int, script: str, test: bool = False) -> None:
        if script:
            argv = [self.tool(family, "restore"), "-w", "--noflush", "--counters"] + \
                (["--test"] if test else [])
            self.run(argv, script)

    def _destroy(self, names) -> None:
        """Destroy sets, one by one: a set someone else still uses stays.  A set the rules
        just replaced may still be held for a moment (iptables-nft releases its matches after
        the commit): tried again for up to a second, and at the next apply anyway."""
        left = list(names)
        for _ in range(20):
            if not left:
                return
            if _:
                time.sleep(0.05)
            left = [n for n in left if self._destroy_one(n)]

    def _destroy_one(self, name: str) -> bool:
        """True if the set is still there because something uses it."""
        self.commands += 1
        proc = subprocess.run(netns.argv_in(self.netns_name, ["ipset", "destroy", name]),
                              capture_output=True, text=True, timeout=TIMEOUT)
        return proc.returncode != 0 and "in use" in proc.stderr

    def apply(self, want: Tables, *, full: bool = False, dry_run: bool = False,
              mark: str | None = None, snapshot: Snapshot | None = None) -> bool:
        """Make the namespace hold exactly ``want`` (``full`` or ``mark``: check set elements
        too).  Raise :class:`Refused` with the previous ruleset untouched.  True if it was
        loaded before (the apply was a difference).  ``mark``: what ``want`` was rendered
        from, left in the kernel with the state the apply left (see :meth:`unchanged`).
        ``snapshot``: a read of the kernel made just before, if the caller has one."""
        snap = snapshot if snapshot is not None else self.snapshot()
        live = snap.live
        created = [n for n in want.sets if n not in live.sets]
        check = full or mark is not None
        stale = [n for n in want.sets if n in live.sets and check and
                 (len(live.sets[n][1]) != len(want.sets[n].elements) or
                  set(live.sets[n][1]) != set(want.sets[n].elements))]
        lines = []
        for n in created:
            s = want.sets[n]
            lines.append(s.create(n))
            lines += [f"add {n} {e}" for e in s.elements]
        swaps = []
        if not dry_run:
            for n in stale:
                tmp = f"{n[:27]}-tmp"
                lines.append(want.sets[n].create(tmp))
                lines += [f"add {tmp} {e}" for e in want.sets[n].elements]
                swaps.append((tmp, n))
        if lines:
            try:
                self.run(["ipset", "restore"], "\n".join(lines) + "\n")
            except Refused:
                self._destroy(created + [t for t, _ in swaps])
                raise
        scripts = {f: restore_script(live.saved[f], want.chains[f]) for f in FAMILIES}
        done: list[int] = []
        try:
            for f in FAMILIES:
                self._restore(f, scripts[f], test=dry_run)
                done.append(f)
        except Refused:
            if not dry_run:
                for f in done:  # put back what was committed, counts carried
                    back = {n: tuple(r) for n, r in live.saved[f].chains.items()}
                    added = set(ROOTS) - live.saved[f].hooked
                    self._restore(f, restore_script(self.save(f), back, hook=False,
                                                    unhook=added))
            self._destroy(created + [t for t, _ in swaps])
            raise
        if dry_run:
            self._destroy(created)
            return live.loaded
        if swaps:
            self.run(["ipset", "restore"], "".join(f"swap {t} {n}\n" for t, n in swaps))
            self._destroy(t for t, _ in swaps)
        unused = [n for n in live.sets if n not in want.sets]
        self._destroy(unused)
        # nothing sent: the state is the one just read (no second read for the mark)
        same = not lines and not unused and not any(scripts.values())
        self._announce(mark, live.marks, snap.fingerprint if same else None)
        return live.loaded

    def flush(self) -> bool:
        """Remove the jumps and every sgagent chain and set; False if there were none."""
        live = self.live()
        found = live.loaded or bool(live.sets) or any(s.hooked for s in live.saved.values())
        for f in FAMILIES:
            self._restore(f, unhook_script(live.saved[f].chains, live.saved[f].hooked))
        self._destroy([*live.sets, *live.marks])
        self._announce()
        return found

    def watch(self, on_change: Callable[[], None], interval: float = 1.0) -> "Poller":
        poller = Poller(self, on_change, interval)
        poller.start()
        self._watchers.append(poller)
        return poller

    def _announce(self, mark: str | None = None, marks: tuple[str, ...] = (),
                  fingerprint: str | None = None) -> None:
        """Tell the watches the state sgagent's own change left (its ``fingerprint``, read
        if not given), so they do not report it, and (``mark``) leave the mark of that state
        in place of the ``marks`` before."""
        self._watchers = [w for w in self._watchers if w.running]
        if not self._watchers and mark is None:
            return
        fp = fingerprint if fingerprint is not None else self.fingerprint()
        for w in self._watchers:
            w.expect(fp)
        if mark is not None:
            name = mark_name(mark, fp)
            lines = [f"destroy {n}\n" for n in marks if n != name]
            if name not in marks:
                lines.append(f"create {name} hash:ip\n")
            if lines:
                self.run(["ipset", "restore"], "".join(lines))

    def close(self) -> None:
        pass


def _rule_or_suppressed(comment: str):
    """A comment's decision, tagged with what it counts (the rule, or its suppressed
    records), so that one pass over a save reads both."""
    key = key_of(comment)
    if key is not None:
        return ("rule", key)
    key = suppressed_key(comment)
    return ("suppressed", key) if key is not None else None


# How old the suppressed counts a counters() read parsed may be for suppressed() to take them
# (the two reads of one metrics scrape follow each other at once).
SAME_SCRAPE = 2.0


class Poller:
    """Drift watch for iptables, which sends no change notifications sgagent can read:
    every ``interval`` seconds (longer for a table whose read takes long: at most a tenth
    of the time reading), the fingerprint of sgagent's chains, jumps and sets with their
    elements (two ``iptables-save``, one ``ipset list -n`` and one ``ipset save``);
    ``on_change()`` when it moved, unless to the state sgagent's own last apply or flush
    left (the kernel reads it after each, for its watches)."""

    def __init__(self, kernel: IptKernel, on_change: Callable[[], None], interval: float):
        self._kernel = IptKernel(kernel.netns_name, kernel.variant)
        self._expected: str | None = None
        self._lock = threading.Lock()
        self._on_change = on_change
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sgagent-ipt-watch",
                                        daemon=True)

    def start(self) -> None:
        self._last = self._read()
        self._thread.start()

    @property
    def running(self) -> bool:
        return not self._stop.is_set()

    def expect(self, fingerprint: str) -> None:
        """sgagent itself left the table in this state: not a change to report."""
        with self._lock:
            self._expected = fingerprint

    def _read(self) -> str | None:
        try:
            return self._kernel.fingerprint()
        except (Refused, OSError, subprocess.SubprocessError):
            return None

    def _loop(self) -> None:
        wait = self._interval
        while not self._stop.wait(wait):
            t0 = time.monotonic()
            now = self._read()
            # at most a tenth of a core: a large table (two saves of 16,000 chains and an
            # ipset save of 200,000 elements at 10,000 rules) is read less often
            wait = max(self._interval, 9 * (time.monotonic() - t0))
            with self._lock:
                own, self._expected = self._expected, None
            if now != self._last:
                self._last = now
                if now != own:  # not the state sgagent's own apply or flush left
                    self._on_change()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
