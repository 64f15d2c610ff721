#!/usr/bin/env python3
"""New TCP connections per second, and connect latency, through sgagent's rulesets.

For each configuration a pair of namespaces: a host namespace (NIC ``eth0``, the server, the
ruleset) and a client namespace, joined by a veth.  The client (``connrate.c``, built with gcc
into a temporary directory) keeps ``--concurrency`` connects in flight (1 by default: a closed
loop, so the rate is the inverse of the per-connection cost) for ``--seconds``; each connection
is socket, connect (SYN, SYN-ACK), abortive close (RST: no TIME_WAIT, so ports and conntrack
entries are not exhausted).  The server accepts and closes.

Configurations, all loaded at once and measured interleaved (``--reps`` rounds, the order
rotated every round), reported as medians and as the median of per-round ratios:

* ``none``: no table at all (conntrack is not even active in the namespace);
* ``conntrack only``: one table with ``ct state established,related accept`` (what statefulness
  alone costs; the sgagent chains start the same way);
* ``sets`` / ``linear`` at each size: the same generated document (bench/docgen.py) applied by
  :class:`NftBackend` with the set-compiled or the linear rendering;
* diagnostics at the middle size: ``sets, no group peers``, the same document without
  group-peer rules (how much of the cost comes from group peers cutting the runs of set
  lookups).

Every measured connection is decided by the document's very last decision (an accept at
priority 100 for the client's /32); after the run the counter of that rule is read back and
must have counted every connection.

    .venv/bin/python bench/connrate.py [--sizes 1000,10000,50000] [--reps 5] [--seconds 1.5]

Writes bench/results/connrate.json (``--out``).  Needs root, gcc, nft.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as common  # noqa: E402
import docgen  # noqa: E402
import heldout  # noqa: E402
from sgagent.compiler import compile_document  # noqa: E402
from sgagent.load import parse_data  # noqa: E402
from sgagent.nft.backend import NftBackend  # noqa: E402

OUT = common.RESULTS / "connrate.json"
SOURCE = Path(__file__).resolve().with_name("connrate.c")
CT_ONLY = """table inet sgbench_ct {
  chain input {
    type filter hook input priority filter; policy accept;
    ct state established,related accept
    ct state invalid drop
  }
}
"""


def build(workdir: Path) -> Path:
    if shutil.which("gcc") is None:
        raise SystemExit("connrate needs gcc to build its load generator")
    exe = workdir / "connrate"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(exe), str(SOURCE)], check=True,
                   capture_output=True, text=True)
    return exe


class Pair:
    """A host namespace with eth0 and a server, a client namespace, a veth between them."""

    def __init__(self, host: str, client: str, exe: Path) -> None:
        self.host, self.client, self.exe = host, client, exe
        self.server: subprocess.Popen | None = None
        self.backend: NftBackend | None = None

    def wire(self) -> None:
        # Created from inside the client namespace: nothing appears in the root namespace.
        common.ip("-n", self.client, "link", "add", "c0", "type", "veth",
                  "peer", "name", docgen.NIC, "netns", self.host)
        common.ip("-n", self.client, "addr", "add", f"{docgen.CLIENT}/30", "dev", "c0")
        common.ip("-n", self.host, "addr", "add", f"{docgen.SERVER}/30", "dev", docgen.NIC)
        for ns, dev in ((self.client, "c0"), (self.host, docgen.NIC)):
            common.ip("-n", ns, "link", "set", "lo", "up")
            common.ip("-n", ns, "link", "set", dev, "up")
        common.sysctl(self.client, "net.ipv4.ip_local_port_range", "1024 65535")
        common.sysctl(self.host, "net.core.somaxconn", "65535")
        common.sysctl(self.host, "net.ipv4.tcp_max_syn_backlog", "65535")
        for key in ("close", "time_wait", "fin_wait", "close_wait", "last_ack"):
            with contextlib.suppress(subprocess.CalledProcessError):
                common.sysctl(self.host, f"net.netfilter.nf_conntrack_tcp_timeout_{key}", "1")

    def start_server(self) -> None:
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", self.host, str(self.exe), "server", str(docgen.SERVER_PORT)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        line = self.server.stdout.readline() if self.server.stdout else ""
        if "listening" not in line:
            raise RuntimeError(f"the server did not start: {line!r} "
                               f"{self.server.stderr.read() if self.server.stderr else ''}")

    def measure(self, seconds: float, concurrency: int) -> dict[str, Any]:
        with contextlib.suppress(Exception):
            common.in_ns(self.host, "conntrack", "-F", check=False, timeout=30)
        out = common.in_ns(self.client, str(self.exe), "client", docgen.SERVER,
                           str(docgen.SERVER_PORT), str(seconds), str(concurrency),
                           timeout=seconds + 30)
        return json.loads(out.stdout)

    def close(self) -> None:
        if self.backend is not None:
            with contextlib.suppress(Exception):
                self.backend.close()
        if self.server is not None and self.server.poll() is None:
            self.server.kill()
            self.server.wait(timeout=10)


def configs(sizes: list[int], linear_max: int, diagnostics: bool,
            heldout_sizes: list[int] = ()) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"name": "none", "rules": 0, "ruleset": "none"},
                                 {"name": "conntrack-only", "rules": 0, "ruleset": "conntrack only"}]
    for n in heldout_sizes:
        out.append({"name": f"heldout-{n}", "rules": n, "ruleset": "sets, held-out mix",
                    "rendering": "sets", "group_peers": 0.10, "mix": "heldout"})
    for n in sizes:
        out.append({"name": f"sets-{n}", "rules": n, "ruleset": "sets", "rendering": "sets",
                    "group_peers": 0.02})
        if diagnostics and n == sizes[len(sizes) // 2]:
            out.append({"name": f"sets-nogroups-{n}", "rules": n,
                        "ruleset": "sets, no group peers (diagnostic)", "rendering": "sets",
                        "group_peers": 0.0})
        if linear_max <= 0:
            continue
        if n <= linear_max:
            out.append({"name": f"linear-{n}", "rules": n, "ruleset": "linear",
                        "rendering": "linear", "group_peers": 0.02})
        else:
            out.append({"name": f"linear-{n}", "rules": n, "ruleset": "linear",
                        "rendering": "linear", "skipped": (
                            f"not loaded: nft -f of the {n:,}-rule linear text takes about two "
                            f"minutes, mostly in the kernel; --linear-max {n} to include it")})
    return out


def shape(objs) -> dict[str, Any]:
    chain = objs.chains.get(f"in_{docgen.NIC}", (None, ()))[1]
    return {"input_chain_rules": len(chain),
            "input_chain_lookups": sum(r.text.count("@") for r in chain),
            "chains": len(objs.chains), "sets_and_maps": len(objs.sets),
            "elements": sum(len(s.elements) for s in objs.sets.values()),
            "largest_map_elements": max((len(s.elements) for s in objs.sets.values()
                                         if s.is_map), default=0),
            "counters": len(objs.counters)}


def load(pair: Pair, cfg: dict[str, Any], seed: int) -> dict[str, Any]:
    if cfg["ruleset"] == "conntrack only":
        common.in_ns(pair.host, "nft", "-f", "-", input=CT_ONLY)
        return {}
    if cfg["ruleset"] == "none":
        return {}
    gen = heldout.generate if cfg.get("mix") == "heldout" else docgen.generate
    doc = gen(cfg["rules"], seed=seed, group_peers=cfg["group_peers"])
    t0 = time.perf_counter()
    rs = compile_document(parse_data(doc))
    t1 = time.perf_counter()
    pair.backend = NftBackend(pair.host, cfg["rendering"])
    result = pair.backend.apply(rs)
    t2 = time.perf_counter()
    return {"parse_compile_s": round(t1 - t0, 3), "apply_s": round(t2 - t1, 3),
            **shape(result.objects)}


def client_counter(pair: Pair) -> tuple[int, int]:
    """Packets counted by the client's rule, and by every other rule (defaults excluded)."""
    if pair.backend is None:
        return 0, 0
    mine = others = 0
    for r in pair.backend.counters():
        if r.key.rule == "bench-client":
            mine += r.packets
        elif r.key.group is not None:
            others += r.packets
    return mine, others


