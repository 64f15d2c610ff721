#!/usr/bin/env python3
"""Full apply: wall time from CLI start to rules in place, against raw ``nft -f`` of the same
text, and the peak RSS of the apply.

For each size (generated documents, bench/docgen.py, written as JSON) and each round, each
into a brand-new empty namespace, interleaved:

* ``cli``: ``sgagent apply DOC --netns NS`` as a subprocess, wall clock from spawn to exit (the
  CLI exits after the kernel committed the transaction, so the rules are in place); its peak
  RSS from ``wait4``;
* ``nft -f``: ``nft -f`` of ``sgagent compile DOC`` (the same set-compiled text) into an
  empty namespace, wall clock and peak RSS;
* ``in-process``: :meth:`NftBackend.apply` alone on an already compiled ruleset, with the
  part spent in the kernel measured apart (the netlink batch from send to the kernel's last
  answer, and anything that went through libnftables);
* diagnostic ``cli, gc off``: the same CLI run with Python's cyclic garbage collector disabled,
  to show what the collector costs on these object graphs;
* ``cli --version``: interpreter start and imports, the floor of any CLI run;
* with ``--baseline COMMIT``, ``cli, baseline``: the same CLI run with the package as it was at
  that commit (``git archive`` into a temporary directory), side by side in the same rounds.

Once per size, in this process: the phases of the CLI path (read+validate, compile, render,
text) timed one by one, and at ``--profile-size`` a cProfile of them (top functions by own time).

    .venv/bin/python bench/apply.py [--sizes 1000,10000,50000] [--reps 3] [--large-reps 1]
                                    [--baseline COMMIT]

Writes bench/results/apply.json (``--out``).  Needs root and nft.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as common  # noqa: E402
import docgen  # noqa: E402
from sgagent.compiler import compile_document  # noqa: E402
from sgagent.load import load_file  # noqa: E402
from sgagent.nft.backend import NftBackend  # noqa: E402
from sgagent.nft.render import render  # noqa: E402

OUT = common.RESULTS / "apply.json"
NOGC = ("import gc, sys; gc.disable(); from sgagent.cli import main; "
        "sys.exit(main(sys.argv[1:]))")
METHODS = ("cli", "nft -f", "in-process", "cli, gc off")
BASELINE = "cli, baseline"
RUN_CLI = "import sys; from sgagent.cli import main; sys.exit(main(sys.argv[1:]))"
ROOT = Path(__file__).resolve().parents[1]


def extract(commit: str, into: Path) -> Path:
    """The package as it was at ``commit``, importable as ``sgagent`` from the returned path."""
    into.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "agent"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    (into / "sgagent").symlink_to(into / "agent")
    return into


def timed_child(argv: list[str], timeout: float = 900) -> dict[str, Any]:
    """Wall time (fork to exit), exit status and peak RSS of a command, its output kept."""
    with tempfile.NamedTemporaryFile(prefix="sgbench-", suffix=".rss") as res, \
            tempfile.TemporaryFile() as out:
        proc = subprocess.run([common.PYTHON, "-S", "-c", common.RSS_HELPER, res.name, *argv],
                              stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                              timeout=timeout)
        out.seek(0)
        text = out.read().decode(errors="replace")
        fields = Path(res.name).read_text().split()
        if proc.returncode != 0 or len(fields) != 3 or fields[2] != "0":
            raise RuntimeError(f"{' '.join(argv[:5])}... failed: {text[-2000:]}")
    return {"s": float(fields[0]), "maxrss_mb": int(fields[1]) / 1024, "output": text}


class TimedNft:
    """Stands in for the backend's libnftables context and times every command it runs."""

    def __init__(self, inner) -> None:
        self.inner, self.runs = inner, []

    def run(self, script: str, **kw):
        t0 = time.perf_counter()
        try:
            return self.inner.run(script, **kw)
        finally:
            self.runs.append((time.perf_counter() - t0, len(script)))

    def list_json(self, *args, **kw):
        t0 = time.perf_counter()
        try:
            return self.inner.list_json(*args, **kw)
        finally:
            self.runs.append((time.perf_counter() - t0, 0))

    def __getattr__(self, name: str):  # anything else the backend uses, untimed
        return getattr(self.inner, name)


