#!/usr/bin/env python3
"""The iptables backend side by side with nftables (issue 11): apply time and connect latency,
and python-iptables against iptables-restore / iptables-save.

1. **Apply** (``--apply-sizes``, default 1,000 and 10,000 rules of bench/docgen.py's mix):
   a first apply into an empty namespace, then the same document again (nothing to change),
   then reading every counter, for: nftables set rendering (NftBackend), iptables set
   rendering in the legacy and the nf_tables variant, and a linear iptables chain (legacy).
2. **First packet** at ``--size`` (10,000) rules: connect latency (p50, closed loop, as
   bench/connrate.py) for no firewall, conntrack only, the nftables sets, the iptables sets
   (legacy and nf_tables) and the linear iptables chain, each in its own pair of namespaces,
   measured interleaved; the target: iptables sets within 15 % of conntrack only.
   ``--before COMMIT`` adds the iptables set rendering of that commit (its
   agent/ipt/render.py, applied by today's backend) to both parts, in both variants.
3. **python-iptables** (``iptc``, if importable; legacy tables only): committing N rules
   into one chain and reading their counters, against ``iptables-legacy-restore`` and
   ``iptables-legacy-save -c`` of the same rules, at 1,000 and 10,000.

    .venv/bin/python bench/iptables.py [--apply-sizes 1000,10000] [--size 10000] [--reps 5]
        [--before COMMIT]

Writes bench/results/iptables.json.  Needs root, gcc, nft, iptables, ipset.  Everything runs
in namespaces it creates and removes.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as common  # noqa: E402
import connrate  # noqa: E402
import docgen  # noqa: E402
from sgagent.backend.kernel import ApplyError  # noqa: E402
from sgagent.compiler import compile_document  # noqa: E402
from sgagent.ipt.backend import IptBackend  # noqa: E402
from sgagent.load import parse_data  # noqa: E402
from sgagent.nft.backend import NftBackend  # noqa: E402

OUT = common.RESULTS / "iptables.json"
KINDS = {  # name -> (backend maker)
    "nftables sets": lambda ns: NftBackend(ns, "sets"),
    "iptables sets (legacy)": lambda ns: IptBackend(ns, "sets", variant="legacy"),
    "iptables sets (nf_tables)": lambda ns: IptBackend(ns, "sets", variant="nft"),
    "iptables linear (legacy)": lambda ns: IptBackend(ns, "linear", variant="legacy"),
}


def add_before(commit: str) -> list[str]:
    """Kinds rendering with ``commit``'s agent/ipt/render.py (both variants): their names."""
    src = subprocess.run(["git", "show", f"{commit}:agent/ipt/render.py"], check=True,
                         capture_output=True, text=True, cwd=common.ROOT).stdout
    spec = importlib.util.spec_from_loader("sgagent.ipt.render_before", loader=None)
    old = importlib.util.module_from_spec(spec)
    old.__package__ = "sgagent.ipt"
    sys.modules[spec.name] = old  # (dataclasses look their module up)
    exec(compile(src, f"{commit}:agent/ipt/render.py", "exec"), old.__dict__)  # noqa: S102

    class Before(IptBackend):
        def render(self, rs):
            return old.render(rs, self.rendering)
    names = []
    for variant, label in (("legacy", "legacy"), ("nft", "nf_tables")):
        name = f"iptables sets ({label}, {commit})"
        KINDS[name] = lambda ns, v=variant: Before(ns, "sets", variant=v)
        names.append(name)
    return names


def timed(fn) -> tuple[float, Any]:
    t0 = time.perf_counter()
    try:
        out = fn()
    except (ApplyError, subprocess.TimeoutExpired) as exc:
        return time.perf_counter() - t0, f"failed: {str(exc)[:200]}"
    return time.perf_counter() - t0, out


def apply_times(sizes: list[int], seed: int, log) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        rs = compile_document(parse_data(docgen.generate(n, seed=seed, group_peers=0.02)))
        for kind, make in KINDS.items():
            ns = f"{common.token()}a"
            with common.namespaces([ns]):
                be = make(ns)
                first, r1 = timed(lambda: be.apply(rs))
                row: dict[str, Any] = {"rules": n, "backend": kind,
                                       "first_apply_s": common.rnd(first, 3)}
                if isinstance(r1, str):
                    row["error"] = r1
                else:
                    again, _ = timed(lambda: be.apply(rs))
                    read, c = timed(be.counters)
                    row.update({"same_again_s": common.rnd(again, 3),
                                "counters_s": common.rnd(read, 3),
                                "counters": len(c) if not isinstance(c, str) else c})
                    if isinstance(be, IptBackend):
                        t = be.render(rs)
                        row["chains"] = sum(len(c) for c in t.chains.values())
                        row["ipsets"] = len(t.sets)
                be.close()
            log(f"iptables bench: apply {n:,} {kind}: {row}")
            rows.append(row)
    return rows


