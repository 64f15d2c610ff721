#!/usr/bin/env python3
"""Run every benchmark, one after the other, and write bench/results/SUMMARY.md.

    sudo .venv/bin/python bench/run_all.py            # the full run (about 12 minutes)
    sudo .venv/bin/python bench/run_all.py --quick    # tiny sizes, a smoke run (seconds)
    .venv/bin/python bench/run_all.py --summary-only  # rebuild SUMMARY.md from the JSON files

Each benchmark writes its own JSON (connrate.json, apply.json, membership.json) next to
SUMMARY.md; the summary starts with the issue's targets, met or missed and by how much.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import apply as apply_bench  # noqa: E402
import benchlib as common  # noqa: E402
import connrate  # noqa: E402
import membership  # noqa: E402

QUICK = {
    "connrate": dict(sizes=[50, 200], reps=1, seconds=0.2, linear_max=200, heldout_sizes=[200]),
    "apply": dict(sizes=[50, 200], reps=1, large_reps=1, profile_size=200),
    "membership": dict(sizes=[50, 200], refs=100, changes=2),
}
FULL = {
    "connrate": dict(sizes=[1, 1000, 10_000, 50_000], reps=5, seconds=1.5, linear_max=10_000,
                     heldout_sizes=[10_000]),
    "apply": dict(sizes=[1000, 10_000, 50_000], reps=3, large_reps=1, profile_size=10_000),
    "membership": dict(sizes=[100, 1000, 10_000], refs=1000, changes=10),
}
BENCHES = {"connrate": connrate, "apply": apply_bench, "membership": membership}


def targets(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    cr = results.get("connrate")
    if cr:
        r = next((c for c in cr["configs"] if c["name"] == "sets-10000" and c.get("vs_none")), None)
        rows.append({"target": "new connections/s at 10,000 rules >= 90% of no firewall",
                     "measured": common.pct(r["vs_none"]) if r else "n/a",
                     "met": None if r is None else r["vs_none"] >= 0.9,
                     "by": None if r is None or r["vs_none"] >= 0.9 else
                     f"{100 * (0.9 - r['vs_none']):.0f} points short"})
    ap = results.get("apply")
    if ap:
        r = next((s for s in ap["sizes"] if s["rules"] == 10_000), None)
        rows.append({"target": "full apply of 10,000 rules <= 0.3 s end to end",
                     "measured": f"{r['cli_s']:.2f} s" if r else "n/a",
                     "met": None if r is None else r["cli_s"] <= 0.3,
                     "by": None if r is None or r["cli_s"] <= 0.3 else
                     f"{r['cli_s'] / 0.3:.1f}x the target"})
        rows.append({"target": "full apply of 10,000 rules <= 2x raw nft -f of the same text",
                     "measured": f"{r['cli_vs_nft_f']:.1f}x ({r['cli_s']:.2f} s vs {r['nft_f_s']:.2f} s)"
                     if r else "n/a",
                     "met": None if r is None else r["cli_vs_nft_f"] <= 2.0,
                     "by": None if r is None or r["cli_vs_nft_f"] <= 2.0 else
                     f"{r['cli_vs_nft_f'] / 2:.1f}x the target"})
        r = next((s for s in ap["sizes"] if s["rules"] == 50_000), None)
        rows.append({"target": "peak RSS of the apply <= 80 MB at 50,000 rules",
                     "measured": f"{r['cli_maxrss_mb']:.0f} MB" if r else "n/a",
                     "met": None if r is None else r["cli_maxrss_mb"] <= 80,
                     "by": None if r is None or r["cli_maxrss_mb"] <= 80 else
                     f"{r['cli_maxrss_mb'] / 80:.1f}x the target"})
    mb = results.get("membership")
    if mb:
        got = {s["rules"]: s for s in mb["sizes"]}
        both = [got[n] for n in (100, 10_000) if n in got]
        worst = max((s["apply_ms"] for s in both), default=None)
        rows.append({"target": "a membership change <= 20 ms, the same at 100 and 10,000 rules",
                     "measured": " / ".join(f"{s['apply_ms']:.1f} ms at {s['rules']:,}" for s in both)
                     or "n/a",
                     "met": None if worst is None else worst <= 20,
                     "by": None if worst is None or worst <= 20 else f"{worst / 20:.1f}x the target"})
    return rows


def summary(results: dict[str, dict[str, Any]]) -> str:
    any_res = next(iter(results.values()), None)
    m = any_res["machine"] if any_res else {}
    code = m.get("code", {})
    lines = [
        "# sgagent benchmarks: latest results",
        "",
        f"Measured {max(r['date'] for r in results.values()) if results else '?'} on "
        f"{m.get('cpus')} CPUs ({m.get('cpu')}), kernel {m.get('kernel')}, {m.get('nft')}, "
        f"Python {m.get('python')}; commit {code.get('commit', '?')}"
        f"{' with local changes in agent/' if code.get('agent_modified') else ''}. "
        "Shared machine: every figure is compared with its baseline in the same run, "
        "interleaved. Reproduce with `sudo .venv/bin/python bench/run_all.py`.",
        "",
        "## Targets (issue 3)",
        "",
        "Why each missed target is missed, and what dominates: bench/README.md.",
        "",
        "| target | measured | status | by how much |",
        "|---|---|---|---|",
    ]
    for t in targets(results):
        lines.append(f"| {t['target']} | {t['measured']} | {common.met(t['met'])} | {t['by'] or ''} |")
    titles = {"connrate": "New connections per second and connect latency",
              "apply": "Full apply, and peak RSS",
              "membership": "One member added to a group referenced by 1,000 rules"}
    for name in ("connrate", "apply", "membership"):
        if name in results:
            lines += ["", f"## {titles[name]}", "", BENCHES[name].markdown(results[name]).rstrip()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    ap.add_argument("--only", default="connrate,apply,membership")
    ap.add_argument("--summary-only", action="store_true")
    ap.add_argument("--out-dir", type=Path, default=common.RESULTS)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    out = a.out_dir
    plan = QUICK if a.quick else FULL
    if a.child:  # one benchmark, in its own interpreter
        t0 = time.monotonic()
        res = BENCHES[a.child].run(**plan[a.child])
        res["wall_s"] = round(time.monotonic() - t0, 1)
        common.write_json(out / f"{a.child}.json", res)
        return 0
    results: dict[str, dict[str, Any]] = {}
    if not a.summary_only:
        for name in a.only.split(","):
            # Each benchmark in a fresh process: none inherits another's heap or threads.
            subprocess.run([sys.executable, __file__, "--child", name, "--out-dir", str(out)]
                           + (["--quick"] if a.quick else []), check=True)
            print(f"== {name} done", flush=True)
    for name in BENCHES:
        f = out / f"{name}.json"
        if f.exists():
            results[name] = json.loads(f.read_text())
    text = summary(results)
    (out / "SUMMARY.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