def in_process(ns: str, path: Path) -> dict[str, Any]:
    rs = compile_document(load_file(path))
    be = NftBackend(ns, "sets")
    try:
        be.kernel._run(lambda nft: None)  # create the libnftables context before the clock starts
        timed = TimedNft(be.kernel._nft)
        be.kernel._nft = timed
        rss0 = _maxrss_mb()
        t0 = time.perf_counter()
        result = be.apply(rs)
        wall = time.perf_counter() - t0
        rss1 = _maxrss_mb()
        batch_bytes, batch_s = be.kernel.last_batch
    finally:
        be.close()
    lib = sum(t for t, _ in timed.runs)
    return {"s": wall, "libnftables_s": lib, "netlink_s": batch_s, "netlink_bytes": batch_bytes,
            "kernel_s": lib + batch_s, "python_s": wall - lib - batch_s,
            "peak_rss_mb_before_apply": rss0, "peak_rss_mb_after_apply": rss1,
            "script_bytes": max((b for _, b in timed.runs), default=0),
            "commands": result.commands}


def _maxrss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def phases(path: Path) -> dict[str, float]:
    """The CLI's steps one by one, with this (fresh) process's peak RSS after each."""
    import sgagent.cli  # noqa: F401  (what the CLI imports anyway, not timed)
    rss = {"imports": _maxrss_mb()}
    t0 = time.perf_counter()
    doc = load_file(path)
    t1 = time.perf_counter()
    rss["read_validate"] = _maxrss_mb()
    rs = compile_document(doc)
    t2 = time.perf_counter()
    rss["compile"] = _maxrss_mb()
    objs = render(rs, "sets")
    t3 = time.perf_counter()
    rss["render"] = _maxrss_mb()
    text = objs.text()
    t4 = time.perf_counter()
    rss["text"] = _maxrss_mb()
    return {"read_validate_s": t1 - t0, "compile_s": t2 - t1, "render_s": t3 - t2,
            "text_s": t4 - t3, "text_bytes": len(text), "peak_rss_mb_after": rss}


def profile(path: Path, top: int = 15) -> list[dict[str, Any]]:
    pr = cProfile.Profile()
    pr.enable()
    render(compile_document(load_file(path)), "sets").text()
    pr.disable()
    st = pstats.Stats(pr, stream=io.StringIO())
    rows = []
    for (fname, line, func), (cc, nc, tt, ct, _) in st.stats.items():  # type: ignore[attr-defined]
        rows.append({"function": f"{Path(fname).name}:{line}({func})", "calls": nc,
                     "own_s": round(tt, 3), "cumulative_s": round(ct, 3)})
    rows.sort(key=lambda r: -r["own_s"])
    return rows[:top]


def child(what: str, path: Path, ns: str | None = None) -> Any:
    """Run in_process / phases / profile in a fresh interpreter (a daemon or the CLI starts
    with an empty heap; this process holds every document, which would slow the collector)."""
    argv = [common.PYTHON, __file__, "--child", what, str(path)] + ([ns] if ns else [])
    with tempfile.NamedTemporaryFile(prefix="sgbench-", suffix=".rss") as res:
        # Through the small helper, so that the peak RSS the child reports is its own.
        out = subprocess.run([common.PYTHON, "-S", "-c", common.RSS_HELPER, res.name, *argv],
                             capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"apply.py --child {what} failed: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def child_main(what: str, path: str, ns: str | None) -> int:
    fn = {"in-process": lambda: in_process(ns, Path(path)), "phases": lambda: phases(Path(path)),
          "profile": lambda: profile(Path(path))}[what]
    print(json.dumps(fn()))
    return 0


def run(sizes: list[int] | None = None, reps: int = 3, large_reps: int = 1,
        profile_size: int | None = 10_000, seed: int = 1, log=print,
        baseline: str | None = None) -> dict[str, Any]:
    common.require_root()
    sizes = sizes or [1000, 10_000, 50_000]
    tok = common.token()
    counter = iter(range(10**6))
    all_methods = METHODS + ((BASELINE,) if baseline else ())
    samples: dict[int, dict[str, list[dict[str, Any]]]] = {n: {m: [] for m in all_methods}
                                                           for n in sizes}
    info: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="sgbench-") as tmp:
        work = Path(tmp)
        base = extract(baseline, work / "baseline") if baseline else None
        docs, texts = {}, {}
        for n in sizes:
            docs[n] = work / f"doc{n}.json"
            docs[n].write_text(json.dumps(docgen.generate(n, seed=seed)))
            texts[n] = work / f"sets{n}.nft"
            c = subprocess.run(common.SGAGENT + ["compile", str(docs[n]), "--rendering", "sets"],
                               check=True, capture_output=True)
            texts[n].write_bytes(c.stdout)
            log(f"apply: phases at {n:,} rules ...")
            info[n] = {"doc_bytes": docs[n].stat().st_size, **child("phases", docs[n])}
            if profile_size == n:
                info[n]["profile_top_own_time"] = child("profile", docs[n])
        startup = []
        rounds = max(reps, large_reps)
        for rep in range(rounds):
            startup.append(timed_child(common.SGAGENT + ["--version"]))
            for n in sizes:
                if rep >= (reps if n <= 10_000 else large_reps):
                    continue
                methods = list(all_methods)
                methods = methods[rep % len(methods):] + methods[:rep % len(methods)]
                for m in methods:
                    ns = f"{tok}a{next(counter)}"
                    with common.namespaces([ns]):
                        if m == "cli":
                            r = timed_child(common.SGAGENT + ["apply", str(docs[n]), "--netns", ns])
                        elif m == "cli, gc off":
                            r = timed_child([common.PYTHON, "-c", NOGC, "apply", str(docs[n]),
                                             "--netns", ns])
                        elif m == BASELINE:
                            r = timed_child(["env", f"PYTHONPATH={base}", common.PYTHON, "-c",
                                             RUN_CLI, "apply", str(docs[n]), "--netns", ns])
                        elif m == "nft -f":
                            r = timed_child(["ip", "netns", "exec", ns, "nft", "-f", str(texts[n])])
                        else:
                            r = child("in-process", docs[n], ns)
                        if rep == 0 and m == "cli":
                            listed = common.in_ns(ns, "nft", "list", "counters", "table", "inet",
                                                  "sgagent")
                            r["counters_in_kernel"] = listed.stdout.count("\tcounter ")
                    samples[n][m].append(r)
                log(f"apply: round {rep + 1} at {n:,} rules: "
                    + ", ".join(f"{m} {samples[n][m][-1]['s']:.2f}s" for m in all_methods))
    return summarise(sizes, samples, info, startup,
                     {"sizes": sizes, "reps": reps, "large_reps": large_reps, "seed": seed,
                      "baseline": baseline})