CONFIGS = [("none", None), ("conntrack only", None), ("nftables sets", "nftables sets"),
           ("iptables sets (legacy)", "iptables sets (legacy)"),
           ("iptables sets (nf_tables)", "iptables sets (nf_tables)"),
           ("iptables linear (legacy)", "iptables linear (legacy)")]
TARGETS = ("iptables sets (legacy)", "iptables sets (nf_tables)")


def first_packet(size: int, reps: int, seconds: float, seed: int, log) -> list[dict[str, Any]]:
    tok = common.token()
    names = [n for i in range(len(CONFIGS)) for n in (f"{tok}h{i}", f"{tok}c{i}")]
    samples: dict[str, list[dict[str, Any]]] = {c: [] for c, _ in CONFIGS}
    loads: dict[str, Any] = {}
    doc = docgen.generate(size, seed=seed, group_peers=0.02)
    rs = compile_document(parse_data(doc))
    backends = []
    with tempfile.TemporaryDirectory(prefix="sgbench-") as tmp, common.namespaces(names):
        exe = connrate.build(Path(tmp))
        pairs = []
        try:
            for i, (name, kind) in enumerate(CONFIGS):
                pair = connrate.Pair(f"{tok}h{i}", f"{tok}c{i}", exe)
                pairs.append(pair)
                pair.wire()
                pair.start_server()
                if name == "conntrack only":
                    common.in_ns(pair.host, "nft", "-f", "-", input=connrate.CT_ONLY)
                elif kind is not None:
                    be = KINDS[kind](pair.host)
                    backends.append(be)
                    t, _ = timed(lambda: be.apply(rs))
                    loads[name] = common.rnd(t, 2)
                pair.measure(0.3, 1)  # warm up
                log(f"iptables bench: loaded {name}")
            for rep in range(reps):
                order = list(range(len(CONFIGS)))
                order = order[rep % len(order):] + order[:rep % len(order)]
                for i in order:
                    samples[CONFIGS[i][0]].append(pairs[i].measure(seconds, 1))
                log(f"iptables bench: first-packet round {rep + 1}/{reps}")
            counted = {}
            for be, (name, _) in zip(backends, [c for c in CONFIGS if c[1]]):
                counted[name] = sum(r.packets for r in be.counters()
                                    if r.key.rule == "bench-client")
        finally:
            for be in backends:
                with contextlib.suppress(Exception):
                    be.close()
            for p in pairs:
                p.close()
    ct = samples["conntrack only"]
    rows = []
    for name, _ in CONFIGS:
        s = samples[name]
        rows.append({
            "ruleset": name, "rules": size if name not in ("none", "conntrack only") else 0,
            "apply_s": loads.get(name),
            "p50_us": common.median([m["p50_us"] for m in s]),
            "p99_us": common.median([m["p99_us"] for m in s]),
            "rate": common.rnd(common.median([m["rate"] for m in s]), 1),
            "p50_vs_conntrack_only": common.rnd(common.median(
                [m["p50_us"] / b["p50_us"] for m, b in zip(s, ct) if b["p50_us"]]), 3),
            "counted_on_client_rule": counted.get(name),
            "connections": sum(m["connections"] for m in s),
        })
    return rows


IPTC_CHILD = r"""
import json, sys, time
import iptc
n = int(sys.argv[1])
t0 = time.perf_counter()
table = iptc.Table(iptc.Table.FILTER)
table.autocommit = False
chain = table.create_chain("sgbench")
for i in range(n):
    r = iptc.Rule()
    r.src = f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}/32"
    r.protocol = "tcp"
    m = r.create_match("tcp")
    m.dport = str(1 + i % 60000)
    r.target = iptc.Target(r, "ACCEPT")
    chain.append_rule(r)
table.commit()
t1 = time.perf_counter()
table = iptc.Table(iptc.Table.FILTER)
table.refresh()
total = sum(rule.get_counters()[0] for rule in iptc.Chain(table, "sgbench").rules)
t2 = time.perf_counter()
print(json.dumps({"commit_s": t1 - t0, "counters_s": t2 - t1, "rules": n}))
"""


