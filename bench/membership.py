#!/usr/bin/env python3
"""One member added to a group that many rules reference: wall time and transaction size.

For each size a namespace and one :class:`NftBackend` (sets rendering) that applies the
generated document (bench/docgen.py) whose group ``sg-peer-0`` is the peer of ``refs`` rules.
Then, ``--changes`` times, the same document with one more member in that group (10.255.1.k,
an address no rule names) is applied by the same backend: the second and later applies send
only the difference.  Timed apart:

* ``apply``: :meth:`NftBackend.apply` alone (what the target is about), and the part of it spent
  in the kernel transaction: libnftables, or the netlink batch when only elements change;
* ``parse + compile``: validating and compiling the new document, which a daemon also does for
  every change (as the daemon does it: a members-only change through ``DocumentCache`` and
  ``compile_document(..., previous)``, which touch only the members, from the JSON bytes a
  source would receive);
* the transaction: ``ApplyResult.commands`` (elements or script lines) and its bytes, its mode
  (``delta`` expected) and channel (``netlink`` expected: element updates only).

Sizes are interleaved change by change.  The group keeps 1,000 references where the document
has room for them: at 100 rules it is the peer of 99 (every rule but the benchmark client's).

    .venv/bin/python bench/membership.py [--sizes 100,1000,10000] [--refs 1000] [--changes 10]

Writes bench/results/membership.json (``--out``).  Needs root and nft.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as common  # noqa: E402
import docgen  # noqa: E402
from apply import TimedNft  # noqa: E402
from sgagent.compiler import compile_document  # noqa: E402
from sgagent.load import DocumentCache  # noqa: E402
from sgagent.nft.backend import NftBackend  # noqa: E402

OUT = common.RESULTS / "membership.json"
GROUP = "sg-peer-0"


def top_functions(pr: cProfile.Profile, top: int = 12) -> list[dict[str, Any]]:
    st = pstats.Stats(pr, stream=io.StringIO())
    rows = [{"function": f"{Path(f).name}:{line}({fn})", "calls": nc, "own_ms": round(1000 * tt, 2),
             "cumulative_ms": round(1000 * ct, 2)}
            for (f, line, fn), (cc, nc, tt, ct, _) in st.stats.items()]  # type: ignore[attr-defined]
    rows.sort(key=lambda r: -r["own_ms"])
    return rows[:top]


def run(sizes: list[int] | None = None, refs: int = 1000, changes: int = 10, seed: int = 1,
        log=print) -> dict[str, Any]:
    common.require_root()
    sizes = sizes or [100, 1000, 10_000]
    tok = common.token()
    names = [f"{tok}m{i}" for i in range(len(sizes))]
    state: dict[int, dict[str, Any]] = {}
    with common.namespaces(names):
        backends: list[NftBackend] = []
        try:
            for ns, n in zip(names, sizes):
                k = min(refs, n - 1)
                doc = docgen.generate(n, seed=seed, group_refs={GROUP: k})
                cache = DocumentCache()  # as a daemon's source keeps one
                t0 = time.perf_counter()
                parsed = cache.parse_data(doc)
                rs = compile_document(parsed)
                t1 = time.perf_counter()
                be = NftBackend(ns, "sets")
                backends.append(be)
                first = be.apply(rs)
                t2 = time.perf_counter()
                # time what reaches libnftables from now on (a first load goes over netlink and
                # may not have made libnftables' context yet)
                be.kernel._run(lambda nft: None)
                be.kernel._nft = TimedNft(be.kernel._nft)
                state[n] = {"doc": doc, "backend": be, "ns": ns, "refs": k, "cache": cache,
                            "previous": (parsed, rs),
                            "first": {"parse_compile_s": round(t1 - t0, 3),
                                      "apply_s": round(t2 - t1, 3), "mode": first.mode,
                                      "commands": first.commands},
                            "samples": []}
                log(f"membership: {n:,} rules loaded ({k:,} references to {GROUP})")
            for c in range(1, changes + 1):
                for n in sizes:
                    st = state[n]
                    raw = json.dumps(docgen.add_member(st["doc"], GROUP, c)).encode()
                    t0 = time.perf_counter()
                    parsed = st["cache"].parse_bytes(raw)
                    rs = compile_document(parsed, st["previous"])
                    t1 = time.perf_counter()
                    st["previous"] = (parsed, rs)
                    be: NftBackend = st["backend"]
                    before = len(be.kernel._nft.runs)
                    res = be.apply(rs)
                    t2 = time.perf_counter()
                    runs = be.kernel._nft.runs[before:]
                    kernel_bytes, kernel_s = sum(b for _, b in runs), sum(t for t, _ in runs)
                    if res.channel == "netlink":  # element updates sent as one netlink batch
                        kernel_bytes, kernel_s = be.kernel._writer.last_batch
                    st["samples"].append({
                        "apply_s": t2 - t1, "parse_compile_s": t1 - t0,
                        "transaction_s": kernel_s, "script_bytes": kernel_bytes,
                        "commands": res.commands, "mode": f"{res.mode} ({res.channel})"})
            # One more change at the largest size, under cProfile: where an apply's time goes.
            st = state[sizes[-1]]
            parsed = st["cache"].parse_data(docgen.add_member(st["doc"], GROUP, changes + 1))
            rs = compile_document(parsed, st["previous"])
            pr = cProfile.Profile()
            pr.enable()
            st["backend"].apply(rs)
            pr.disable()
            st["profile_top_own_time"] = top_functions(pr)
            for n in sizes:
                st = state[n]
                listed = common.in_ns(st["ns"], "nft", "list", "set", "inet", "sgagent",
                                      f"g4_{GROUP}").stdout
                k = changes + 1 if n == sizes[-1] else changes
                last = docgen.add_member(st["doc"], GROUP, k)["security_groups"][GROUP]["members"][-1]
                st["last_member_in_kernel"] = last in listed
        finally:
            for be in backends:
                be.close()
    rows = []
    for n in sizes:
        st, s = state[n], state[n]["samples"]
        med = common.median
        rows.append({
            "rules": n, "group_references": st["refs"], "first_apply": st["first"],
            "changes": len(s),
            "apply_ms": common.rnd(1000 * med([x["apply_s"] for x in s]), 2),
            "apply_p90_ms": common.rnd(1000 * common.percentile([x["apply_s"] for x in s], 0.9), 2),
            "apply_max_ms": common.rnd(1000 * max(x["apply_s"] for x in s), 2),
            "transaction_ms": common.rnd(1000 * med([x["transaction_s"] for x in s]), 2),
            "parse_compile_ms": common.rnd(1000 * med([x["parse_compile_s"] for x in s]), 1),
            "commands": med([x["commands"] for x in s]),
            "script_bytes": med([x["script_bytes"] for x in s]),
            "modes": sorted({x["mode"] for x in s}),
            "last_member_in_kernel": st["last_member_in_kernel"],
            "apply_samples_ms": [round(1000 * x["apply_s"], 2) for x in s],
            **({"profile_top_own_time": st["profile_top_own_time"]}
               if "profile_top_own_time" in st else {}),
        })
    worst = max((r["apply_ms"] for r in rows if r["rules"] in (100, 10_000)), default=None)
    target = None if worst is None else {
        "what": "a membership change <= 20 ms, the same at 100 and at 10,000 rules",
        "value_ms": worst, "met": worst <= 20}
    return {"benchmark": "membership", "date": common.now_iso(), "machine": common.machine(),
            "params": {"sizes": sizes, "refs": refs, "changes": changes, "seed": seed,
                       "group": GROUP},
            "sizes": rows, "target": target}


def markdown(res: dict[str, Any]) -> str:
    p = res["params"]
    lines = [
        f"One member added to `{p['group']}` (the peer of up to {p['refs']:,} rules), applied by "
        f"the same backend that loaded the previous document; medians of {p['changes']} changes "
        f"per size, interleaved.",
        "",
        "| rules | rules referencing the group | `apply` (p90) | of which the kernel transaction "
        "| transaction | mode (channel) | parse + compile of the new document |",
        "|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in res["sizes"]:
        lines.append(
            f"| {r['rules']:,} | {r['group_references']:,} | {r['apply_ms']:.1f} ms "
            f"({r['apply_p90_ms']:.1f} ms) | {r['transaction_ms']:.1f} ms "
            f"| {r['commands']:,.0f} elements/lines, {r['script_bytes']:,.0f} B | {', '.join(r['modes'])} "
            f"| {r['parse_compile_ms']:,.0f} ms |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--refs", type=int, default=1000)
    ap.add_argument("--changes", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args(argv)
    res = run([int(x) for x in a.sizes.split(",")], a.refs, a.changes, a.seed)
    common.write_json(a.out, res)
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
