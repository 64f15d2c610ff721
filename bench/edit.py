#!/usr/bin/env python3
"""One rule edited, source to kernel: how long the daemon takes to enforce a one-rule edit of a
large document (issue 10, incremental compile).

The daemon runs with the file source (as in bench/daemon_latency.py) in a throw-away network
namespace, on a document of 1,000 or 10,000 rules (bench/docgen.py: one NIC, 10 bound groups)
and, with ``--hypervisor``, 100 NICs x 1,000 rules (bench/hvgen.py).  Each step edits one
inbound tcp rule of one bound group: a new port, and a new id, so that the edited rule's
counter has a new name.  The clock starts just before the document is written (atomic rename)
and stops when that counter is readable in the kernel (it appears with its rule, in one
transaction).  The next edit is written only after the daemon logged the apply and then went
idle (its post-apply work, reading the table back and saving the document, done), so the edits
do not queue behind one another.  The daemon's own account ("N ms after the source changed")
is kept too.

Then, ``--binding-edits`` times, a whole group binding of that NIC is removed (one of its
bound groups dropped from its list) and added back: the clock stops when a counter of that
group's rules is gone from the kernel, and when it is back (target: p99 <= 200 ms at 10,000
rules).

``--baseline COMMIT`` runs the same steps, in the same run, with the daemon of that commit
(its ``agent/`` extracted with ``git archive`` into a scratch directory and put first on the
daemon's PYTHONPATH), for a side-by-side ratio; not for the hypervisor document, where that
daemon re-applies everything per edit (bench/hypervisor.py measured 83 s for one).

    .venv/bin/python bench/edit.py [--edits 20] [--sizes 1000,10000] [--hypervisor]
                                   [--baseline 38afdc0]

Needs root and nftables.  Writes bench/results/edit.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import docgen  # noqa: E402
import hvgen  # noqa: E402
from daemon_latency import percentiles, proc_stats  # noqa: E402

from sgagent import netns  # noqa: E402
from sgagent.ir import CounterKey  # noqa: E402
from sgagent.nft.netlink import (NFNL_SUBSYS_NFTABLES, NFPROTO_INET, NFT_MSG_GETOBJ,  # noqa: E402
                                 NFT_OBJECT_COUNTER, NFTA_OBJ_NAME, NFTA_OBJ_TABLE,
                                 NFTA_OBJ_TYPE, NLM_F_REQUEST, NLMSG, NLMSG_ERROR, I32,
                                 messages, nlattr)
from sgagent.nft.names import counter_name  # noqa: E402
from tests.daemon.support import Daemon, kill_all, write_atomic  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "edit.json"


def editable_rule(doc: dict) -> tuple[str, str, int]:
    """(NIC, group, rule index) of an inbound tcp rule with ports in a group bound to the
    document's middle NIC."""
    nics = doc["host"]["nics"]
    nic = nics[len(nics) // 2]
    for gname in nic["security_groups"]:
        for i, rule in enumerate(doc["security_groups"][gname].get("rules", ())):
            if rule.get("direction") == "inbound" and rule.get("protocol") == "tcp" \
                    and "ports" in rule:
                return nic["name"], gname, i
    raise ValueError("no inbound tcp rule with ports in the document")


def edited(doc: dict, where: tuple[str, str, int], k: int) -> tuple[dict, str]:
    """The document with edit ``k`` made, and the counter name of the edited rule."""
    nic, gname, i = where
    new = copy.copy(doc)
    new["security_groups"] = dict(doc["security_groups"])
    group = new["security_groups"][gname] = dict(doc["security_groups"][gname])
    rules = group["rules"] = list(group["rules"])
    rule = rules[i] = dict(rules[i])
    rule["id"] = f"edit-{k}"
    rule["ports"] = 20000 + k
    key = CounterKey(nic, "inbound", gname, rule["id"], rule.get("policy", "accept"))
    return new, counter_name(key)


def bound_group_counter(doc: dict, nic_name: str) -> tuple[str, str]:
    """(group, counter name of one of its inbound rules) for the last group bound to
    ``nic_name`` that has an inbound rule with an id."""
    nic = next(n for n in doc["host"]["nics"] if n["name"] == nic_name)
    for gname in reversed(nic["security_groups"]):
        for rule in doc["security_groups"][gname].get("rules", ()):
            if rule.get("direction") == "inbound" and "id" in rule:
                key = CounterKey(nic_name, "inbound", gname, rule["id"],
                                 rule.get("policy", "accept"))
                return gname, counter_name(key)
    raise ValueError(f"no bound group of {nic_name} with an inbound rule")


def unbound(doc: dict, nic_name: str, group: str) -> dict:
    """The document with ``group`` dropped from ``nic_name``'s bound groups."""
    new = copy.copy(doc)
    new["host"] = dict(doc["host"])
    nics = new["host"]["nics"] = list(doc["host"]["nics"])
    for i, nic in enumerate(nics):
        if nic["name"] == nic_name:
            nics[i] = dict(nic, security_groups=[g for g in nic["security_groups"]
                                                 if g != group])
    return new


class NetlinkProbe:
    """Whether a named counter is in table inet sgagent: one ``NFT_MSG_GETOBJ`` of that
    object over netlink (microseconds at any size), polled every millisecond from a thread
    inside the namespace.  libnftables' ``list counter`` (daemon_latency.CounterProbe) first
    loads its cache of the table's objects: seconds per look at 100,000 rules, which the
    figures would then measure instead of the daemon."""

    def __init__(self, ns: str) -> None:
        self.exec = netns.NetnsExecutor(ns)
        self.sock = self.exec.call(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12))
        self.seq = 0

    def present(self, name: str) -> bool:
        self.seq += 1
        body = (struct.pack("=BBH", NFPROTO_INET, 0, 0)
                + nlattr(NFTA_OBJ_TABLE, b"sgagent\0") + nlattr(NFTA_OBJ_NAME, name.encode() + b"\0")
                + nlattr(NFTA_OBJ_TYPE, struct.pack(">I", NFT_OBJECT_COUNTER)))
        self.sock.send(NLMSG.pack(NLMSG.size + len(body), (NFNL_SUBSYS_NFTABLES << 8)
                                  | NFT_MSG_GETOBJ, NLM_F_REQUEST, self.seq, 0) + body)
        buf = bytearray(1 << 16)
        while True:
            n = self.sock.recv_into(buf)
            for off, _, mtype, mseq in messages(buf, n):
                if mseq != self.seq:
                    continue
                if mtype == NLMSG_ERROR:
                    return I32.unpack_from(buf, off + 16)[0] == 0
                return True

    def _poll(self, name: str, timeout: float, want: bool) -> float:
        deadline = time.monotonic() + timeout

        def loop() -> float:
            while time.monotonic() < deadline:
                if self.present(name) == want:
                    return time.monotonic()
                time.sleep(0.001)
            raise TimeoutError(f"counter {name} {'absent' if want else 'present'} "
                               f"after {timeout}s")
        return self.exec.call(loop)

    def wait(self, name: str, timeout: float = 10.0) -> float:
        """Monotonic time at which counter ``name`` was first seen."""
        return self._poll(name, timeout, True)

    def gone(self, name: str, timeout: float = 10.0) -> float:
        """Monotonic time at which counter ``name`` was first found missing."""
        return self._poll(name, timeout, False)

    def close(self) -> None:
        self.exec.call(self.sock.close)
        self.exec.close()