def python_iptables(sizes: list[int], log) -> dict[str, Any]:
    try:
        import iptc  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - not installed, or no libiptc
        return {"available": False, "why": str(exc)[:200]}
    rows = []
    for n in sizes:
        ns = f"{common.token()}p"
        with common.namespaces([ns]):
            out = common.in_ns(ns, sys.executable, "-c", IPTC_CHILD, str(n), timeout=1200)
            lib = json.loads(out.stdout)
        ns = f"{common.token()}r"
        with common.namespaces([ns]):
            lines = ["*filter", ":sgbench - [0:0]"]
            lines += [f"-A sgbench -s 10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}/32 -p tcp "
                      f"-m tcp --dport {1 + i % 60000} -j ACCEPT" for i in range(n)]
            lines.append("COMMIT")
            t0 = time.perf_counter()
            common.in_ns(ns, "iptables-legacy-restore", "-w", "--noflush",
                         input="\n".join(lines) + "\n")
            t1 = time.perf_counter()
            common.in_ns(ns, "iptables-legacy-save", "-c", "-t", "filter")
            t2 = time.perf_counter()
        row = {"rules": n, "python_iptables_commit_s": common.rnd(lib["commit_s"], 3),
               "python_iptables_counters_s": common.rnd(lib["counters_s"], 3),
               "restore_s": common.rnd(t1 - t0, 3), "save_c_s": common.rnd(t2 - t1, 3)}
        log(f"iptables bench: python-iptables {row}")
        rows.append(row)
    return {"available": True, "rows": rows}


def markdown(res: dict[str, Any]) -> str:
    lines = ["Apply (first into an empty namespace; the same document again; every counter "
             "read), bench/docgen.py's mix:", "",
             "| rules | backend | first apply s | same again s | counters s | chains | ipsets |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for r in res["apply"]:
        lines.append(f"| {r['rules']:,} | {r['backend']} | {r['first_apply_s']} | "
                     f"{r.get('same_again_s', r.get('error', ''))} | {r.get('counters_s', '')} "
                     f"| {r.get('chains', '')} | {r.get('ipsets', '')} |")
    lines += ["", f"First packet (connect latency, closed loop) at {res['params']['size']:,} rules:",
              "", "| ruleset | p50 µs | p99 µs | p50 vs conntrack only | conn/s | counted |",
              "|---|---:|---:|---:|---:|---|"]
    for r in res["first_packet"]:
        counted = (f"{r['counted_on_client_rule']:,} / {r['connections']:,}"
                   if r["counted_on_client_rule"] is not None else "–")
        lines.append(f"| {r['ruleset']} | {r['p50_us']} | {r['p99_us']} | "
                     f"{r['p50_vs_conntrack_only']} | {r['rate']} | {counted} |")
    p = res["python_iptables"]
    if p.get("available"):
        lines += ["", "python-iptables (legacy) vs iptables-restore / iptables-save -c:", "",
                  "| rules | iptc commit s | iptables-restore s | iptc counters s | "
                  "iptables-save -c s |", "|---:|---:|---:|---:|---:|"]
        for r in p["rows"]:
            lines.append(f"| {r['rules']:,} | {r['python_iptables_commit_s']} | {r['restore_s']} "
                         f"| {r['python_iptables_counters_s']} | {r['save_c_s']} |")
    else:
        lines += ["", f"python-iptables: not available ({p.get('why')})"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--apply-sizes", default="1000,10000")
    ap.add_argument("--size", type=int, default=10_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--skip", default="", help="comma list of: apply, packet, iptc")
    ap.add_argument("--before", default="", help="a commit whose iptables set rendering is "
                    "measured too")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    common.require_root()
    skip = set(filter(None, args.skip.split(",")))
    sizes = [int(x) for x in args.apply_sizes.split(",") if x]
    if args.before:
        CONFIGS.extend((n, n) for n in add_before(args.before))

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)
    res: dict[str, Any] = {
        "benchmark": "iptables", "date": common.now_iso(), "machine": common.machine(),
        "code": common.code_version(),
        "params": {"apply_sizes": sizes, "size": args.size, "reps": args.reps,
                   "seconds": args.seconds, "seed": args.seed, "before": args.before or None},
        "apply": [] if "apply" in skip else apply_times(sizes, args.seed, log),
        "first_packet": [] if "packet" in skip else first_packet(
            args.size, args.reps, args.seconds, args.seed, log),
        "python_iptables": {"available": False, "why": "skipped"} if "iptc" in skip
        else python_iptables([1000, 10_000], log),
    }
    fp = {r["ruleset"]: r for r in res["first_packet"]}
    values = {k: fp[k]["p50_vs_conntrack_only"] for k in TARGETS if k in fp}
    if values:
        res["target"] = {"what": "median connect latency at 10,000 rules within 15 % of "
                                 "conntrack only (iptables sets, each variant)",
                         "values": values,
                         "met": all(v is not None and v <= 1.15 for v in values.values())}
    common.write_json(args.out, res)
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
