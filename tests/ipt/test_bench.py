"""bench/iptables.py runs end to end at a tiny size and its checks hold: every backend
applies (also the rendering of another commit, --before), the deciding rule counted the connections, nothing fails."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_iptables_bench_smoke(root, tmp_path):
    out = tmp_path / "iptables.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "iptables.py"),
                           "--apply-sizes", "30", "--size", "30", "--reps", "1",
                           "--seconds", "0.1", "--skip", "iptc", "--before", "HEAD",
                           "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["benchmark"] == "iptables"
    assert {r["backend"] for r in data["apply"]} == {
        "nftables sets", "iptables sets (legacy)", "iptables sets (nf_tables)",
        "iptables linear (legacy)", "iptables sets (legacy, HEAD)",
        "iptables sets (nf_tables, HEAD)"}
    assert set(data["target"]["values"]) == {"iptables sets (legacy)",
                                             "iptables sets (nf_tables)"}
    assert not [r for r in data["apply"] if "error" in r]
    for r in data["first_packet"]:
        assert r["connections"] > 0
        if r["counted_on_client_rule"] is not None:
            assert r["counted_on_client_rule"] >= r["connections"]
