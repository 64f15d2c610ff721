#!/usr/bin/env python3
"""A fleet's fan-out on one etcd: N simulated agents, one group change, how fast it reaches
them all and what it costs etcd.

A simulated agent does, against the etcd gateway (``/v3/...``), what ``sgagent run`` with the
etcd source and ``register: true`` does, minus the kernel:

* at start: the full read (three ranges at one revision: ``hosts/``, ``groups/``,
  ``endpoints/``), then one watch over them from the next revision (``endpoints/`` to the end
  of ``hosts/``, as the agent does), then its registration (a lease
  granted, ``endpoints/<host>`` written on it), then a keep-alive every TTL/3;
* then it only listens.

The fleet holds N bindings (about 300 bytes each, two NICs bound to a few of 20 groups) and 20
groups, written first in transactions of 100 keys.  The agents are spread over ``--workers``
processes; each process runs its agents' start-up on a thread pool and all their watch streams
on one ``selectors`` loop (raw HTTP/1.1 sockets), noting when each stream first shows each
``mod_revision``.  Then ``--changes`` times, ``--every`` seconds apart, the controller writes
one group (alternately: one registration, a member change) and notes the time; an agent's
latency for a change is when the first of its streams showed that revision, minus that time
(one machine, one clock).

Measured: per change, the latency to every agent (p50, p99, max, and how many agents got it);
etcd's CPU time (``/proc/<pid>/stat``) and RSS; the bytes the agents' streams received per
change (what etcd sent them) and etcd's own counter of gRPC bytes sent; for start-up, the
wall time, etcd CPU and the bytes read by the agents.

    .venv/bin/python bench/fleet_fanout.py [--agents 1000] [--workers 4] [--changes 20]

Writes bench/results/fleet.json (``--out``).  Needs etcd (not root); about two minutes at
1,000 agents on two cores.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import http.client
import json
import multiprocessing as mp
import os
import re
import resource
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as common  # noqa: E402

OUT = common.RESULTS / "fleet.json"
P = "/sgagent"
GROUPS = 20
TTL = 30
REV = re.compile(rb'"mod_revision":"(\d+)"')


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def prefix_end(prefix: str) -> str:
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Conn:
    """One keep-alive HTTP connection to the gateway."""

    def __init__(self, port: int) -> None:
        self.c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.received = 0

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        r = self.c.getresponse()
        data = r.read()
        self.received += len(data)
        return json.loads(data)


# -- etcd ------------------------------------------------------------------------------------
class Etcd:
    def __init__(self, workdir: Path) -> None:
        self.port, self.peer = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        peer = f"http://127.0.0.1:{self.peer}"
        self.log = open(workdir / "etcd.log", "ab")
        self.proc = subprocess.Popen(
            ["etcd", "--name", "bench", "--data-dir", str(workdir / "data"),
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"bench={peer}", "--log-level", "warn",
             "--max-txn-ops", "1000"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                         "ETCD_UNSUPPORTED_ARCH": os.uname().machine})
        deadline = time.monotonic() + 20
        while True:
            try:
                Conn(self.port).post("/v3/kv/range", {"key": b64("/")})
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def cpu(self) -> float:
        f = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def grpc_sent(self) -> float:
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith("etcd_network_client_grpc_sent_bytes_total"):
                total += float(line.split()[-1])
        return total

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self.log.close()


# -- the fleet's keys ------------------------------------------------------------------------
def binding(i: int) -> dict[str, Any]:
    return {"instance": f"i-{i:05d}", "account": "1001",
            "nics": [{"name": "eth0", "security_groups": [f"sg-{i % GROUPS}", "sg-web"]},
                     {"name": "eth1", "security_groups": [f"sg-{(i * 7) % GROUPS}"]}]}


def group(port: int) -> dict[str, Any]:
    return {"account": "1001", "rules": [
        {"id": f"tcp-{port}", "direction": "inbound", "protocol": "tcp", "ports": port,
         "source": {"group": "sg-web"}},
        {"id": "ssh", "direction": "inbound", "protocol": "tcp", "ports": 22,
         "source": "10.0.0.0/8"}]}


def populate(port: int, agents: int) -> None:
    c = Conn(port)
    keys = {f"{P}/groups/sg-{g}": group(1000 + g) for g in range(GROUPS)}
    keys[f"{P}/groups/sg-web"] = group(8080)
    keys.update({f"{P}/hosts/h{i:05d}": binding(i) for i in range(agents)})
    items = list(keys.items())
    for k in range(0, len(items), 100):
        c.post("/v3/kv/txn", {"success": [
            {"request_put": {"key": b64(key), "value": b64(json.dumps(v))}}
            for key, v in items[k:k + 100]]})


# -- a worker process: its agents' start-up, then their streams -------------------------------
def start_agent(port: int, i: int) -> tuple[list[tuple[str, str, int]], int, int, float]:
    """What an agent does at start: the full read, the registration; returns its watch
    requests (prefix, start revision), the lease, the bytes read and the seconds taken."""
    t0 = time.monotonic()
    c = Conn(port)
    first = c.post("/v3/kv/range", {"key": b64(f"{P}/hosts/"),
                                    "range_end": b64(prefix_end(f"{P}/hosts/"))})
    rev = int(first["header"]["revision"])
    for section in ("groups", "endpoints"):
        p = f"{P}/{section}/"
        c.post("/v3/kv/range", {"key": b64(p), "range_end": b64(prefix_end(p)), "revision": rev})
    lease = int(c.post("/v3/lease/grant", {"TTL": TTL})["ID"])
    c.post("/v3/kv/put", {"key": b64(f"{P}/endpoints/h{i:05d}"), "lease": lease,
                          "value": b64(json.dumps({"nics": {"eth0": [
                              f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"],
                              "eth1": []}}))})
    c.c.close()
    return ([(f"{P}/endpoints/", f"{P}/hosts0", rev + 1)], lease, c.received,
            time.monotonic() - t0)


def watch_request(port: int, key: str, end: str, start: int) -> bytes:
    body = json.dumps({"create_request": {"key": b64(key), "range_end": b64(end),
                                          "start_revision": start}}).encode()
    return (f"POST /v3/watch HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: "
            f"application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def worker(port: int, ids: list[int], conn: Any) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sel = selectors.DefaultSelector()
    seen: dict[int, dict[int, float]] = {i: {} for i in ids}   # agent -> revision -> first time
    received = [0]
    tails: dict[socket.socket, bytes] = {}
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            for key, _ in sel.select(0.2):
                s, agent = key.fileobj, key.data
                try:
                    data = s.recv(1 << 16)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(s)
                    s.close()
                    continue
                now = time.time()
                received[0] += len(data)
                text = tails.get(s, b"") + data
                mine = seen[agent]
                for m in REV.finditer(text):
                    mine.setdefault(int(m.group(1)), now)
                tails[s] = text[-40:]
    t = threading.Thread(target=loop, daemon=True)
    t.start()

    leases: dict[int, int] = {}
    started = time.monotonic()
    startup_read = 0
    durations = []
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        for i, (watches, lease, nread, dt) in zip(ids, pool.map(lambda i: start_agent(port, i),
                                                                 ids)):
            startup_read += nread
            durations.append(dt)
            leases[i] = lease
            for key, end, start in watches:
                s = socket.create_connection(("127.0.0.1", port))
                s.sendall(watch_request(port, key, end, start))
                s.setblocking(False)
                sel.register(s, selectors.EVENT_READ, i)
    conn.send({"started": time.monotonic() - started, "startup_bytes": startup_read,
               "agent_start_s": durations})

    def keepalive() -> None:
        c = Conn(port)
        while not stop.wait(TTL / 3):
            for lease in leases.values():
                c.post("/v3/lease/keepalive", {"ID": lease})
    threading.Thread(target=keepalive, daemon=True).start()

    while True:
        msg = conn.recv()
        if msg == "bytes":
            conn.send(received[0])
        elif msg == "stop":
            stop.set()
            t.join(5)
            conn.send({"seen": seen, "received": received[0]})
            return


# -- the run -----------------------------------------------------------------------------------
def pctl(xs: list[float], p: float) -> float | None:
    """The ``p``-th percentile (0..100)."""
    return common.percentile(xs, p / 100)


def run(agents: int, workers: int, changes: int, every: float) -> dict[str, Any]:
    if shutil.which("etcd") is None:
        raise SystemExit("the fleet benchmark needs etcd (apt-get install etcd-server)")
    with tempfile.TemporaryDirectory(prefix="sgfleet") as tmp:
        etcd = Etcd(Path(tmp))
        try:
            return measure(etcd, agents, workers, changes, every)
        finally:
            etcd.stop()


def measure(etcd: Etcd, agents: int, workers: int, changes: int, every: float) -> dict[str, Any]:
    populate(etcd.port, agents)
    idle_rss = etcd.rss_mb()
    ctx = mp.get_context("fork")
    pipes, procs = [], []
    cpu0, sent0, t0 = etcd.cpu(), etcd.grpc_sent(), time.monotonic()
    for w in range(workers):
        a, b = ctx.Pipe()
        p = ctx.Process(target=worker, args=(etcd.port, list(range(w, agents, workers)), b),
                        daemon=True)
        p.start()
        pipes.append(a)
        procs.append(p)
    starts = [a.recv() for a in pipes]
    # the start-up storm: every registration reaches every agent's endpoints watch; wait until
    # the streams are quiet
    last, quiet_since = -1, time.monotonic()
    while time.monotonic() - quiet_since < 1.5:
        time.sleep(0.25)
        for a in pipes:
            a.send("bytes")
        total = sum(a.recv() for a in pipes)
        if total != last:
            last, quiet_since = total, time.monotonic()
    startup = {"wall_s": round(time.monotonic() - t0 - 1.5, 2),
               "etcd_cpu_s": round(etcd.cpu() - cpu0, 2),
               "etcd_grpc_sent_mb": round((etcd.grpc_sent() - sent0) / 1e6, 1),
               "agents_full_read_mb": round(sum(s["startup_bytes"] for s in starts) / 1e6, 1),
               "agents_stream_mb": round(last / 1e6, 1),
               "agent_start_p50_ms": common.rnd(1000 * pctl([d for s in starts for d in
                                                             s["agent_start_s"]], 50), 1),
               "etcd_rss_mb": round(etcd.rss_mb(), 1)}
    print(f"start-up: {startup}", flush=True)

    c = Conn(etcd.port)
    cpu1, sent1 = etcd.cpu(), etcd.grpc_sent()
    bytes1 = last
    puts: list[tuple[str, int, float]] = []
    for k in range(changes):
        time.sleep(every)
        if k % 2 == 0:
            key, value, kind = f"{P}/groups/sg-web", group(8081 + k), "group"
        else:
            key, kind = f"{P}/endpoints/h{k:05d}", "registration"
            value = {"nics": {"eth0": [f"10.200.0.{k}"], "eth1": []}}
        t = time.time()
        r = c.post("/v3/kv/put", {"key": b64(key), "value": b64(json.dumps(value))})
        puts.append((kind, int(r["header"]["revision"]), t))
    time.sleep(max(2.0, every))
    cpu2, sent2 = etcd.cpu(), etcd.grpc_sent()
    rss = etcd.rss_mb()
    for a in pipes:
        a.send("stop")
    results = [a.recv() for a in pipes]
    for p in procs:
        p.join(10)
    seen: dict[int, dict[int, float]] = {}
    for r in results:
        seen.update(r["seen"])
    streamed = sum(r["received"] for r in results) - bytes1
    per_change = []
    for kind, rev, t in puts:
        lat = [seen[a][rev] - t for a in seen if rev in seen[a]]
        per_change.append({"kind": kind, "revision": rev, "reached": len(lat),
                           "p50_ms": common.rnd(1000 * pctl(lat, 50), 1),
                           "p99_ms": common.rnd(1000 * pctl(lat, 99), 1),
                           "max_ms": common.rnd(1000 * max(lat), 1) if lat else None})
    all_lat = {kind: [seen[a][rev] - t for kind2, rev, t in puts if kind2 == kind
                      for a in seen if rev in seen[a]] for kind in ("group", "registration")}
    n = len(puts)
    out = {
        "agents": agents, "workers": workers, "changes": n, "every_s": every,
        "lease_ttl_s": TTL, "groups": GROUPS + 1,
        "startup": startup,
        "change": {
            kind: {"p50_ms": common.rnd(1000 * pctl(lat, 50), 1),
                   "p99_ms": common.rnd(1000 * pctl(lat, 99), 1),
                   "max_ms": common.rnd(1000 * max(lat), 1) if lat else None,
                   "reached_all": all(c["reached"] == agents for c in per_change
                                      if c["kind"] == kind)}
            for kind, lat in all_lat.items()},
        "per_change_cost": {
            "etcd_cpu_ms": common.rnd(1000 * (cpu2 - cpu1) / n, 1),
            "etcd_grpc_sent_kb": common.rnd((sent2 - sent1) / n / 1e3, 1),
            "agents_received_kb": common.rnd(streamed / n / 1e3, 1),
            "bytes_per_agent": common.rnd(streamed / n / agents, 0),
            "note": "includes the lease keep-alives of the period (one per agent per "
                    f"{TTL // 3} s)"},
        "etcd_rss_mb": {"idle_with_fleet": round(idle_rss, 1), "after_changes": round(rss, 1)},
        "per_change": per_change,
        "target": {"p99_ms": 1000, "met": all(c["p99_ms"] is not None and c["p99_ms"] <= 1000
                                              and c["reached"] == agents for c in per_change)},
    }
    return out


def agent_side(hosts: int, changes: int = 20) -> dict[str, Any]:
    """One agent's own work for a fleet event, in-process (no etcd): its etcd source holding
    ``hosts`` bindings and registrations assembles, digests and parses its document again after
    one registration changed (a member of a group it uses), as it does for every event."""
    from sgagent.daemon.config import EtcdSource as EtcdConfig
    from sgagent.daemon.source_etcd import EtcdSource
    from sgagent.daemon.sources import Snapshot
    got: list[Any] = []
    src = EtcdSource(EtcdConfig(host="h00000"), got.append)
    src._host_value = json.dumps(binding(0)).encode()
    src._groups = {f"sg-{g}": json.dumps(group(1000 + g)).encode() for g in range(GROUPS)}
    src._groups["sg-web"] = json.dumps(group(8080)).encode()
    src._bindings = {f"h{i:05d}": json.dumps(binding(i)).encode() for i in range(1, hosts)}
    src._endpoints = {f"h{i:05d}": json.dumps({"nics": {"eth0": [
        f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"], "eth1": []}}).encode()
        for i in range(hosts)}
    t0 = time.perf_counter()
    src._publish(True)
    first = time.perf_counter() - t0
    times = []
    for k in range(changes):
        src._endpoints[f"h{k + 1:05d}"] = json.dumps({"nics": {"eth0": [f"10.201.{k}.1"],
                                                              "eth1": []}}).encode()
        t0 = time.perf_counter()
        src._publish(False)
        times.append(time.perf_counter() - t0)
    snaps = [e for e in got if isinstance(e, Snapshot)]
    return {"hosts": hosts, "first_assembly_ms": round(1000 * first, 1),
            "registration_event_p50_ms": common.rnd(1000 * pctl(times, 50), 2),
            "registration_event_max_ms": common.rnd(1000 * max(times), 2),
            "members_of_sg_web": len(snaps[-1].doc.security_groups["sg-web"].members),
            "snapshots": len(snaps)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--changes", type=int, default=20)
    ap.add_argument("--every", type=float, default=1.0, help="seconds between changes")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--agent-side-only", action="store_true",
                    help="measure only one agent's own work per event (1,000 and 10,000 hosts) "
                         "and add it to the results file")
    a = ap.parse_args()
    side = [agent_side(n) for n in (1000, 10_000)]
    print(f"agent side: {side}", flush=True)
    if a.agent_side_only:
        data = json.loads(a.out.read_text())
        data["agent_side"] = side
        common.write_json(a.out, data)
        return 0
    result = run(a.agents, a.workers, a.changes, a.every)
    data = {"benchmark": a.out.stem, "at": common.now_iso(), "machine": common.machine(),
            **result, "agent_side": side}
    common.write_json(a.out, data)
    g = result["change"]["group"]
    print(f"{a.agents} agents: a group change reaches them all: p50 {g['p50_ms']} ms, p99 "
          f"{g['p99_ms']} ms, max {g['max_ms']} ms; per change etcd CPU "
          f"{result['per_change_cost']['etcd_cpu_ms']} ms, "
          f"{result['per_change_cost']['agents_received_kb']} kB to the agents; "
          f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