def run(work: Path, ns: str, name: str, doc: dict, edits: int, env: dict[str, str],
        binding_edits: int = 0) -> dict:
    path = work / f"{name}.json"
    path.write_text(json.dumps(doc))
    d = Daemon({"source": {"file": {"path": str(path)}}, "netns": ns,
                "state_dir": str(work / f"state-{name}"), "log_level": "info",
                "resync_interval": 3600}, work, name, env=env)
    t0 = time.monotonic()
    d.start()
    d.wait_log("ready:", timeout=900)
    ready_s = time.monotonic() - t0
    wait_idle(d.pid)
    where = editable_rule(doc)
    probe = NetlinkProbe(ns)
    total, internal, removed, added = [], [], [], []
    current = doc
    try:
        for k in range(edits):
            new, counter = edited(doc, where, k)
            current = new
            text = json.dumps(new)
            mark = d.mark()
            t = time.monotonic()
            write_atomic(path, text)
            seen = probe.wait(counter, timeout=300)
            total.append(1000 * (seen - t))
            m = d.wait_log(r"([\d.]+) ms after the source changed", timeout=300, since=mark)
            internal.append(float(m.group(1)))
            wait_idle(d.pid)
        group, counter = bound_group_counter(current, where[0])
        without = unbound(current, where[0], group)
        for _ in range(binding_edits):
            for text, wait, into in ((json.dumps(without), probe.gone, removed),
                                     (json.dumps(current), probe.wait, added)):
                mark = d.mark()
                t = time.monotonic()
                write_atomic(path, text)
                seen = wait(counter, 300)
                into.append(1000 * (seen - t))
                d.wait_log(r"([\d.]+) ms after the source changed", timeout=300, since=mark)
                wait_idle(d.pid)
    finally:
        probe.close()
        d.stop(timeout=60)
        netns_flush(ns)
    return {"rules": docgen.count_rules(doc), "nics": len(doc["host"]["nics"]),
            "start_to_ready_s": round(ready_s, 2), "source_to_kernel": percentiles(total),
            "daemon_internal": percentiles(internal),
            **({"binding_removed": percentiles(removed), "binding_added": percentiles(added),
                "binding": percentiles(removed + added)} if binding_edits else {})}


