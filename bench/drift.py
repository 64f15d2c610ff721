#!/usr/bin/env python3
"""Drift repair: how long a foreign change of the sgagent table stays in force.

Another process (``ip netns exec NS nft flush table inet sgagent``) empties the table; the
clock runs from that commit to the commit that restores it, both seen on the nftables
notification group of the namespace by an observer in this process (so the observer's own
delay is on both ends), and the table is then checked to be exactly what it was.  N flushes
(``--flushes``, 20 by default), one at a time, for each document size (``--rules``).

Two modes, detected and recorded (``mode`` in the JSON):

* ``daemon``: a real ``sgagent run`` with a file source in the namespace, its periodic check
  (``resync_interval``) set to 600 s, so that only a change listener can repair within the
  measurement: the daemon is used when the first flush at the first size is repaired
  within ``--probe`` seconds (then that flush is the first sample), and for every size;
* ``monitor``: else (the daemon does not listen for changes yet) the daemon is stopped and
  this process repairs as the daemon would: a ``TableMonitor`` whose callback wakes a loop
  that compares the live table with the applied one and re-applies the whole document
  (``NftBackend.apply(full=True)``).

Needs root, ``ip`` and ``nft``; everything happens in a namespace created and deleted here.

    sudo .venv/bin/python bench/drift.py [--flushes 20] [--rules 100,1000,10000]

Writes bench/results/drift.json.
"""

from __future__ import annotations

import argparse
import json
import queue
import re
import select
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import benchlib as common  # noqa: E402
import docgen  # noqa: E402
from sgagent import netns  # noqa: E402
from sgagent.compiler import compile_document  # noqa: E402
from sgagent.load import parse_data  # noqa: E402
from sgagent.nft.backend import NftBackend  # noqa: E402
from sgagent.nft.monitor import CommitListener, Overrun, TableMonitor  # noqa: E402
from tests.daemon.support import Daemon, kill_all, live_table  # noqa: E402

OUT = common.RESULTS / "drift.json"
TARGET_MS = 1000.0
REPAIR_TIMEOUT = 30.0
FLUSH = ["nft", "flush table inet sgagent"]