def summarise(sizes, samples, info, startup, params) -> dict[str, Any]:
    med = common.median
    rows = []
    for n in sizes:
        s = samples[n]
        row: dict[str, Any] = {"rules": n, **{k: (round(v, 4) if isinstance(v, float) else v)
                                             for k, v in info[n].items()}}
        for m in (m for m in s if s[m]):
            key = m.replace(" -f", "_f").replace(", ", "_").replace(" ", "_").replace("-", "_")
            row[f"{key}_s"] = common.rnd(med([r["s"] for r in s[m]]), 3)
            row[f"{key}_samples_s"] = [round(r["s"], 3) for r in s[m]]
            if m != "in-process":
                row[f"{key}_maxrss_mb"] = common.rnd(med([r["maxrss_mb"] for r in s[m]]), 1)
        ip_ = s["in-process"]
        row["in_process_libnftables_s"] = common.rnd(med([r["libnftables_s"] for r in ip_]), 3)
        row["in_process_netlink_s"] = common.rnd(med([r["netlink_s"] for r in ip_]), 5)
        row["in_process_kernel_s"] = common.rnd(med([r["kernel_s"] for r in ip_]), 5)
        row["in_process_python_s"] = common.rnd(med([r["python_s"] for r in ip_]), 3)
        row["in_process_peak_rss_mb"] = {
            "compiled": common.rnd(med([r["peak_rss_mb_before_apply"] for r in ip_]), 1),
            "applied": common.rnd(med([r["peak_rss_mb_after_apply"] for r in ip_]), 1)}
        row["script_bytes"] = ip_[0]["script_bytes"] if ip_ else None
        row["commands"] = ip_[0]["commands"] if ip_ else None
        row["counters_in_kernel"] = s["cli"][0].get("counters_in_kernel") if s["cli"] else None
        row["cli_vs_nft_f"] = common.rnd(med([a["s"] / b["s"] for a, b in zip(s["cli"], s["nft -f"])]), 2)
        if s.get(BASELINE):
            row["cli_baseline_vs_nft_f"] = common.rnd(med([a["s"] / b["s"] for a, b in
                                                           zip(s[BASELINE], s["nft -f"])]), 2)
            row["cli_vs_cli_baseline"] = common.rnd(med([a["s"] / b["s"] for a, b in
                                                         zip(s["cli"], s[BASELINE])]), 2)
        rows.append(row)
    targets = []
    r10 = next((r for r in rows if r["rules"] == 10_000), None)
    if r10:   # issue 10's targets
        targets.append({"what": "full apply of 10,000 rules <= 1 s end to end",
                        "value_s": r10["cli_s"], "met": r10["cli_s"] <= 1.0})
        targets.append({"what": "full apply of 10,000 rules <= 1.5x raw nft -f",
                        "value_ratio": r10["cli_vs_nft_f"], "met": r10["cli_vs_nft_f"] <= 1.5})
    r100 = next((r for r in rows if r["rules"] == 100_000), None)
    if r100:
        targets.append({"what": "full apply of 100,000 rules <= 10 s, peak RSS <= 500 MB",
                        "value_s": r100["cli_s"], "value_mb": r100["cli_maxrss_mb"],
                        "met": r100["cli_s"] <= 10 and r100["cli_maxrss_mb"] <= 500})
    return {"benchmark": "apply", "date": common.now_iso(), "machine": common.machine(),
            "params": params,
            "cli_startup": {"s": common.rnd(med([r["s"] for r in startup]), 3),
                            "maxrss_mb": common.rnd(med([r["maxrss_mb"] for r in startup]), 1)},
            "sizes": rows, "targets": targets}


