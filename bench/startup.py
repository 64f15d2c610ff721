#!/usr/bin/env python3
"""Start-up of the command line (issue 10, item 4): what a short command costs from exec to exit.

Measured side by side in one run, interleaved round by round (the order rotates):

* ``python -c pass``: the interpreter alone (with the venv's site), the floor of any command;
* ``sgagent --version``, ``sgagent validate DOC`` and ``sgagent compile DOC`` (a small example
  document), each for this checkout ("new") and for the tree of ``--before`` ("old", by default
  the last commit before the start-up work), checked out as a temporary ``git worktree`` that
  is removed at the end.

Every command runs as the ``sgagent`` script runs it (``from sgagent.cli import main``) with
``PYTHONPATH`` naming a directory in which ``sgagent`` is that tree's ``agent/``. Bytecode is
cached as an installed package has it (``PYTHONPYCACHEPREFIX`` in a temporary directory, warmed
by one run of each command before the first round; ``--no-bytecode-cache`` writes none, so that
sgagent's modules, which have none in a checkout, are compiled from source at each run). Wall
time is fork to exit, CPU time the child's user + system time (steadier than wall time on a
shared machine: it leaves out the time the command waited for a core) and peak RSS the child's
``ru_maxrss``, all taken by a small helper
interpreter that forks the command (a child forked from a bigger process keeps that process's
high-water mark through exec). Outputs of old and new are compared once (``same_output``).

    .venv/bin/python bench/startup.py [--rounds 20] [--before COMMIT] [--doc PATH]

Writes bench/results/startup.json (``--out``).  Needs git; no root.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as common  # noqa: E402

OUT = common.RESULTS / "startup.json"
ROOT = common.ROOT
# The last commit before the start-up work: the CLI imported typer, pydantic, the compiler and
# the nftables backend for every command, --version included.
BEFORE = "153ef44"
DOC = ROOT / "examples" / "alibaba" / "s5-web-some-vpc.yaml"
MAX_ROUNDS = 200
ISSUE_FIGURE_S = 0.36  # "a small fraction of today's 0.36 s" (issue 10)

# The body of the ``sgagent`` console script.
ENTRY = "import sys; from sgagent.cli import main; sys.exit(main())"
WHERE = "import sgagent; print(sgagent.__file__)"
# What the libraries cost by themselves (this tree): where the time of validate goes.
DIAGNOSTICS = {
    "pydantic: import, one model": "from pydantic import BaseModel\nclass A(BaseModel): x: int",
    "typer: import, as the CLI loads it (its parameter types load pydantic)":
        "import typer, typer._adapters",
    "sgagent.load: reader, model and checks, no CLI": "import sgagent.load",
}

# Forks and execs one command, waits, and writes "wall_s maxrss_kb exit_code cpu_s" to a file.  Run
# with -S -E: it imports only built-in modules, so its own high-water mark stays below any
# child's.
_HELPER = """
import os, sys, time
out, argv = sys.argv[1], sys.argv[2:]
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        fd = os.open(os.devnull, os.O_RDWR)
        os.dup2(fd, 0); os.dup2(fd, 1); os.dup2(fd, 2)
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_, st, ru = os.wait4(pid, 0)
t1 = time.perf_counter()
with open(out, "w") as f:
    f.write(f"{t1 - t0} {ru.ru_maxrss} {os.waitstatus_to_exitcode(st)} "
            f"{ru.ru_utime + ru.ru_stime}")
"""


@contextlib.contextmanager
def old_tree(commit: str, tmp: Path) -> Iterator[Path]:
    """The tree of ``commit`` as a detached worktree under ``tmp``, removed afterwards."""
    where = tmp / "old"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(where),
                    commit], check=True, capture_output=True, text=True, timeout=120)
    try:
        yield where
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(where)],
                       capture_output=True, timeout=120)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], capture_output=True,
                       timeout=120)


def package_path(tree: Path, tmp: Path, name: str) -> Path:
    """A directory in which ``import sgagent`` finds ``tree``'s agent/ (for PYTHONPATH: it comes
    before the editable install's finder)."""
    d = tmp / f"path-{name}"
    d.mkdir()
    (d / "sgagent").symlink_to(tree / "agent", target_is_directory=True)
    return d


