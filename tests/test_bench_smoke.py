"""Each benchmark script runs at a tiny size and writes valid JSON (no timing is asserted)."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

pytestmark = pytest.mark.kernel


def _needs_root(*tools: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("the benchmarks need root (network namespaces, nftables)")
    for tool in ("ip", "nft", *tools):
        if shutil.which(tool) is None:
            pytest.skip(f"the benchmarks need {tool}")


def _run(script: str, *args: str, out: Path) -> dict:
    proc = subprocess.run([sys.executable, str(BENCH / script), *args, "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["benchmark"] == out.stem
    assert data["machine"]["cpus"] >= 1
    return data


def test_docgen_documents_are_valid_and_the_client_rule_is_last():
    import docgen
    from sgagent.compiler import compile_document
    from sgagent.load import parse_data

    for n in (1, 50, 300):
        doc = docgen.generate(n)
        assert docgen.count_rules(doc) == n
        rs = compile_document(parse_data(doc))
        chain = rs.chain(docgen.NIC, "inbound")
        assert len(chain.decisions) == n
        assert chain.decisions[-1].counter.rule == "bench-client"
    doc = docgen.generate(200, group_refs={"sg-peer-0": 100})
    refs = [r for g in doc["security_groups"].values() for r in g["rules"]
            if r.get("source") == {"group": "sg-peer-0"}]
    assert len(refs) == 100
    more = docgen.add_member(doc, "sg-peer-0", 2)
    assert len(more["security_groups"]["sg-peer-0"]["members"]) == \
        len(doc["security_groups"]["sg-peer-0"]["members"]) + 2
    parse_data(more)


def test_heldout_documents_are_valid_and_only_the_client_rule_matches_the_client():
    import docgen
    import heldout
    import hvgen
    from sgagent.compiler import compile_document
    from sgagent.evaluator import Packet, evaluate
    from sgagent.load import parse_data

    for n in (1, 50, 400):
        doc = heldout.generate(n)
        assert docgen.count_rules(doc) == n
        parsed = parse_data(doc)
        rs = compile_document(parsed)
        inbound = rs.chain(docgen.NIC, "inbound").decisions
        assert inbound[-1].counter.rule == "bench-client"
        got = evaluate(parsed, Packet(nic=docgen.NIC, direction="inbound",
                                      peer=ipaddress.ip_address(docgen.CLIENT),
                                      protocol="tcp", port=docgen.SERVER_PORT))
        assert (got.verdict, got.rule) == ("accept", "bench-client"), got
    rules = [r for g in heldout.generate(400)["security_groups"].values() for r in g["rules"]]
    assert any(r["policy"] == "drop" for r in rules)
    assert any(r["direction"] == "outbound" for r in rules)
    hv = hvgen.generate(3, 200, bench_pair=True, mix="heldout")
    assert hvgen.count_rules(hv) == 600
    parse_data(hv)
    with pytest.raises(ValueError):
        hvgen.generate(3, 200, mix="nonesuch")


def test_connrate_smoke(tmp_path):
    _needs_root("gcc")
    data = _run("connrate.py", "--sizes", "30", "--reps", "1", "--seconds", "0.1",
                "--linear-max", "30", "--no-diagnostics", "--heldout", "30",
                out=tmp_path / "connrate.json")
    names = {c["name"]: c for c in data["configs"]}
    assert {"none", "conntrack-only", "sets-30", "linear-30", "heldout-30"} <= set(names)
    assert names["heldout-30"]["p50_latency_vs_conntrack_only"] > 0
    for name in ("sets-30", "linear-30", "heldout-30"):
        c = names[name]
        assert c["rate"] > 0 and c["p50_us"] is not None
        assert c["check"]["counted_on_client_rule"] > 0
        assert c["check"]["counted_on_other_rules"] == 0


def test_apply_smoke(tmp_path):
    _needs_root()
    data = _run("apply.py", "--sizes", "30", "--reps", "1", "--profile-size", "30",
                out=tmp_path / "apply.json")
    (row,) = data["sizes"]
    assert row["rules"] == 30
    for key in ("cli_s", "nft_f_s", "in_process_s", "cli_gc_off_s", "cli_maxrss_mb",
                "nft_f_maxrss_mb", "in_process_kernel_s", "cli_vs_nft_f"):
        assert row[key] is not None and row[key] > 0, key
    assert row["counters_in_kernel"] >= 30
    assert row["profile_top_own_time"]


def test_membership_smoke(tmp_path):
    _needs_root()
    data = _run("membership.py", "--sizes", "30", "--refs", "10", "--changes", "2",
                out=tmp_path / "membership.json")
    (row,) = data["sizes"]
    assert row["group_references"] == 10
    assert row["changes"] == 2 and row["apply_ms"] > 0
    assert row["commands"] >= 1 and row["last_member_in_kernel"]



def test_startup_smoke(tmp_path):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("the start-up benchmark needs git and this repository's history")
    data = _run("startup.py", "--rounds", "1", out=tmp_path / "startup.json")
    assert data["floor"]["python -c pass"]["median_ms"] > 0
    assert len(data["commands"]) == 3 and len(data["diagnostics"]) == 3
    for row in data["commands"].values():
        assert row["new"]["median_ms"] > 0 and row["old"]["peak_rss_mb"] > 0
        assert row["new_vs_old"] > 0 and row["same_output"] in (True, False)

def test_hvgen_documents_are_valid_and_the_measured_flow_is_decided_last():
    import hvgen
    from sgagent.compiler import compile_document
    from sgagent.load import parse_data

    doc = hvgen.generate(5, 40, bench_pair=True)
    assert hvgen.count_rules(doc) == 200
    assert [n["name"] for n in doc["host"]["nics"]] == [hvgen.nic_name(i) for i in range(5)]
    rs = compile_document(parse_data(doc))
    assert rs.chain("vm000", "inbound").decisions[-1].counter.rule == "bench-client"
    assert rs.chain("vm001", "outbound").decisions[-1].counter.rule == "bench-server"
    assert all(c.decisions for c in rs.chains)  # rules in both directions on every NIC


def test_hypervisor_smoke(tmp_path):
    _needs_root("gcc")
    data = _run("hypervisor.py", "--sizes", "2,3", "--rules", "20", "--reps", "1",
                "--seconds", "0.1", out=tmp_path / "hypervisor.json")
    assert [r["rules"] for r in data["sizes"]] == [40, 60]
    for row in data["sizes"]:
        for step in ("compile", "cli_apply", "nft_f", "edit_cli_apply"):
            assert row[step]["s"] > 0 and row[step]["maxrss_mb"] > 0, step
        assert row["phases"]["render_s"] >= 0 and row["compile"]["text_bytes"] > 0
        assert row["kernel"]["counters"] >= row["rules"]
    hv = [c for c in data["first_packet"]["configs"] if c["name"].startswith("hypervisor")]
    assert len(hv) == 2
    for c in hv:
        assert c["counted_entering"] == c["counted_leaving"] >= c["connections_attempted"] > 0


def test_summary_from_results(tmp_path):
    """run_all --summary-only turns whatever JSON is there into SUMMARY.md."""
    import run_all

    (tmp_path / "membership.json").write_text(json.dumps({
        "benchmark": "membership", "date": "2026-01-01T00:00:00Z",
        "machine": {"cpus": 2, "code": {}},
        "params": {"sizes": [100], "refs": 1000, "changes": 1, "seed": 1, "group": "sg-peer-0"},
        "sizes": [{"rules": 100, "group_references": 99, "apply_ms": 5.0, "apply_p90_ms": 6.0,
                   "transaction_ms": 1.0, "commands": 1, "script_bytes": 50, "modes": ["delta"],
                   "parse_compile_ms": 10.0}]}))
    assert run_all.main(["--summary-only", "--out-dir", str(tmp_path)]) == 0
    text = (tmp_path / "SUMMARY.md").read_text()
    assert "membership change" in text and "5.0 ms" in text
