#!/usr/bin/env python3
"""Flow logs and audit rules (issue 14): what they cost a new connection, and the agent.

1. **First-packet cost** at 10,000 rules (bench/docgen.py's mix), new TCP connections per
   second through the set rendering, side by side in one run (bench/connrate.py's method:
   a closed loop of connects, configurations measured interleaved, medians of per-round
   ratios against ``sets``):

   * ``conntrack-only``; ``sets``: the document as generated;
   * ``sets, 10 % logged``: every tenth rule ``log: true`` (the measured connections are
     decided by an unlogged rule: what logging other rules costs them);
   * ``sets, 10 % audit``: every tenth rule ``mode: audit`` (audit stages in front of the
     lookups);
   * ``sets, client logged``: the measured connections' own rule logged (limit 100,000/s,
     so every connection is a record), with the agent's reader writing the records: the cost
     of a logged decision.

2. **Agent CPU per 1,000 records a second**: the reader (:class:`FlowLogReader` with a file
   sink, in a process of its own in the host namespace) during the ``client logged`` runs;
   its CPU seconds over the records it wrote.

3. With ``--ulogd ROOT`` (the files of Debian's ulogd2 and ulogd2-json packages, e.g.
   ``dpkg-deb -x`` of each into ROOT, with libnetfilter-log1 and libnetfilter-acct1): the same
   ``client logged`` runs read by ulogd2 instead (NFLOG input, BASE, IFINDEX, IP2STR, JSON
   output to a file, ``sync=1``), side by side with the agent's reader, in further rounds.

    .venv/bin/python bench/flowlog.py [--rules 10000] [--reps 5] [--seconds 1.5] [--ulogd ROOT]

Writes bench/results/flowlog.json.  Needs root, gcc, nft.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import signal
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
from sgagent.compiler import compile_document  # noqa: E402
from sgagent.load import parse_data  # noqa: E402
from sgagent.nft.backend import NftBackend  # noqa: E402

OUT = common.RESULTS / "flowlog.json"
HERE = Path(__file__).resolve()


def variant(doc: dict[str, Any], kind: str) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    k = 0
    for g in doc["security_groups"].values():
        for rule in g["rules"]:
            if rule.get("id") == "bench-client":
                if kind == "client-logged":
                    rule.update(log=True, log_rate="100000/second burst 200000")
                continue
            k += 1
            if k % 10 == 0 and kind == "logged":
                rule["log"] = True
            elif k % 10 == 0 and kind == "audit":
                rule["mode"] = "audit"
    return doc


def reader_main(directory: str, seconds: float) -> int:
    """The reader alone, in this process: its CPU and records as one JSON line."""
    from sgagent.flowlog.reader import FlowLogReader
    from sgagent.flowlog.sink import FileSink
    from sgagent.ir import NFLOG_GROUP
    reader = FlowLogReader(FileSink(directory, max_bytes=1 << 30), NFLOG_GROUP, "i-bench")
    print("ready", flush=True)
    ru0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    reader.start()
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    end = time.monotonic() + seconds
    while not stop[0] and time.monotonic() < end:
        time.sleep(0.05)
    reader.stop()
    ru1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    print(json.dumps({"records": reader.records, "lost": reader.lost, "cpu_s": cpu,
                      "wall_s": t1 - t0}), flush=True)
    return 0


class Reader:
    def __init__(self, ns: str, directory: str) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, str(HERE), "--reader", directory,
             "3600"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(HERE.parents[1])})
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if "ready" not in line:
            raise RuntimeError(f"the reader did not start: {line!r} {self.proc.stderr.read()}")

    def stop(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=30)
        return json.loads(out.strip().splitlines()[-1])


ULOGD_CONF = """[global]
logfile="{dir}/ulogd.log"
loglevel=5
plugin="{lib}/ulogd_inppkt_NFLOG.so"
plugin="{lib}/ulogd_raw2packet_BASE.so"
plugin="{lib}/ulogd_filter_IFINDEX.so"
plugin="{lib}/ulogd_filter_IP2STR.so"
plugin="{lib}/ulogd_output_JSON.so"
stack=log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,json1:JSON

