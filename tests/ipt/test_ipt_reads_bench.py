"""bench/ipt_reads.py runs end to end at a tiny size: both trees apply in one namespace, the
unchanged apply of this tree takes the mark (renders nothing), the scrape reads counters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ipt_reads_bench_smoke(root, tmp_path):
    out = tmp_path / "ipt_reads.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "ipt_reads.py"),
                           "--sizes", "30", "--variants", "legacy", "--reps", "1",
                           "--current", "HEAD", "--before", "HEAD", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    (row,) = data["rows"]
    assert row["rules"] == 30 and row["variant"] == "legacy" and row["counters"] > 30
    assert row["scrape_s"] > 0 and row["read_suppressed_alone_s"] > 0
    for kind in ("new", "old", "new_unmarked"):
        assert row[f"unchanged_apply_{kind}"]["apply_s"] > 0
    assert row["unchanged_apply_new"]["modes"] == ["delta"]