def wait_idle(pid: int, window: float = 0.3, timeout: float = 300.0) -> None:
    """Until the daemon has used next to no CPU for ``window`` seconds: what it does after
    logging an apply (reading the table back, saving the document) is over, so the next edit
    does not queue behind it."""
    deadline = time.monotonic() + timeout
    cpu = proc_stats(pid)[0]
    while time.monotonic() < deadline:
        time.sleep(window)
        now = proc_stats(pid)[0]
        if now - cpu < 0.05 * window:
            return
        cpu = now


def netns_flush(ns: str) -> None:
    """Drop the table the daemon left, so the next daemon starts from nothing."""
    subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "sgagent"],
                   check=False, capture_output=True)


def baseline_env(work: Path, commit: str, label: str) -> dict[str, str]:
    """A PYTHONPATH whose ``sgagent`` is ``agent/`` as of ``commit``."""
    dest = work / label
    dest.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "agent"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    (dest / "agent").rename(dest / "sgagent")
    return {"PYTHONPATH": str(dest)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--edits", type=int, default=20)
    ap.add_argument("--binding-edits", type=int, default=10,
                    help="times a group binding is removed and added back")
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--hypervisor", action="store_true",
                    help="also 100 NICs x 1,000 rules (bench/hvgen.py)")
    ap.add_argument("--baseline", help="a commit to run side by side")
    ap.add_argument("--hypervisor-baseline", action="store_true",
                    help="run the baseline on the hypervisor document too (a daemon from "
                    "before change-sized applies re-applies everything per edit: minutes)")
    ap.add_argument("--current", help="a commit to run as the current daemon (default: the "
                    "working tree, with whatever is not committed)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces, nftables)", file=sys.stderr)
        return 1
    docs = {f"docgen_{n}": docgen.generate(int(n)) for n in args.sizes.split(",") if n}
    if args.hypervisor:
        docs["hypervisor_100x1000"] = hvgen.generate(100, 1000)
    ns = "sgedit" + secrets.token_hex(3)
    netns.create(ns)
    work = Path(tempfile.mkdtemp(prefix="sgagent-edit-"))
    result: dict = {
        "benchmark": "edit",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                 capture_output=True, text=True).stdout.strip(),
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                    "python": platform.python_version(),
                    "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]},
        "edits": args.edits,
        "target": {"p99_ms_at_10000": 100, "hypervisor_vs_1000": 2.0,
                   "binding_p99_ms_at_10000": 200},
        "runs": {},
    }
    try:
        envs = {"current": baseline_env(work, args.current, "current") if args.current
                else {}}
        if args.current:
            result["current"] = args.current
        if args.baseline:
            envs["baseline"] = baseline_env(work, args.baseline, "baseline")
            result["baseline"] = args.baseline
        for name, doc in docs.items():
            for label, env in envs.items():
                if label == "baseline" and name.startswith("hypervisor") \
                        and not args.hypervisor_baseline:
                    continue  # a whole re-apply per edit there: minutes (bench/hypervisor.py)
                print(f"{name} {label} ...", file=sys.stderr, flush=True)
                result["runs"].setdefault(name, {})[label] = \
                    run(work, ns, f"{name}-{label}", doc, args.edits, env, args.binding_edits)
            if "baseline" in result["runs"][name]:
                cur, base = result["runs"][name]["current"], result["runs"][name]["baseline"]
                result["runs"][name]["p50_ratio"] = round(
                    cur["source_to_kernel"]["p50_ms"] / base["source_to_kernel"]["p50_ms"], 3)
                result["runs"][name]["p99_ratio"] = round(
                    cur["source_to_kernel"]["p99_ms"] / base["source_to_kernel"]["p99_ms"], 3)
                if "binding" in cur and "binding" in base:
                    result["runs"][name]["binding_p99_ratio"] = round(
                        cur["binding"]["p99_ms"] / base["binding"]["p99_ms"], 3)
        result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        kill_all()
        netns.delete(ns)
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