def run(sizes: list[int] | None = None, reps: int = 5, seconds: float = 1.5,
        concurrency: int = 1, linear_max: int = 10_000, diagnostics: bool = True,
        seed: int = 1, log=print, heldout_sizes: list[int] = ()) -> dict[str, Any]:
    common.require_root()
    sizes = [1000, 10_000, 50_000] if sizes is None else sizes
    cfgs = configs(sizes, linear_max, diagnostics, heldout_sizes)
    live = [c for c in cfgs if "skipped" not in c]
    tok = common.token()
    names = [n for i in range(len(live)) for n in (f"{tok}h{i}", f"{tok}c{i}")]
    pairs: list[Pair] = []
    samples: dict[str, list[dict[str, Any]]] = {c["name"]: [] for c in live}
    attempted: dict[str, int] = {c["name"]: 0 for c in live}
    with tempfile.TemporaryDirectory(prefix="sgbench-") as tmp, common.namespaces(names):
        exe = build(Path(tmp))
        try:
            for i, cfg in enumerate(live):
                pair = Pair(f"{tok}h{i}", f"{tok}c{i}", exe)
                pairs.append(pair)
                pair.wire()
                pair.start_server()
                log(f"connrate: loading {cfg['name']} ...")
                cfg["load"] = load(pair, cfg, seed)
                warm = pair.measure(min(0.3, seconds), concurrency)
                attempted[cfg["name"]] += warm["connections"] + warm["errors"]
            for rep in range(reps):
                order = list(range(len(live)))
                order = order[rep % len(order):] + order[:rep % len(order)]
                for i in order:
                    m = pairs[i].measure(seconds, concurrency)
                    samples[live[i]["name"]].append(m)
                    attempted[live[i]["name"]] += m["connections"] + m["errors"]
                log(f"connrate: round {rep + 1}/{reps} done")
            for i, cfg in enumerate(live):
                if pairs[i].backend is not None:
                    mine, others = client_counter(pairs[i])
                    cfg["check"] = {"connections_attempted": attempted[cfg["name"]],
                                    "counted_on_client_rule": mine,
                                    "counted_on_other_rules": others}
        finally:
            for p in pairs:
                p.close()
    return summarise(cfgs, samples, {"sizes": sizes, "reps": reps, "seconds": seconds,
                                     "concurrency": concurrency, "linear_max": linear_max,
                                     "seed": seed, "heldout_sizes": list(heldout_sizes)})