def markdown(res: dict[str, Any]) -> str:
    st = res["cli_startup"]
    lines = [
        "Full apply into an empty namespace, set-compiled rendering; medians of interleaved "
        f"rounds ({res['params']['reps']} up to 10,000 rules, {res['params']['large_reps']} "
        f"above). `sgagent --version` alone: {st['s']:.2f} s, {st['maxrss_mb']:.0f} MB.",
        "",
        "| rules | `sgagent apply` (CLI) | raw `nft -f` | CLI / nft -f | in-process `NftBackend.apply` "
        "(of which in the kernel) | CLI, gc off | peak RSS CLI | peak RSS nft -f | script |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["sizes"]:
        lines.append(
            f"| {r['rules']:,} | {r['cli_s']:.2f} s | {r['nft_f_s']:.2f} s | {r['cli_vs_nft_f']:.1f}x "
            f"| {r['in_process_s']:.2f} s ({r['in_process_kernel_s']:.2f} s) "
            f"| {r['cli_gc_off_s']:.2f} s | {r['cli_maxrss_mb']:.0f} MB | {r['nft_f_maxrss_mb']:.0f} MB "
            f"| {r['script_bytes'] / 1e6:.1f} MB, {r['commands']:,} lines |")
    for r in res["sizes"]:
        if "cli_baseline_s" in r:
            lines.append(f"\nAt {r['rules']:,} rules the CLI as at {res['params']['baseline']}: "
                         f"{r['cli_baseline_s']:.2f} s ({r['cli_baseline_vs_nft_f']:.1f}x nft -f), "
                         f"peak RSS {r['cli_baseline_maxrss_mb']:.0f} MB; now / then "
                         f"{r['cli_vs_cli_baseline']:.2f}x.")
    lines += ["", "Where the CLI's time goes (each step timed alone in a fresh process, one run; "
              "the CLI also pays the interpreter start above, and the collector):", "",
              "| rules | read + validate | compile | render | text | kernel (in-process apply) "
              "| peak RSS after imports / validate / compile / render / text / apply | kernel objects |",
              "|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in res["sizes"]:
        rss = r.get("peak_rss_mb_after") or {}
        steps = [rss.get(k) for k in ("imports", "read_validate", "compile", "render", "text")]
        steps.append((r.get("in_process_peak_rss_mb") or {}).get("applied"))
        lines.append(f"| {r['rules']:,} | {r['read_validate_s']:.2f} s | {r['compile_s']:.2f} s "
                     f"| {r['render_s']:.2f} s | {r['text_s']:.2f} s "
                     f"| {r['in_process_kernel_s']:.2f} s "
                     f"| {' / '.join(common.fmt(x) for x in steps)} MB "
                     f"| {r['counters_in_kernel']:,} counters |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--child"]:
        return child_main(argv[1], argv[2], argv[3] if len(argv) > 3 else None)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000,10000,50000")
    ap.add_argument("--reps", type=int, default=3, help="rounds for sizes up to 10,000")
    ap.add_argument("--large-reps", type=int, default=1, help="rounds for larger sizes")
    ap.add_argument("--profile-size", type=int, default=10_000, help="0: no profile")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--baseline", metavar="COMMIT",
                    help="also run the CLI as it was at this commit, side by side")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args(argv)
    res = run([int(x) for x in a.sizes.split(",")], a.reps, a.large_reps,
              a.profile_size or None, a.seed, baseline=a.baseline)
    common.write_json(a.out, res)
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