[log1]
group={group}

[json1]
sync=1
file="{dir}/ulogd.json"
"""


class Ulogd:
    """ulogd2 from the unpacked packages at ``root``, reading the NFLOG group in ``ns``."""

    def __init__(self, ns: str, root: Path, directory: Path) -> None:
        from sgagent.ir import NFLOG_GROUP
        lib = root / "usr/lib/x86_64-linux-gnu"
        directory.mkdir(parents=True, exist_ok=True)
        conf = directory / "ulogd.conf"
        conf.write_text(ULOGD_CONF.format(dir=directory, lib=lib / "ulogd", group=NFLOG_GROUP))
        self.out = directory / "ulogd.json"
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, str(root / "usr/sbin/ulogd"), "-c", str(conf)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "LD_LIBRARY_PATH": str(lib)})
        time.sleep(0.5)
        if self.proc.poll() is not None:
            raise RuntimeError(f"ulogd did not start: {self.proc.stderr.read()} "
                               f"{(directory / 'ulogd.log').read_text(errors='replace')}")
        self.cpu0 = self._cpu()
        self.t0 = time.perf_counter()

    def _cpu(self) -> float:
        # the ulogd process is the child of `ip netns exec` (which execs it: the same pid)
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> dict[str, Any]:
        cpu = self._cpu() - self.cpu0
        wall = time.perf_counter() - self.t0
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        records = sum(1 for _ in open(self.out)) if self.out.exists() else 0
        return {"records": records, "cpu_s": cpu, "wall_s": wall}


def run(rules: int = 10_000, reps: int = 5, seconds: float = 1.5, seed: int = 1,
        ulogd: Path | None = None, log=print) -> dict[str, Any]:
    common.require_root()
    base = docgen.generate(rules, seed=seed)
    cfgs = [{"name": "conntrack-only"}, {"name": "sets", "kind": "plain"},
            {"name": "sets, 10 % logged", "kind": "logged"},
            {"name": "sets, 10 % audit", "kind": "audit"},
            {"name": "sets, client logged", "kind": "client-logged"}]
    tok = common.token()
    names = [n for i in range(len(cfgs)) for n in (f"{tok}h{i}", f"{tok}c{i}")]
    pairs: list[connrate.Pair] = []
    samples: dict[str, list[float]] = {c["name"]: [] for c in cfgs}
    reader_runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sgbench-") as tmp, common.namespaces(names):
        exe = connrate.build(Path(tmp))
        try:
            for i, cfg in enumerate(cfgs):
                pair = connrate.Pair(f"{tok}h{i}", f"{tok}c{i}", exe)
                pairs.append(pair)
                pair.wire()
                pair.start_server()
                log(f"flowlog: loading {cfg['name']} ...")
                if "kind" not in cfg:
                    common.in_ns(pair.host, "nft", "-f", "-", input=connrate.CT_ONLY)
                else:
                    doc = variant(base, cfg["kind"])
                    pair.backend = NftBackend(pair.host, "sets")
                    t0 = time.perf_counter()
                    result = pair.backend.apply(compile_document(parse_data(doc)))
                    cfg["apply_s"] = round(time.perf_counter() - t0, 2)
                    cfg["shape"] = connrate.shape(result.objects)
                pair.measure(0.3, 1)
            for rep in range(reps):
                order = list(range(len(cfgs)))
                order = order[rep % len(order):] + order[:rep % len(order)]
                for i in order:
                    reader = None
                    if cfgs[i].get("kind") == "client-logged":
                        reader = Reader(pairs[i].host, f"{tmp}/records{rep}")
                    m = pairs[i].measure(seconds, 1)
                    samples[cfgs[i]["name"]].append(m["rate"])
                    if reader is not None:
                        time.sleep(0.3)  # let the reader drain the socket
                        r = reader.stop()
                        r["connections"] = m["connections"]
                        reader_runs.append(r)
                log(f"flowlog: round {rep + 1}/{reps} done")
            ulogd_runs: list[dict[str, Any]] = []
            if ulogd is not None:
                i = [c.get("kind") for c in cfgs].index("client-logged")
                for rep in range(reps):  # the agent's reader and ulogd2 in turn
                    for who in ("agent", "ulogd2") if rep % 2 == 0 else ("ulogd2", "agent"):
                        if who == "agent":
                            rd: Any = Reader(pairs[i].host, f"{tmp}/agent-u{rep}")
                        else:
                            rd = Ulogd(pairs[i].host, ulogd, Path(tmp) / f"ulogd{rep}")
                        m = pairs[i].measure(seconds, 1)
                        time.sleep(0.3)
                        r = rd.stop()
                        r.update(reader=who, connections=m["connections"], rate=m["rate"])
                        ulogd_runs.append(r)
                    log(f"flowlog: ulogd2 round {rep + 1}/{reps} done")
        finally:
            for p in pairs:
                p.close()
    base_rates = samples["sets"]
    out_cfgs = []
    for cfg in cfgs:
        xs = samples[cfg["name"]]
        ratios = [x / b for x, b in zip(xs, base_rates) if b]
        out_cfgs.append({**{k: v for k, v in cfg.items() if k != "kind"},
                         "conn_per_s": common.rnd(common.median(xs), 0),
                         "vs_sets": common.rnd(common.median(ratios), 3)})
    cpu = sum(r["cpu_s"] for r in reader_runs)
    recs = sum(r["records"] for r in reader_runs)
    wall = sum(r["wall_s"] for r in reader_runs)
    agent = {"runs": reader_runs, "records": recs, "connections": sum(
        r["connections"] for r in reader_runs), "lost_reports": sum(r["lost"] for r in reader_runs),
             "records_per_s": common.rnd(recs / wall, 0) if wall else None,
             "cpu_s_per_1000_records": common.rnd(1000 * cpu / recs, 4) if recs else None,
             "core_percent_per_1000_records_per_s":
                 common.rnd(100 * cpu / recs * 1000, 2) if recs else None}
    versus = {}
    for who in ("agent", "ulogd2"):
        rs = [r for r in ulogd_runs if r["reader"] == who]
        if rs:
            n = sum(r["records"] for r in rs)
            c = sum(r["cpu_s"] for r in rs)
            versus[who] = {"records": n, "connections": sum(r["connections"] for r in rs),
                           "conn_per_s": common.rnd(common.median([r["rate"] for r in rs]), 0),
                           "cpu_s_per_1000_records": common.rnd(1000 * c / n, 4) if n else None,
                           "core_percent_per_1000_records_per_s":
                               common.rnd(100 * c / n * 1000, 2) if n else None}
    return {"bench": "flowlog", "when": common.now_iso(), "machine": common.machine(),
            "code": common.code_version(),
            "params": {"rules": rules, "reps": reps, "seconds": seconds, "seed": seed},
            "configs": out_cfgs, "agent_reader": agent,
            **({"agent_vs_ulogd2": versus, "ulogd2_runs": ulogd_runs} if versus else {})}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rules", type=int, default=10_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--ulogd", type=Path, metavar="ROOT",
                    help="unpacked ulogd2 (+ ulogd2-json) to measure against the agent")
    ap.add_argument("--reader", nargs=2, metavar=("DIR", "SECONDS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.reader:
        return reader_main(args.reader[0], float(args.reader[1]))
    res = run(args.rules, args.reps, args.seconds, ulogd=args.ulogd)
    common.write_json(args.out, res)
    print(json.dumps({"configs": res["configs"], "agent_reader": {
        k: v for k, v in res["agent_reader"].items() if k != "runs"},
        "agent_vs_ulogd2": res.get("agent_vs_ulogd2")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