def summarise(cfgs, samples, params) -> dict[str, Any]:
    base = samples.get("none", [])
    ct = samples.get("conntrack-only", [])
    rows = []
    for cfg in cfgs:
        row = {k: v for k, v in cfg.items()}
        s = samples.get(cfg["name"])
        if s:
            rates = [m["rate"] for m in s]
            row.update({
                "rate": common.rnd(common.median(rates), 1),
                "rates": rates,
                "p50_us": common.median([m["p50_us"] for m in s]),
                "p99_us": common.median([m["p99_us"] for m in s]),
                "errors": sum(m["errors"] for m in s),
                "vs_none": common.rnd(common.median(
                    [m["rate"] / b["rate"] for m, b in zip(s, base) if b["rate"]]), 3),
                "vs_conntrack_only": common.rnd(common.median(
                    [m["rate"] / b["rate"] for m, b in zip(s, ct) if b["rate"]]), 3),
                # issue 10's measure: median connect latency over conntrack-only's, per round
                "p50_latency_vs_conntrack_only": common.rnd(common.median(
                    [m["p50_us"] / b["p50_us"] for m, b in zip(s, ct) if b["p50_us"]]), 3),
            })
        rows.append(row)
    target = None
    mid = [r for r in rows if r["name"] == "sets-10000" and r.get("vs_none") is not None]
    if mid:
        target = {"what": "new connections/s at 10,000 rules >= 90% of no firewall",
                  "value": mid[0]["vs_none"], "met": mid[0]["vs_none"] >= 0.9}
    latency = [{"what": f"median connect latency, {r['ruleset']}, {r['rules']:,} rules, within "
                        f"10% of conntrack only", "value": r["p50_latency_vs_conntrack_only"],
                "met": r["p50_latency_vs_conntrack_only"] <= 1.10}
               for r in rows if r.get("rendering") == "sets"
               and r.get("p50_latency_vs_conntrack_only") is not None
               and r["rules"] in (10_000, 100_000)]
    return {"benchmark": "connrate", "date": common.now_iso(), "machine": common.machine(),
            "params": params, "configs": rows, "target": target, "latency_targets": latency}


def markdown(res: dict[str, Any]) -> str:
    p = res["params"]
    lines = [
        f"New TCP connections/s from a client namespace to a server in the host namespace "
        f"(closed loop, {p['concurrency']} connect in flight, {p['seconds']} s x {p['reps']} "
        f"interleaved rounds, medians; ratios are medians of per-round ratios). Each connection "
        f"is decided by the document's last decision.",
        "",
        "| rules | ruleset | conn/s | vs no firewall | vs conntrack only | p50 µs | p99 µs "
        "| p50 latency vs conntrack only "
        "| input chain: rules (set/map lookups) | counted on the deciding rule |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in res["configs"]:
        rules = f"{r['rules']:,}" if r["rules"] else "0"
        if "skipped" in r:
            lines.append(f"| {rules} | {r['ruleset']} | not loaded (`nft -f` of this text takes "
                         f"about two minutes; `--linear-max {r['rules']}`) | | | | | | | |")
            continue
        ld = r.get("load") or {}
        chain = (f"{ld['input_chain_rules']:,} ({ld['input_chain_lookups']:,})"
                 if "input_chain_rules" in ld else "–")
        chk = r.get("check")
        counted = (f"{chk['counted_on_client_rule']:,} / {chk['connections_attempted']:,}"
                   if chk else "–")
        lines.append(
            f"| {rules} | {r['ruleset']} | {common.fmt(r.get('rate'))} | {common.pct(r.get('vs_none'))} "
            f"| {common.pct(r.get('vs_conntrack_only'))} | {common.fmt(r.get('p50_us'))} "
            f"| {common.fmt(r.get('p99_us'))} "
            f"| {r.get('p50_latency_vs_conntrack_only') or '–'} | {chain} | {counted} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000,10000,50000")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--linear-max", type=int, default=10_000,
                    help="largest size also measured with the linear rendering (0: none)")
    ap.add_argument("--no-diagnostics", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--heldout", default="",
                    help="sizes also measured with bench/heldout.py's mix (sets rendering), "
                         "e.g. 10000,100000")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args(argv)
    sizes = [int(x) for x in a.sizes.split(",") if x]
    res = run(sizes, a.reps, a.seconds, a.concurrency, a.linear_max,
              not a.no_diagnostics and bool(sizes), a.seed,
              heldout_sizes=[int(x) for x in a.heldout.split(",") if x])
    common.write_json(a.out, res)
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
