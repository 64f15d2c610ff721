"""What the benchmark scripts share: namespaces with unique names that are always removed,
statistics, the machine's description, JSON output.

Everything a benchmark touches lives in network namespaces it creates (names start with
``sgb`` and a random token); the root namespace's firewall, interfaces and routes are never
touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
if str(ROOT / "bench") not in sys.path:
    sys.path.insert(0, str(ROOT / "bench"))

from sgagent import netns  # noqa: E402

PYTHON = sys.executable
_venv_cli = Path(sys.executable).with_name("sgagent")
SGAGENT = [str(_venv_cli)] if _venv_cli.exists() else [PYTHON, "-m", "sgagent"]


def require_root() -> None:
    if os.geteuid() != 0:
        raise SystemExit("the benchmarks need root (network namespaces, nftables)")
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            raise SystemExit(f"the benchmarks need '{tool}'")


def token() -> str:
    return "sgb" + secrets.token_hex(3)


@contextlib.contextmanager
def namespaces(names: Sequence[str]) -> Iterator[list[str]]:
    """Create these namespaces; delete them (and every process left in them) on exit."""
    made: list[str] = []
    try:
        for name in names:
            netns.create(name)
            made.append(name)
        yield made
    finally:
        for name in reversed(made):
            with contextlib.suppress(Exception):
                netns.delete(name)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, stdin=subprocess.DEVNULL,
                   capture_output=True, timeout=20)


def in_ns(ns: str, *argv: str, check: bool = True, timeout: float = 600,
          input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(netns.argv_in(ns, argv), check=check, input=input, text=True,
                          capture_output=True, timeout=timeout)


def sysctl(ns: str, key: str, value: str) -> None:
    path = "/proc/sys/" + key.replace(".", "/")
    in_ns(ns, "sh", "-c", f"echo '{value}' > {path}")


def median(xs: Sequence[float]) -> float | None:
    return statistics.median(xs) if xs else None


def percentile(xs: Sequence[float], p: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, int(round((len(s) - 1) * p)))]


def rnd(x: float | None, nd: int = 2) -> float | None:
    return None if x is None else round(x, nd)


def machine() -> dict[str, Any]:
    load = None
    with contextlib.suppress(OSError):
        load = [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    nft = None
    with contextlib.suppress(Exception):
        nft = subprocess.run(["nft", "--version"], capture_output=True, text=True).stdout.strip()
    return {"cpus": os.cpu_count(), "cpu": model, "kernel": platform.release(),
            "python": platform.python_version(), "nft": nft, "loadavg_at_start": load,
            "code": code_version()}


def code_version() -> dict[str, Any]:
    """The commit measured, and whether the agent's sources differed from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True,
                              text=True, timeout=20).stdout.strip()
    out: dict[str, Any] = {}
    with contextlib.suppress(Exception):
        out["commit"] = git("rev-parse", "--short", "HEAD")
        out["agent_modified"] = bool(git("status", "--porcelain", "--", "agent"))
    return out


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write_json(path: Path, data: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
    return path


def fmt(x: float | None, nd: int = 0, unit: str = "") -> str:
    if x is None:
        return "–"
    return f"{x:,.{nd}f}{unit}"


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**missed**")


# Forks and execs the command from a small interpreter, so that the child's peak RSS starts from
# this helper's few MB: a child forked straight from a big benchmark process inherits the
# parent's high-water mark through exec (Linux keeps the larger of the two in ru_maxrss).
RSS_HELPER = """
import os, sys, time
out, argv = sys.argv[1], sys.argv[2:]
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_, st, ru = os.wait4(pid, 0)
t1 = time.perf_counter()
with open(out, "w") as f:
    f.write(f"{t1 - t0} {ru.ru_maxrss} {os.waitstatus_to_exitcode(st)}")
"""