class Observer:
    """Times commits in a namespace from its notification group."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.listener = CommitListener(ns, rcvbuf=256 << 20)
        self.fd = self.listener.subscribe()
        self.overruns = 0

    def close(self) -> None:
        self.listener.close()

    def drain(self) -> None:
        """Forget what happened so far."""
        while True:
            try:
                if self.listener.read() is None:
                    return
            except Overrun:
                self.overruns += 1

    def flush_and_time(self, expected: str, timeout: float = REPAIR_TIMEOUT) -> dict[str, Any]:
        """Flush the table from another process; times to the restoring commit (waiting at
        most ``timeout`` seconds for it)."""
        self.drain()
        t_start = time.monotonic()
        proc = subprocess.Popen(netns.argv_in(self.ns, FLUSH), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        t_change = t_repair = None
        via = "notifications"
        deadline = t_start + timeout
        while t_repair is None and time.monotonic() < deadline:
            if not select.select([self.fd], [], [], 0.05)[0]:
                continue
            try:
                commits = self.listener.read()
            except Overrun:   # the restoring commit may be among what was lost: list instead
                self.overruns += 1
                via = "listing"
                if t_change is not None and live_table(self.ns) == expected:
                    t_repair = time.monotonic()
                continue
            now = time.monotonic()
            for c in commits or []:
                if not c.touched:
                    continue
                if c.pid == proc.pid and t_change is None:
                    t_change = now
                elif t_change is not None and c.pid != proc.pid:
                    t_repair = now
                    break
        err = proc.communicate(timeout=30)[1]
        if proc.returncode != 0:
            raise RuntimeError(f"the foreign flush failed: {err.decode(errors='replace')}")
        restored = t_repair is not None and self._restored(expected)
        return {"change_ms_after_spawn": None if t_change is None else
                1000 * (t_change - t_start),
                "repair_ms": None if t_repair is None or t_change is None else
                1000 * (t_repair - t_change),
                "from_spawn_ms": None if t_repair is None else 1000 * (t_repair - t_start),
                "restored": restored, "via": via}

    def _restored(self, expected: str) -> bool:
        # the restoring commit is the whole table in one transaction; allow a moment for a
        # second one if the first was not everything
        for _ in range(50):
            if live_table(self.ns) == expected:
                return True
            time.sleep(0.02)
        return False


class InProcessRepair:
    """What the daemon does with the monitor wired in, in this process: the monitor's callback
    wakes a loop that compares the live table with what was applied and re-applies it."""

    def __init__(self, ns: str, doc: dict[str, Any], debounce: float) -> None:
        self.backend = NftBackend(ns)
        self.rs = compile_document(parse_data(doc))
        self.backend.apply(self.rs, full=True)
        self.applied = self.backend.live_text()
        self.events: "queue.SimpleQueue[str]" = queue.SimpleQueue()
        self.repairs = 0
        self.check_ms: list[float] = []   # reading and comparing the live table
        self.apply_ms: list[float] = []   # the repairing apply
        self.monitor = TableMonitor(ns, lambda: self.events.put("drift"), debounce=debounce)
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        self.monitor.start()

    def _loop(self) -> None:
        while True:
            ev = self.events.get()
            if ev == "stop":
                return
            t0 = time.perf_counter()
            drifted = self.backend.live_text() != self.applied
            t1 = time.perf_counter()
            self.check_ms.append(1000 * (t1 - t0))
            if drifted:
                self.backend.apply(self.rs, full=True)
                self.apply_ms.append(1000 * (time.perf_counter() - t1))
                self.repairs += 1

    def close(self) -> None:
        self.monitor.close()
        self.events.put("stop")
        self.thread.join(10)
        self.backend.close()


def stats(ms: list[float]) -> dict[str, Any]:
    return {"n": len(ms), "p50_ms": common.rnd(common.percentile(ms, 0.5)),
            "p90_ms": common.rnd(common.percentile(ms, 0.9)),
            "p99_ms": common.rnd(common.percentile(ms, 0.99)),
            "max_ms": common.rnd(max(ms) if ms else None)}


def measure(work: Path, rules: int, flushes: int, probe: float, debounce: float,
            mode: str | None = None) -> dict[str, Any]:
    """``flushes`` foreign flushes at one document size.  ``mode=None``: find out whether the
    daemon repairs (the first flush, ``probe`` seconds); else the mode found before."""
    ns = common.token()
    doc = docgen.generate(rules)
    path = work / f"host-{rules}.json"
    path.write_text(json.dumps(doc))
    samples: list[dict[str, Any]] = []
    with common.namespaces([ns]):
        observer = Observer(ns)
        d = Daemon({"source": {"file": {"path": str(path)}}, "netns": ns,
                    "state_dir": str(work / f"state-{rules}"), "resync_interval": 600,
                    "log_level": "info"}, work, f"agent-{rules}")
        repair: InProcessRepair | None = None
        try:
            if mode != "monitor":
                d.start()
                d.wait_log("ready:", timeout=600)
                time.sleep(0.5)
                expected = live_table(ns)
                if not expected:
                    raise RuntimeError("the daemon reported ready but the table is not there")
            if mode is None:
                first = observer.flush_and_time(expected, probe)
                if first["repair_ms"] is not None and first["restored"]:
                    mode = "daemon"
                    samples.append(first)
                else:
                    mode = "monitor"
                    d.stop()
            if mode == "monitor":
                repair = InProcessRepair(ns, doc, debounce)
                expected = live_table(ns)
            while len(samples) < flushes:
                time.sleep(0.2)
                samples.append(observer.flush_and_time(expected))
        finally:
            if repair is not None:
                repair.close()
            if d.proc is not None and d.proc.poll() is None:
                d.stop()
            observer.close()
            kill_all()
    ok = [s["repair_ms"] for s in samples if s["repair_ms"] is not None and s["restored"]]
    out: dict[str, Any] = {"rules": rules, "mode": mode, "flushes": len(samples),
                           "repaired": len(ok), **stats(ok),
                           "from_spawn": stats([s["from_spawn_ms"] for s in samples
                                                if s["from_spawn_ms"] is not None]),
                           "within_1s": sum(1 for x in ok if x <= TARGET_MS),
                           "samples_ms": [common.rnd(x) for x in ok],
                           "timed_by_listing": sum(1 for s in samples if s["via"] == "listing"),
                           "observer_overruns": observer.overruns}
    if mode == "daemon":
        log = d.log()
        out["daemon_repairs_logged"] = log.count("drift repaired")
        out["daemon_apply_p50_ms"] = common.rnd(common.median(
            [float(x) for x in re.findall(r"\(repair\): .* in ([\d.]+) ms", log)]))
    else:
        assert repair is not None
        out["debounce_s"] = debounce
        out["in_process_repairs"] = repair.repairs
        out["check_p50_ms"] = common.rnd(common.median(repair.check_ms))
        out["apply_p50_ms"] = common.rnd(common.median(repair.apply_ms))
        out["monitor_overruns"] = repair.monitor.overruns
    return out


def run(rules: list[int], flushes: int = 20, probe: float = 5.0,
        debounce: float = 0.1) -> dict[str, Any]:
    common.require_root()
    res: dict[str, Any] = {"benchmark": "drift", "date": common.now_iso(),
                           "machine": common.machine(),
                           "params": {"rules": rules, "flushes": flushes, "probe_s": probe,
                                      "target_ms": TARGET_MS}}
    res["sizes"] = []
    mode = None
    with tempfile.TemporaryDirectory(prefix="sgb-drift-") as tmp:
        for n in rules:   # the mode is found at the first size, and kept
            res["sizes"].append(measure(Path(tmp), n, flushes, probe, debounce, mode))
            mode = res["sizes"][-1]["mode"]
    res["mode"] = mode
    res["repaired"] = sum(s["repaired"] for s in res["sizes"])
    res["samples_ms"] = [x for s in res["sizes"] for x in s["samples_ms"]]
    return res


def markdown(res: dict[str, Any]) -> str:
    lines = [f"Mode: **{res['mode']}** (daemon: `sgagent run` repaired it; monitor: the daemon "
             "did not, this process's TableMonitor + a full apply did).", "",
             "| rules | flushes | repaired | p50 | p90 | p99 | max | within 1 s |",
             "|---|---|---|---|---|---|---|---|"]
    for s in res["sizes"]:
        lines.append(f"| {s['rules']:,} | {s['flushes']} | {s['repaired']} | "
                     f"{common.fmt(s['p50_ms'], 0, ' ms')} | {common.fmt(s['p90_ms'], 0, ' ms')} | "
                     f"{common.fmt(s['p99_ms'], 0, ' ms')} | {common.fmt(s['max_ms'], 0, ' ms')} | "
                     f"{s['within_1s']}/{s['flushes']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--flushes", type=int, default=20, help="foreign flushes per size (1..200)")
    ap.add_argument("--rules", default="100,1000,10000",
                    help="document sizes, comma-separated (the mode is found at the first)")
    ap.add_argument("--probe", type=float, default=5.0,
                    help="seconds the daemon gets to repair the first flush (first size)")
    ap.add_argument("--debounce", type=float, default=0.1, help="the monitor's, in monitor mode")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args(argv)
    if not 1 <= a.flushes <= 200:
        ap.error("--flushes: between 1 and 200")
    res = run([int(x) for x in a.rules.split(",")], a.flushes, a.probe, a.debounce)
    common.write_json(a.out, res)
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
