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
"""

from __future__ import annotations

import hashlib
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable

from .. import netns
from ..backend.kernel import CounterReading, Refused
from .names import PREFIX, ROOTS, key_of, suppressed_key
from .render import FAMILIES, Tables
from .rules import Saved, counters_in, parse_ipset_save, parse_save, restore_script, unhook_script

VARIANTS = ("legacy", "nft")
TIMEOUT = 120


@dataclass
class Live:
    saved: dict[int, Saved]
    sets: dict[str, tuple[str, list[str]]]

    @property
    def loaded(self) -> bool:
        return any(s.chains for s in self.saved.values())


class IptKernel:
    def __init__(self, netns_name: str | None = None, variant: str = "nft") -> None:
        if variant not in VARIANTS:
            raise ValueError(f"iptables variant {variant!r} is not one of {VARIANTS}")
        self.netns_name = netns_name
        self.variant = variant
        self.commands = 0  # processes run (what an apply cost)
        self._watchers: list["Poller"] = []  # told the state each own change left

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
        argv = [self.tool(family, "save"), "-t", "filter"] + (["-c"] if counters else [])
        return parse_save(self.run(argv))

    def ipsets(self) -> dict[str, tuple[str, list[str]]]:
        names = [n for n in self.run(["ipset", "list", "-n"]).split() if n.startswith(PREFIX)]
        if not names:
            return {}
        return parse_ipset_save(self.run(["ipset", "save"]))

    def live(self) -> Live:
        return Live({f: self.save(f) for f in FAMILIES}, self.ipsets())

    def counters(self, of=key_of) -> list[CounterReading]:
        """Every sgagent counter, from one ``iptables-save -c`` and one ``ip6tables-save -c``
        (a decision counts in both families: the sum)."""
        total: dict = {}
        for family in FAMILIES:
            text = self.run([self.tool(family, "save"), "-t", "filter", "-c"])
            for key, (p, b) in counters_in(text, of).items():
                op, ob = total.get(key, (0, 0))
                total[key] = (op + p, ob + b)
        return [CounterReading(k, p, b) for k, (p, b) in total.items()]

    def suppressed(self) -> list[CounterReading]:
        """Per logged decision, the records its rate limit suppressed (``packets``), summed
        over both families (each has a limit of its own)."""
        return self.counters(suppressed_key)

    def fingerprint(self) -> str:
        """A cheap digest of sgagent's chains, jumps and set names (not elements)."""
        h = hashlib.sha256()
        for family in FAMILIES:
            s = self.save(family, counters=False)
            for name in sorted(s.chains):
                h.update(f"{family} {name}\n".encode())
                h.update("\n".join(s.chains[name]).encode())
            h.update(" ".join(sorted(s.hooked)).encode())
        h.update(" ".join(sorted(n for n in self.run(["ipset", "list", "-n"]).split()
                                 if n.startswith(PREFIX))).encode())
        return h.hexdigest()

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

    def apply(self, want: Tables, *, full: bool = False, dry_run: bool = False) -> bool:
        """Make the namespace hold exactly ``want`` (``full``: check set elements too).
        Raise :class:`Refused` with the previous ruleset untouched.  True if it was loaded
        before (the apply was a difference)."""
        live = self.live()
        created = [n for n in want.sets if n not in live.sets]
        stale = [n for n in want.sets if n in live.sets and full and
                 sorted(live.sets[n][1]) != sorted(want.sets[n].elements)]
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
        self._destroy(n for n in live.sets if n not in want.sets)
        self._announce()
        return live.loaded

    def flush(self) -> bool:
        """Remove the jumps and every sgagent chain and set; False if there were none."""
        live = self.live()
        found = live.loaded or bool(live.sets) or any(s.hooked for s in live.saved.values())
        for f in FAMILIES:
            self._restore(f, unhook_script(live.saved[f].chains, live.saved[f].hooked))
        self._destroy(live.sets)
        self._announce()
        return found

    def watch(self, on_change: Callable[[], None], interval: float = 1.0) -> "Poller":
        poller = Poller(self, on_change, interval)
        poller.start()
        self._watchers.append(poller)
        return poller

    def _announce(self) -> None:
        """Tell the watches the state sgagent's own change left, so they do not report it."""
        self._watchers = [w for w in self._watchers if w.running]
        if self._watchers:
            fp = self.fingerprint()
            for w in self._watchers:
                w.expect(fp)

    def close(self) -> None:
        pass


class Poller:
    """Drift watch for iptables, which sends no change notifications sgagent can read:
    every ``interval`` seconds (longer for a table whose read takes long: at most a tenth
    of the time reading), the fingerprint of sgagent's chains, jumps and set names (two
    ``iptables-save`` and one ``ipset list -n``); ``on_change()`` when it moved, unless to
    the state sgagent's own last apply or flush left (the kernel reads it after each, for
    its watches).  Set elements are checked by
    the daemon's periodic full check (``live_text``)."""

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
            # at most a tenth of a core: a large table (two saves of 24,000 chains at 10,000
            # rules) is read less often
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
