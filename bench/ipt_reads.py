#!/usr/bin/env python3
"""What the iptables backend's reads cost (issue 11): a metrics scrape, and an apply of an
unchanged document from a new process, at 1,000 and 10,000 rules (bench/docgen.py's mix), in
the legacy and the nf_tables variant, each in a namespace of its own (created here, removed
at the end, whatever happens).

* **Scrape**: ``registry.exposition()`` of a registry reading the rule counters and the
  suppressed flow-record counters from the backend, as the daemon builds it (one
  ``iptables-save -c`` per family serves both); beside it the two reads alone: the rule
  counters, and the suppressed counters read on their own -- before, a scrape made both.
* **Unchanged apply, new process**: a child process compiles the document and applies it
  (``IptBackend.apply``) to a namespace that already holds it; the apply's own time and the
  process's.  For this tree, or ``--current COMMIT`` ("new": the mark says nothing changed),
  and for ``--before`` ("old", by default the commit before the mark), each checked out as a
  temporary ``git worktree``, side by side on the same namespace; "new, unmarked": this tree's apply right after the old one
  (which drops the mark): a full compare, then the mark written.

    .venv/bin/python bench/ipt_reads.py [--sizes 1000,10000] [--variants legacy,nft]
                                        [--reps 3] [--before COMMIT] [--current COMMIT]

Writes bench/results/ipt_reads.json.  Needs root, git, iptables, ipset.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as common  # noqa: E402
import docgen  # noqa: E402
import startup  # noqa: E402  (its worktree helpers)
from sgagent.ipt.backend import IptBackend  # noqa: E402
from sgagent.metrics import AgentStats, build_registry  # noqa: E402

OUT = common.RESULTS / "ipt_reads.json"
BEFORE = "a63f53d"  # the last commit before the mark and the one-pass scrape

# One apply in a child process: "compile_s apply_s mode" on stdout.
CHILD = """
import json, sys, time
t0 = time.perf_counter()
from sgagent.compiler import compile_document
from sgagent.ipt.backend import IptBackend
from sgagent.load import parse_data
doc, ns, variant = sys.argv[1:4]
with open(doc) as fh:
    rs = compile_document(parse_data(json.load(fh)))
t1 = time.perf_counter()
with IptBackend(ns, "sets", variant=variant) as be:
    r = be.apply(rs)
t2 = time.perf_counter()
print(json.dumps({"compile_s": t1 - t0, "apply_s": t2 - t1, "mode": r.mode}))
"""


def child_apply(doc: Path, ns: str, variant: str, env: dict[str, str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    proc = subprocess.run([common.PYTHON, "-c", CHILD, str(doc), ns, variant], env=env,
                          capture_output=True, text=True, timeout=900, cwd=common.ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"apply in a child failed: {proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_s"] = wall
    return out


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def med(xs: list[float], nd: int = 3) -> float | None:
    return common.rnd(common.median(xs), nd)


def measure(size: int, variant: str, reps: int, envs: dict[str, dict[str, str]],
            tmp: Path, log) -> dict[str, Any]:
    data = docgen.generate(size, seed=1, group_peers=0.02)
    doc = tmp / f"doc-{size}.json"
    doc.write_text(json.dumps(data))
    ns = f"{common.token()}r"
    row: dict[str, Any] = {"rules": size, "variant": variant}
    with common.namespaces([ns]):
        first = child_apply(doc, ns, variant, envs["new"])
        row["first_apply_s"] = common.rnd(first["apply_s"], 3)
        log(f"{size} {variant}: first apply {first['apply_s']:.2f} s")
        new, old, unmarked = [], [], []
        for _ in range(reps):
            new.append(child_apply(doc, ns, variant, envs["new"]))
            old.append(child_apply(doc, ns, variant, envs["old"]))  # drops the mark
            unmarked.append(child_apply(doc, ns, variant, envs["new"]))  # writes it again
        for name, runs in (("new", new), ("old", old), ("new_unmarked", unmarked)):
            row[f"unchanged_apply_{name}"] = {
                "apply_s": med([r["apply_s"] for r in runs]),
                "process_s": med([r["process_s"] for r in runs]),
                "compile_s": med([r["compile_s"] for r in runs]),
                "modes": sorted({r["mode"] for r in runs})}
        row["unchanged_apply_new_vs_old"] = common.rnd(
            row["unchanged_apply_new"]["apply_s"] / row["unchanged_apply_old"]["apply_s"], 3)
        log(f"{size} {variant}: unchanged apply new {row['unchanged_apply_new']['apply_s']} s,"
            f" old {row['unchanged_apply_old']['apply_s']} s, new unmarked "
            f"{row['unchanged_apply_new_unmarked']['apply_s']} s")
        with IptBackend(ns, "sets", variant=variant) as be:  # what the last new apply left
            registry = build_registry(AgentStats(), be.counters,
                                      read_suppressed=be.suppressed, process=False)
            scrape, counters, suppressed = [], [], []
            for _ in range(max(reps, 3)):
                scrape.append(timed(registry.exposition))
                suppressed.append(timed(be.suppressed))  # no counters() just before: a read
                counters.append(timed(be.counters))
            row["counters"] = len(be.counters())
        row["scrape_s"] = med(scrape)
        row["read_counters_s"] = med(counters)
        row["read_suppressed_alone_s"] = med(suppressed)
        row["scrape_before_s"] = common.rnd(
            common.median(counters) + common.median(suppressed), 3)  # two reads per family
        log(f"{size} {variant}: scrape {row['scrape_s']} s (counters {row['read_counters_s']}"
            f" s + suppressed {row['read_suppressed_alone_s']} s read before)")
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--variants", default="legacy,nft")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--before", default=BEFORE)
    ap.add_argument("--current", default=None,
                    help="measure this commit as 'new' instead of the working tree")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args(argv)
    common.require_root()
    sizes = [int(x) for x in a.sizes.split(",")]
    variants = a.variants.split(",")
    reps = max(1, min(a.reps, 10))
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    rows = []
    with tempfile.TemporaryDirectory(prefix="sgiptreads-") as tmpdir:
        tmp = Path(tmpdir)
        with contextlib.ExitStack() as stack:
            old = stack.enter_context(startup.old_tree(a.before, tmp))
            new = common.ROOT
            if a.current is not None:
                (tmp / "current").mkdir()
                new = stack.enter_context(startup.old_tree(a.current, tmp / "current"))
            envs = {name: startup.environment(startup.package_path(tree, tmp, name), None)
                    for name, tree in (("new", new), ("old", old))}
            for env in envs.values():
                env.pop("PYTHONDONTWRITEBYTECODE", None)
            for size in sizes:
                for variant in variants:
                    rows.append(measure(size, variant, reps, envs, tmp, log))
    res = {"benchmark": "ipt_reads", "date": common.now_iso(), "machine": common.machine(),
           "params": {"sizes": sizes, "variants": variants, "reps": reps,
                      "before": a.before, "current": a.current or "the working tree",
                      "seed": 1},
           "rows": rows}
    common.write_json(a.out, res)
    print(markdown(res))
    return 0


def markdown(res: dict[str, Any]) -> str:
    lines = ["| rules | variant | scrape | before (two reads) | unchanged apply, new process: "
             "new | old | new, unmarked |", "|---:|---|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        lines.append(
            f"| {r['rules']:,} | {r['variant']} | {r['scrape_s']} s | {r['scrape_before_s']} s "
            f"| {r['unchanged_apply_new']['apply_s']} s | {r['unchanged_apply_old']['apply_s']}"
            f" s | {r['unchanged_apply_new_unmarked']['apply_s']} s |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