def environment(path: Path, pycache: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
    env["PYTHONPATH"] = str(path)
    if pycache is None:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    else:
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def timed(argv: list[str], env: dict[str, str], result: Path) -> tuple[float, float, float]:
    """Wall seconds, peak RSS (MB) and CPU seconds of one run of ``argv``."""
    proc = subprocess.run([common.PYTHON, "-S", "-E", "-c", _HELPER, str(result), *argv],
                          env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=300,
                          cwd=ROOT)
    fields = result.read_text().split() if result.exists() else []
    result.unlink(missing_ok=True)
    if proc.returncode != 0 or len(fields) != 4 or fields[2] != "0":
        raise RuntimeError(f"{' '.join(argv[-3:])}: failed ({fields}) {proc.stderr[-2000:]!r}")
    return float(fields[0]), int(fields[1]) / 1024, float(fields[3])


def run(rounds: int, before: str, doc: Path, bytecode_cache: bool = True) -> dict[str, Any]:
    rounds = max(1, min(rounds, MAX_ROUNDS))
    commands = {"sgagent --version": ["--version"],
                f"sgagent validate {doc.name}": ["validate", str(doc)],
                f"sgagent compile {doc.name}": ["compile", str(doc)]}
    floor = "python -c pass"
    with tempfile.TemporaryDirectory(prefix="sgstartup-") as tmpdir:
        tmp = Path(tmpdir)
        with old_tree(before, tmp) as old:
            pycache = tmp / "pycache" if bytecode_cache else None
            trees = {"new": ROOT, "old": old}
            envs = {name: environment(package_path(tree, tmp, name), pycache)
                    for name, tree in trees.items()}
            for name, tree in trees.items():  # each tree's sgagent is the one measured
                where = subprocess.run([common.PYTHON, "-c", WHERE], env=envs[name],
                                       capture_output=True, text=True, check=True).stdout.strip()
                if Path(where).resolve() != (tree / "agent" / "__init__.py").resolve():
                    raise RuntimeError(f"{name}: sgagent resolves to {where}, not {tree}/agent")
            configs: dict[tuple[str, str], tuple[list[str], dict[str, str]]] = {
                (floor, "new"): ([common.PYTHON, "-c", "pass"], envs["new"])}
            for label, code in DIAGNOSTICS.items():
                configs[(label, "new")] = ([common.PYTHON, "-c", code], envs["new"])
            for label, args in commands.items():
                for name in trees:
                    configs[(label, name)] = ([common.PYTHON, "-c", ENTRY, *args], envs[name])
            outputs: dict[tuple[str, str], str] = {}
            for key, (argv, env) in configs.items():  # warm-up: caches the bytecode; outputs
                proc = subprocess.run(argv, env=env, capture_output=True, text=True,
                                      timeout=300, cwd=ROOT)
                if proc.returncode != 0:
                    raise RuntimeError(f"{key}: exit {proc.returncode}: {proc.stderr[-2000:]}")
                outputs[key] = proc.stdout
            samples: dict[tuple[str, str], list[tuple[float, float, float]]] = \
                {k: [] for k in configs}
            keys = list(configs)
            for r in range(rounds):
                for key in keys[r % len(keys):] + keys[:r % len(keys)]:
                    samples[key].append(timed(*configs[key], tmp / "result"))
    return summarize(samples, outputs, commands, floor, rounds, before, doc, bytecode_cache)


def stats(xs: list[tuple[float, float, float]]) -> dict[str, Any]:
    wall = [w for w, _, _ in xs]
    rss = [m for _, m, _ in xs]
    return {"median_ms": common.rnd(1000 * common.median(wall), 1),
            "p90_ms": common.rnd(1000 * common.percentile(wall, 0.9), 1),
            "min_ms": common.rnd(1000 * min(wall), 1),
            "cpu_median_ms": common.rnd(1000 * common.median([c for _, _, c in xs]), 1),
            "peak_rss_mb": common.rnd(common.median(rss), 1),
            "peak_rss_mb_max": common.rnd(max(rss), 1)}


def ratio(a: list[tuple[float, float, float]], b: list[tuple[float, float, float]],
          i: int = 0) -> float | None:
    """The median of the per-round ratios of wall times (``i`` 2: CPU times) (a / b)."""
    return common.rnd(common.median([x[i] / y[i] for x, y in zip(a, b)]), 3)


def summarize(samples, outputs, commands, floor, rounds, before, doc,
              bytecode_cache) -> dict[str, Any]:
    base = samples[(floor, "new")]
    rows = {}
    for label in commands:
        new, old = samples[(label, "new")], samples[(label, "old")]
        rows[label] = {
            "new": stats(new), "old": stats(old),
            "new_vs_old": ratio(new, old),
            "new_vs_old_cpu": ratio(new, old, 2),
            "new_vs_floor": ratio(new, base), "old_vs_floor": ratio(old, base),
            "new_above_floor_ms": common.rnd(1000 * (common.median([w for w, _, _ in new])
                                                     - common.median([w for w, _, _ in base])),
                                             1),
            "new_of_issue_figure": common.rnd(common.median([w for w, _, _ in new])
                                              / ISSUE_FIGURE_S, 3),
            "same_output": outputs[(label, "new")] == outputs[(label, "old")],
        }
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", before],
                         capture_output=True, text=True).stdout.strip()
    diagnostics = {}
    for label in DIAGNOSTICS:
        d = stats(samples[(label, "new")])
        d["above_floor_ms"] = common.rnd(d["median_ms"] - stats(base)["median_ms"], 1)
        d["cpu_above_floor_ms"] = common.rnd(d["cpu_median_ms"] - stats(base)["cpu_median_ms"],
                                             1)
        diagnostics[label] = d
    return {"benchmark": "startup", "date": common.now_iso(), "machine": common.machine(),
            "params": {"rounds": rounds, "before": rev or before,
                       "document": str(doc.relative_to(ROOT) if doc.is_relative_to(ROOT) else doc),
                       "bytecode": "cached (PYTHONPYCACHEPREFIX, warmed)" if bytecode_cache
                       else "not written (sgagent's modules compiled from source at each run)",
                       "issue_figure_s": ISSUE_FIGURE_S},
            "floor": {floor: stats(base)},
            "commands": rows,
            "diagnostics": diagnostics}


