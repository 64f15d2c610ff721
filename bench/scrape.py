#!/usr/bin/env python3
"""Benchmark: one Prometheus scrape of sgagent at 10,000 rules.

Builds a host document with RULES rules (one NIC, 10 groups; ``bench/docgen.py``'s when it is
there, else a simple one of its own), applies it with the real
nftables backend in a scratch network namespace (created here, removed at the end, whatever
happens), then times SCRAPES scrapes:

* ``registry``: ``registry.exposition()`` -- the whole text the endpoint serves, including the
  one read of the kernel's counters (one netlink dump, :class:`NetlinkCounterReader`);
* ``http``: ``GET /metrics`` through a :class:`sgagent.metrics.MetricsServer` on 127.0.0.1;
* ``kernel_read_netlink``: the one read of the kernel alone (:class:`NetlinkCounterReader`);
* ``registry_via_libnftables``: the same scrape reading through ``NftBackend.counters()``
  (libnftables' JSON listing) instead, for comparison.

Times are wall clock (median, p90) and the CPU time of the scraping thread.

Memory (tracemalloc, in a separate pass so tracing does not slow the timed runs): the peak of
traced memory during one scrape and the memory allocated and still held after it.

Writes ``bench/results/scrape.json`` and prints one markdown line for the README.
Needs root (network namespace, nftables).  Usage: ``.venv/bin/python bench/scrape.py [--rules N]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import secrets
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import httpx

from sgagent import netns
from sgagent.compiler import compile_document
from sgagent.load import parse_data
from sgagent.metrics import AgentStats, MetricsServer, build_registry
from sgagent.nft.netlink import NetlinkCounterReader
from sgagent.nft.backend import NftBackend

TARGET_MS = 100.0
RESULTS = Path(__file__).resolve().parent / "results" / "scrape.json"


def document(rules: int, groups: int = 10) -> dict:
    per_group = -(-rules // groups)
    sgs = {}
    n = 0
    for g in range(groups):
        rs = []
        for i in range(per_group):
            if n == rules:
                break
            inbound = n % 4 != 3
            rule = {
                "id": f"r{n}",
                "direction": "inbound" if inbound else "outbound",
                "policy": "drop" if n % 5 == 0 else "accept",
                "protocol": "udp" if n % 2 else "tcp",
                "ports": str(1024 + n % 60000),
                "priority": 1 + n % 100,
                ("source" if inbound else "destination"):
                    f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}",
            }
            rs.append(rule)
            n += 1
        sgs[f"sg-bench-{g}"] = {"type": "basic", "rules": rs}
    return {
        "version": 1,
        "host": {"instance": "i-bench", "account": "1001", "network": "vpc",
                 "nics": [{"name": "eth0", "role": "vpc", "security_groups": sorted(sgs)}]},
        "security_groups": sgs,
    }


def ms(samples: list[tuple[float, float]]) -> dict:
    wall = sorted(w for w, _ in samples)
    cpu = sorted(c for _, c in samples)
    return {"median_ms": round(statistics.median(wall) * 1000, 2),
            "p90_ms": round(wall[int(0.9 * (len(wall) - 1))] * 1000, 2),
            "min_ms": round(wall[0] * 1000, 2), "max_ms": round(wall[-1] * 1000, 2),
            "cpu_median_ms": round(statistics.median(cpu) * 1000, 2)}


def timed(fn, n: int) -> list[tuple[float, float]]:
    """(wall, CPU of this thread) seconds of ``n`` calls."""
    out = []
    for _ in range(n):
        w, c = time.perf_counter(), time.thread_time()
        fn()
        out.append((time.perf_counter() - w, time.thread_time() - c))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rules", type=int, default=10_000)
    ap.add_argument("--scrapes", type=int, default=30)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/scrape.py needs root (a scratch network namespace and nftables)",
              file=sys.stderr)
        return 1

    try:   # the benchmarks' shared realistic documents, when present
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from docgen import generate
        data, generator = generate(args.rules), "bench/docgen.py"
    except ImportError:
        data, generator = document(args.rules), "bench/scrape.py"
    doc = parse_data(data, "bench")
    rs = compile_document(doc)
    counters = sum(len(c.counters) for c in rs.chains)
    name = f"sgbench-{secrets.token_hex(3)}"
    netns.create(name)
    try:
        with NftBackend(name) as backend, NetlinkCounterReader(name) as reader:
            t = time.perf_counter()
            backend.apply(rs)
            apply_s = time.perf_counter() - t
            stats = AgentStats(backend.name)
            stats.ruleset_applied(rs)
            stats.apply_finished(apply_s, "success")
            registry = build_registry(stats, reader)
            body = registry.exposition()                # warm up (and check)
            samples = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
            if sorted(reader(), key=repr) != sorted(backend.counters_via_listing(), key=repr):
                raise SystemExit("netlink and libnftables read different counters")

            gc.collect()
            scrape = timed(registry.exposition, args.scrapes)
            kernel = timed(reader, args.scrapes)
            slow_registry = build_registry(AgentStats(backend.name), backend.counters_via_listing)
            slow_registry.exposition()
            slow = timed(slow_registry.exposition, max(3, args.scrapes // 6))
            with MetricsServer(registry, "127.0.0.1", 0) as server, \
                    httpx.Client(timeout=10.0, trust_env=False) as client:
                def get():
                    r = client.get(server.url)
                    r.raise_for_status()
                http = timed(get, args.scrapes)

            gc.collect()
            tracemalloc.start()
            base, _ = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            registry.exposition()
            held, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
    finally:
        netns.delete(name)

    result = {
        "rules": args.rules,
        "document": generator,
        "counters": counters,
        "samples": samples,
        "exposition_bytes": len(body),
        "scrapes": args.scrapes,
        "apply_s": round(apply_s, 3),
        "registry": ms(scrape),
        "http": ms(http),
        "kernel_read_netlink": ms(kernel),
        "registry_via_libnftables": ms(slow),
        "memory": {"peak_during_scrape_bytes": peak - base, "held_after_scrape_bytes": held - base},
        "target_ms": TARGET_MS,
        "pass": statistics.median(w for w, _ in scrape) * 1000 <= TARGET_MS,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2),   # other work on the machine
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print()
    print(f"| Prometheus scrape at {args.rules:,} rules ({samples:,} samples, "
          f"{len(body) / 1e6:.1f} MB) | {result['registry']['median_ms']} ms median, "
          f"{result['registry']['p90_ms']} ms p90 (HTTP GET {result['http']['median_ms']} ms; "
          f"the kernel read alone {result['kernel_read_netlink']['median_ms']} ms, "
          f"{result['registry_via_libnftables']['median_ms']:.0f} ms through libnftables) | "
          f"{(peak - base) / 1e6:.1f} MB allocated at peak per scrape | <= {TARGET_MS:.0f} ms |")
    return 0 if result["pass"] else 2


if __name__ == "__main__":
    sys.exit(main())
