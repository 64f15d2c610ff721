#!/usr/bin/env python3
"""The hypervisor case: one VPC NIC per VM, 1,000 rules each, at 10, 30 and 100 VMs (10,000 to
100,000 rules), side by side in one run.

For each size, the document of bench/hvgen.py (``bench_pair``: the measured flow's two rules
included) is written as JSON, and, each step in a fresh process with its own timeout:

* ``phases``: read + validate, compile, render and text in-process, one after the other, with
  the peak RSS after each (bench/apply.py's ``--child phases``);
* ``sgagent compile``: wall time, peak RSS, and the size of the text it prints;
* ``sgagent apply DOC --netns HV``: the whole document into a hypervisor namespace that has the
  document's interfaces (``vm000`` and ``vm001`` are veths to two VM namespaces, the others
  veths whose other end stays in the namespace): wall time from spawn to exit and peak RSS (``wait4`` of the child);
* ``nft -f`` of the same text (``sgagent compile``'s) into a fresh namespace with the same
  interfaces: wall time and peak RSS;
* ``one rule edited``: the same document with one rule's port changed (a tcp rule of
  ``vm{N/2}``), applied by the CLI over the loaded table (what changes is sent as a difference);
* with ``--baseline COMMIT``: ``sgagent apply`` as it was at that commit (bench/apply.py's
  ``extract``), into the ``nft -f`` namespace once emptied again: wall time and peak RSS.

Then the **first-packet cost for forwarded traffic**: new TCP connections from VM 0 to VM 1
through the hypervisor (bench/connrate.c, one connect in flight, abortive close), interleaved
round by round over: no table; a conntrack-only table on the forward hook; the hypervisor
namespace of each size with its document loaded.  The flow enters by ``vm000`` (its inbound
chain, source 10.255.0.2) and leaves by ``vm001`` (outbound, destination 10.255.0.6); on each
side it is decided by the NIC's last decision in priority order (hvgen's ``bench_pair``),
whose counters are read back: each must have counted every connection.

The whole run is bounded (``--budget``, 19 minutes by default): a step that runs out of its
timeout is killed and recorded as ``timed_out``, and steps that no longer fit are recorded as
``skipped``.  Everything runs in namespaces named ``sgb...`` that are deleted at the end.

    sudo .venv/bin/python bench/hypervisor.py [--sizes 10,30,100] [--rules 1000]

Writes bench/results/hypervisor.json (``--out``).  Needs root, ip, nft, gcc.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as common  # noqa: E402
import connrate  # noqa: E402
import hvgen  # noqa: E402
from apply import RUN_CLI, extract  # noqa: E402

OUT = common.RESULTS / "hypervisor.json"
BENCH = Path(__file__).resolve().parent
HV_GW = {"vm000": "10.255.0.1", "vm001": "10.255.0.5"}
CT_ONLY = """table inet sgbench_ct {
  chain forward {
    type filter hook forward priority filter; policy accept;
    ct state established,related accept
    ct state invalid drop
  }
}
"""


class Budget:
    """The run's deadline, and each step's share of it."""

    def __init__(self, seconds: float, step_cap: float) -> None:
        self.end = time.monotonic() + seconds
        self.step_cap = step_cap

    def left(self) -> float:
        return self.end - time.monotonic()

    def timeout(self, reserve: float = 60.0) -> float:
        return max(0.0, min(self.step_cap, self.left() - reserve))


def bounded(argv: list[str], timeout: float, stdout_to: Path | None = None) -> dict[str, Any]:
    """Run a command with a timeout (its whole process group killed when it runs out): wall
    time, peak RSS, its output (or where it went), or ``timed_out``/``skipped``."""
    if timeout < 5:
        return {"skipped": "the run's time budget was spent"}
    with tempfile.NamedTemporaryFile(prefix="sgbench-", suffix=".rss") as res, \
            tempfile.TemporaryFile() as err:
        out_f = open(stdout_to, "wb") if stdout_to else tempfile.TemporaryFile()
        with out_f:
            proc = subprocess.Popen([common.PYTHON, "-S", "-c", common.RSS_HELPER, res.name, *argv],
                                    stdin=subprocess.DEVNULL, stdout=out_f, stderr=err,
                                    start_new_session=True)
            t0 = time.perf_counter()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # the group of the helper we started
                proc.wait()
                return {"timed_out": True, "timeout_s": round(timeout),
                        "s_at_kill": round(time.perf_counter() - t0, 1)}
            fields = Path(res.name).read_text().split()
            err.seek(0)
            text_err = err.read().decode(errors="replace")
            if stdout_to is None:
                out_f.seek(0)
                text_out = out_f.read().decode(errors="replace")
            else:
                text_out = ""
    if proc.returncode != 0 or len(fields) != 3 or fields[2] != "0":
        return {"failed": f"{' '.join(argv[:4])}...: {(text_err or text_out)[-1500:]}"}
    return {"s": round(float(fields[0]), 3), "maxrss_mb": round(int(fields[1]) / 1024, 1),
            "output": text_out}


def wire(tok: str, k: int, vms: int) -> dict[str, str]:
    """A hypervisor namespace with ``vm000`` .. ``vm{vms-1}`` (the first two veths to VM
    namespaces with a client and a server address, the others idle), forwarding on."""
    ns = {"hv": f"{tok}h{k}", "a": f"{tok}a{k}", "b": f"{tok}b{k}"}
    for vm, nic, dev, addr in (("a", "vm000", "c0", "10.255.0.2"),
                               ("b", "vm001", "s0", "10.255.0.6")):
        common.ip("-n", ns[vm], "link", "add", dev, "type", "veth", "peer", "name", nic,
                  "netns", ns["hv"])
        common.ip("-n", ns[vm], "addr", "add", f"{addr}/30", "dev", dev)
        common.ip("-n", ns["hv"], "addr", "add", f"{HV_GW[nic]}/30", "dev", nic)
        for n in ("lo", dev):
            common.ip("-n", ns[vm], "link", "set", n, "up")
        common.ip("-n", ns["hv"], "link", "set", nic, "up")
        common.ip("-n", ns[vm], "route", "add", "default", "via", HV_GW[nic])
    common.in_ns(ns["hv"], "ip", "-batch", "-", input=idle_nics(2, vms))
    common.sysctl(ns["hv"], "net.ipv4.ip_forward", "1")
    common.sysctl(ns["a"], "net.ipv4.ip_local_port_range", "1024 65535")
    common.sysctl(ns["b"], "net.core.somaxconn", "65535")
    for key in ("close", "time_wait", "fin_wait", "close_wait", "last_ack"):
        with contextlib.suppress(subprocess.CalledProcessError):
            common.sysctl(ns["hv"], f"net.netfilter.nf_conntrack_tcp_timeout_{key}", "1")
    return ns


def idle_nics(first: int, vms: int) -> str:
    """``ip -batch`` lines for NICs ``vm{first}`` .. of VMs that send nothing: veths whose
    other end (``t{i}``, not in the document) stays in the same namespace (this kernel may
    lack the dummy driver)."""
    lines = ["link set lo up"]
    for i in range(first, vms):
        nic = hvgen.nic_name(i)
        lines += [f"link add {nic} type veth peer name t{i:03d}", f"link set {nic} up",
                  f"link set t{i:03d} up"]
    return "\n".join(lines) + "\n"


def edited(doc: dict[str, Any], vms: int) -> tuple[dict[str, Any], str]:
    """The document with one rule's port changed: the first single-port tcp rule of the
    middle NIC's first group."""
    group = hvgen.groups_of(vms // 2)[0]
    for rule in doc["security_groups"][group]["rules"]:
        ports = rule.get("ports", "")
        if rule.get("protocol") == "tcp" and "/" in ports and ports.split("/")[0] == ports.split("/")[1]:
            p = int(ports.split("/")[0])
            q = p + 1 if p < 65535 else p - 1
            rule["ports"] = f"{q}/{q}"
            return doc, f"{group}/{rule['id']}: tcp {p} -> {q}"
    raise RuntimeError(f"no single-port tcp rule in {group}")


def kernel_counters(ns: str) -> dict[str, int]:
    """Every sgagent counter in the namespace (over netlink) and the measured flow's two."""
    from sgagent.nft.backend import NftBackend
    with NftBackend(ns) as be:
        readings = be.counters()
    out = {"counters": len(readings)}
    for r in readings:
        if r.key.rule in ("bench-client", "bench-server"):
            out[r.key.rule] = r.packets
    return out


def size_steps(work: Path, vms: int, rules: int, seed: int, ns: dict[str, str], raw_ns: str,
               budget: Budget, log: Callable[[str], None],
               baseline: Path | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"vms": vms, "rules_per_nic": rules, "rules": vms * rules}
    doc_path = work / f"hv{vms}.json"
    doc = hvgen.generate(vms, rules, seed=seed, bench_pair=True)
    doc_path.write_text(json.dumps(doc))
    row["doc_bytes"] = doc_path.stat().st_size
    doc, row["edit"] = edited(doc, vms)
    edit_path = work / f"hv{vms}-edit.json"
    edit_path.write_text(json.dumps(doc))
    del doc
    text = work / f"hv{vms}.nft"

    def step(name: str, argv: list[str], **kw) -> dict[str, Any]:
        log(f"hypervisor: {vms} NICs x {rules:,}: {name} (timeout {budget.timeout():.0f} s) ...")
        r = bounded(argv, budget.timeout(), **kw)
        log(f"hypervisor:   -> {_brief(r)}")
        return r

    ph = step("phases", [common.PYTHON, str(BENCH / "apply.py"), "--child", "phases",
                         str(doc_path)])
    if "output" in ph:
        ph.update(json.loads(ph.pop("output").strip().splitlines()[-1]))
    row["phases"] = ph
    comp = step("sgagent compile", common.SGAGENT + ["compile", str(doc_path)], stdout_to=text)
    if "s" in comp:
        comp["text_bytes"] = text.stat().st_size
        with open(text, "rb") as f:
            comp["text_lines"] = sum(1 for _ in f)
    row["compile"] = comp
    row["cli_apply"] = _clean(step("sgagent apply",
                                   common.SGAGENT + ["apply", str(doc_path), "--netns", ns["hv"]]))
    if "s" in row["cli_apply"]:
        with contextlib.suppress(Exception):
            row["kernel"] = kernel_counters(ns["hv"])
    if "s" in comp:
        row["nft_f"] = _clean(step("nft -f", ["ip", "netns", "exec", raw_ns, "nft", "-f",
                                              str(text)]))
    else:
        row["nft_f"] = {"skipped": "no text: sgagent compile did not finish"}
    if "s" in row["cli_apply"]:
        row["edit_cli_apply"] = _clean(step("one rule edited, sgagent apply",
                                            common.SGAGENT + ["apply", str(edit_path), "--netns",
                                                              ns["hv"]]))
    else:
        row["edit_cli_apply"] = {"skipped": "the full apply did not finish"}
    if baseline is not None:
        common.in_ns(raw_ns, "nft", "flush", "ruleset", check=False, timeout=300)
        row["cli_apply_baseline"] = _clean(step(
            "sgagent apply, baseline", ["env", f"PYTHONPATH={baseline}", common.PYTHON, "-c",
                                        RUN_CLI, "apply", str(doc_path), "--netns", raw_ns]))
    a, n = row["cli_apply"].get("s"), row["nft_f"].get("s")
    row["cli_vs_nft_f"] = round(a / n, 2) if a and n else None
    b = row.get("cli_apply_baseline", {}).get("s")
    if a and b:
        row["cli_vs_cli_baseline"] = round(a / b, 2)
    text.unlink(missing_ok=True)
    return row


def _clean(r: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in r.items() if k != "output"}
    if r.get("output"):
        out["said"] = r["output"].strip()[-300:]
    return out


def _brief(r: dict[str, Any]) -> str:
    if "s" in r:
        return f"{r['s']:.2f} s, {r['maxrss_mb']:.0f} MB"
    return next(f"{k}: {v}" for k, v in r.items() if k in ("timed_out", "skipped", "failed"))


def first_packet(setups: list[tuple[str, dict[str, str]]], exe: Path, reps: int, seconds: float,
                 budget: Budget, log: Callable[[str], None]) -> dict[str, Any]:
    """Connections VM 0 -> VM 1 through each hypervisor, interleaved round by round."""
    servers = []
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in setups}
    attempted = {name: 0 for name, _ in setups}
    try:
        for name, ns in setups:
            srv = subprocess.Popen(["ip", "netns", "exec", ns["b"], str(exe), "server",
                                    str(hvgen.SERVER_PORT)], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
            servers.append(srv)
            line = srv.stdout.readline() if srv.stdout else ""
            if "listening" not in line:
                raise RuntimeError(f"the server in {ns['b']} did not start: {line!r}")

        def measure(name: str, ns: dict[str, str], secs: float) -> dict[str, Any]:
            with contextlib.suppress(Exception):
                common.in_ns(ns["hv"], "conntrack", "-F", check=False, timeout=30)
            out = common.in_ns(ns["a"], str(exe), "client", hvgen.BENCH_SERVER,
                               str(hvgen.SERVER_PORT), str(secs), "1", timeout=secs + 30)
            m = json.loads(out.stdout)
            attempted[name] += m["connections"] + m["errors"]
            return m

        for name, ns in setups:
            measure(name, ns, min(0.3, seconds))  # warm up
        done = 0
        for rep in range(reps):
            if budget.left() < len(setups) * (seconds + 5) + 30:
                log("hypervisor: first packet: the time budget ends the rounds early")
                break
            order = setups[rep % len(setups):] + setups[:rep % len(setups)]
            for name, ns in order:
                samples[name].append(measure(name, ns, seconds))
            done += 1
            log(f"hypervisor: first packet: round {rep + 1}/{reps} done")
    finally:
        for srv in servers:
            if srv.poll() is None:
                srv.kill()
                srv.wait(timeout=10)
    base, ct = samples[setups[0][0]], samples[setups[1][0]]
    rows = []
    for name, ns in setups:
        s = samples[name]
        row: dict[str, Any] = {"name": name, "rounds": len(s)}
        if s:
            row.update({
                "rate": common.rnd(common.median([m["rate"] for m in s]), 1),
                "p50_us": common.median([m["p50_us"] for m in s]),
                "p99_us": common.median([m["p99_us"] for m in s]),
                "errors": sum(m["errors"] for m in s),
                "vs_none": common.rnd(common.median(
                    [m["rate"] / b["rate"] for m, b in zip(s, base) if b["rate"]]), 3),
                "vs_conntrack_only": common.rnd(common.median(
                    [m["rate"] / b["rate"] for m, b in zip(s, ct) if b["rate"]]), 3),
                "p50_vs_conntrack_only": common.rnd(common.median(
                    [m["p50_us"] / b["p50_us"] for m, b in zip(s, ct) if b["p50_us"]]), 3),
                "connections_attempted": attempted[name]})
        if name.startswith("hypervisor"):
            with contextlib.suppress(Exception):
                k = kernel_counters(ns["hv"])
                row["counted_entering"] = k.get("bench-client")
                row["counted_leaving"] = k.get("bench-server")
        rows.append(row)
    return {"reps": reps, "seconds": seconds, "configs": rows}


def run(sizes: list[int] | None = None, rules: int = 1000, reps: int = 5, seconds: float = 1.0,
        budget_s: float = 1140, step_cap: float = 420, seed: int = 1,
        log: Callable[[str], None] = print, baseline: str | None = None) -> dict[str, Any]:
    common.require_root()
    sizes = sizes or [10, 30, 100]
    budget = Budget(budget_s, step_cap)
    tok = common.token()
    names = []
    for k in range(len(sizes) + 2):
        names += [f"{tok}h{k}", f"{tok}a{k}", f"{tok}b{k}"]
    names += [f"{tok}r{k}" for k in range(len(sizes))]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sgbench-") as tmp, common.namespaces(names):
        work = Path(tmp)
        base_dir = extract(baseline, work / "baseline") if baseline else None
        exe = connrate.build(work)
        base = [("none", wire(tok, len(sizes), 2)), ("conntrack only", wire(tok, len(sizes) + 1, 2))]
        common.in_ns(base[1][1]["hv"], "nft", "-f", "-", input=CT_ONLY)
        setups = list(base)
        for k, vms in enumerate(sizes):
            ns = wire(tok, k, vms)
            raw = f"{tok}r{k}"
            common.in_ns(raw, "ip", "-batch", "-", input=idle_nics(0, vms))
            rows.append(size_steps(work, vms, rules, seed, ns, raw, budget, log, base_dir))
            with contextlib.suppress(Exception):  # the raw load is only timed: free it
                common.in_ns(raw, "nft", "flush", "ruleset", check=False, timeout=300)
            if "s" in rows[-1]["cli_apply"]:
                setups.append((f"hypervisor {vms} x {rules:,}", ns))
        fp = first_packet(setups, exe, reps, seconds, budget, log)
    return {"benchmark": "hypervisor", "date": common.now_iso(), "machine": common.machine(),
            "params": {"sizes_vms": sizes, "rules_per_nic": rules, "reps": reps,
                       "seconds": seconds, "budget_s": budget_s, "step_timeout_cap_s": step_cap,
                       "seed": seed, "baseline": baseline},
            "sizes": rows, "first_packet": fp, "targets": targets(rows, fp)}


def targets(rows: list[dict[str, Any]], fp: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    big = next((r for r in rows if r["rules"] == 100_000), None)
    if big:
        a = big["cli_apply"]
        out.append({"what": "full apply, CLI end to end, of 100 NICs x 1,000 rules <= 10 s "
                            "with peak RSS <= 500 MB",
                    "value_s": a.get("s"), "value_mb": a.get("maxrss_mb"),
                    "status": a if "s" not in a else None,
                    "met": ("s" in a and a["s"] <= 10 and a["maxrss_mb"] <= 500)})
        hv = next((c for c in fp["configs"] if c["name"].startswith("hypervisor 100 ")), None)
        if hv and hv.get("p50_vs_conntrack_only") is not None:
            out.append({"what": "first packet (median connect latency, forwarded) at 100,000 "
                                "rules within 10 % of a conntrack-only ruleset",
                        "value_ratio": hv["p50_vs_conntrack_only"],
                        "met": hv["p50_vs_conntrack_only"] <= 1.10})
    return out


def _cell(r: dict[str, Any]) -> str:
    if "s" in r:
        return f"{r['s']:.2f} s, {r['maxrss_mb']:,.0f} MB"
    if r.get("timed_out"):
        return f"timed out at {r['timeout_s']} s"
    if "skipped" in r:
        return f"skipped ({r['skipped']})"
    return "failed" if "failed" in r else "–"


def markdown(res: dict[str, Any]) -> str:
    p = res["params"]
    lines = [f"The hypervisor case: one VPC NIC per VM, {p['rules_per_nic']:,} rules each "
             "(bench/hvgen.py); each step in a fresh process (wall time, peak RSS).", "",
             "| NICs x rules | read + validate / compile / render / text (in-process) | peak RSS "
             "after render | `sgagent compile` | text | `sgagent apply` (CLI) | raw `nft -f` "
             "| CLI / nft -f | one rule edited, CLI apply |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["sizes"]:
        ph, comp = r["phases"], r["compile"]
        stages = (" / ".join(f"{ph[k]:.2f}" for k in ("read_validate_s", "compile_s", "render_s",
                                                      "text_s")) + " s"
                  if "render_s" in ph else _cell(ph))
        rss = (ph.get("peak_rss_mb_after") or {}).get("render")
        text = (f"{comp['text_bytes'] / 1e6:.1f} MB, {comp['text_lines']:,} lines"
                if "text_bytes" in comp else "–")
        ratio = f"{r['cli_vs_nft_f']:.1f}x" if r.get("cli_vs_nft_f") else "–"
        lines.append(f"| {r['vms']} x {r['rules_per_nic']:,} | {stages} | {common.fmt(rss)} MB "
                     f"| {_cell(comp)} | {text} | {_cell(r['cli_apply'])} | {_cell(r['nft_f'])} "
                     f"| {ratio} | {_cell(r['edit_cli_apply'])} |")
    for r in res["sizes"]:
        if "cli_apply_baseline" in r:
            lines.append(f"\n{r['vms']} x {r['rules_per_nic']:,}: `sgagent apply` as at "
                         f"{p.get('baseline')}: {_cell(r['cli_apply_baseline'])}; now / then "
                         f"{common.fmt(r.get('cli_vs_cli_baseline'))}x.")
    fp = res["first_packet"]
    lines += ["", f"Forwarded connections VM 0 -> VM 1 through the hypervisor (closed loop, one "
              f"connect in flight, {fp['seconds']} s x {fp['reps']} interleaved rounds, medians):",
              "", "| hypervisor ruleset | conn/s | vs no table | vs conntrack only | p50 µs "
              "| p50 vs conntrack only | p99 µs | counted entering / leaving / attempted |",
              "|---|---:|---:|---:|---:|---:|---:|---|"]
    for c in fp["configs"]:
        counted = (f"{common.fmt(c.get('counted_entering'))} / {common.fmt(c.get('counted_leaving'))}"
                   f" / {common.fmt(c.get('connections_attempted'))}"
                   if "counted_entering" in c else "–")
        lines.append(f"| {c['name']} | {common.fmt(c.get('rate'))} | {common.pct(c.get('vs_none'))} "
                     f"| {common.pct(c.get('vs_conntrack_only'))} | {common.fmt(c.get('p50_us'))} "
                     f"| {common.fmt(c.get('p50_vs_conntrack_only'), 2)} "
                     f"| {common.fmt(c.get('p99_us'))} | {counted} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10,30,100", help="numbers of VMs (NICs)")
    ap.add_argument("--rules", type=int, default=1000, help="rules per NIC")
    ap.add_argument("--reps", type=int, default=5, help="first-packet rounds")
    ap.add_argument("--seconds", type=float, default=1.0, help="seconds per first-packet round")
    ap.add_argument("--budget", type=float, default=1140, help="seconds for the whole run")
    ap.add_argument("--step-timeout", type=float, default=420, help="cap of one step")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--baseline", metavar="COMMIT",
                    help="also run sgagent apply as it was at this commit, side by side")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args(argv)
    res = run([int(x) for x in a.sizes.split(",")], a.rules, a.reps, a.seconds, a.budget,
              a.step_timeout, a.seed, baseline=a.baseline)
    common.write_json(a.out, res)
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
