"""bench/fleet_fanout.py at a tiny size writes its JSON, and every simulated agent saw every
change (no timing is asserted)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_fleet_fanout_smoke(tmp_path: Path):
    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed (apt-get install etcd-server)")
    out = tmp_path / "fleet.json"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "fleet_fanout.py"), "--agents", "8",
                        "--workers", "2", "--changes", "4", "--every", "0.2", "--out", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["benchmark"] == "fleet" and data["agents"] == 8
    assert [c["reached"] for c in data["per_change"]] == [8, 8, 8, 8]
    assert [c["kind"] for c in data["per_change"]] == ["group", "registration"] * 2
    assert data["change"]["group"]["reached_all"] and data["change"]["registration"]["reached_all"]
    assert data["startup"]["agents_full_read_mb"] >= 0 and data["etcd_rss_mb"]["after_changes"] > 0