def markdown(res: dict[str, Any]) -> str:
    p = res["params"]
    (floor, f), = res["floor"].items()
    lines = [
        f"CLI start-up, this tree (new) against `{p['before']}` (old), medians of {p['rounds']} "
        f"interleaved rounds; bytecode {p['bytecode']}. `{floor}`: {f['median_ms']:.0f} ms "
        f"(p90 {f['p90_ms']:.0f} ms, CPU {f['cpu_median_ms']:.0f} ms), "
        f"{f['peak_rss_mb']:.1f} MB.",
        "",
        "| command | new (p90) | old (p90) | new / old | CPU new / old | new / floor "
        "| new / 0.36 s | peak RSS new / old | same output |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for label, r in res["commands"].items():
        n, o = r["new"], r["old"]
        lines.append(
            f"| `{label}` | {n['median_ms']:.0f} ms ({n['p90_ms']:.0f}) | {o['median_ms']:.0f} ms "
            f"({o['p90_ms']:.0f}) | {r['new_vs_old']:.2f} | {n['cpu_median_ms']:.0f} / "
            f"{o['cpu_median_ms']:.0f} ms | {r['new_vs_floor']:.2f} "
            f"| {common.pct(r['new_of_issue_figure'])} | {n['peak_rss_mb']:.0f} / "
            f"{o['peak_rss_mb']:.0f} MB | {'yes' if r['same_output'] else 'no'} |")
    lines += ["", "| by itself (`python -c`, this tree) | median (p90) | above the floor "
              "| CPU above the floor | peak RSS |", "|---|---:|---:|---:|---:|"]
    for label, d in res["diagnostics"].items():
        lines.append(f"| {label} | {d['median_ms']:.0f} ms ({d['p90_ms']:.0f}) "
                     f"| {d['above_floor_ms']:.0f} ms | {d['cpu_above_floor_ms']:.0f} ms "
                     f"| {d['peak_rss_mb']:.0f} MB |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=20, help=f"at most {MAX_ROUNDS}")
    ap.add_argument("--before", default=BEFORE, help="the commit to compare with")
    ap.add_argument("--doc", type=Path, default=DOC, help="the small document")
    ap.add_argument("--no-bytecode-cache", action="store_true",
                    help="write no bytecode: sgagent's modules (which have none in a "
                    "checkout) are compiled from source at each run")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args(argv)
    if shutil.which("git") is None:
        raise SystemExit("the start-up benchmark needs git (a worktree of --before)")
    res = run(a.rounds, a.before, a.doc.resolve(), not a.no_bytecode_cache)
    common.write_json(a.out, res)
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
