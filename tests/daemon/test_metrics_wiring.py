"""The daemon feeds sgagent.metrics: health and per-rule counters on its metrics endpoint."""

from __future__ import annotations

import base64
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .support import document, dump, free_port, wait_until, write_atomic

pytestmark = pytest.mark.kernel


def scrape(port: int, auth: tuple[str, str] | None) -> str:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if auth:
        req.add_header("Authorization",
                       "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=5) as resp:
        return resp.read().decode()


def value(text: str, prefix: str) -> float:
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {prefix} in\n{text}")


def test_daemon_serves_metrics(ns, make_daemon, tmp_path: Path):
    pytest.importorskip("sgagent.metrics")
    path = tmp_path / "host.yaml"
    path.write_text(dump(document([8080])))
    secret = tmp_path / "metrics-password"
    secret.write_text("pw-123\n")
    port = free_port()
    d = make_daemon({"file": {"path": str(path)}}, ns, resync_interval=0.5,
                    metrics={"enabled": True, "address": "127.0.0.1", "port": port,
                             "basic_auth": {"username": "prom", "password_file": str(secret)}})
    d.start()
    d.wait_log(r"metrics on http://127\.0\.0\.1:\d+/metrics")
    d.wait_log("ready:")
    with pytest.raises(urllib.error.HTTPError) as e:
        scrape(port, None)
    assert e.value.code == 401
    text = scrape(port, ("prom", "pw-123"))
    assert value(text, "sgagent_source_up") == 1
    assert value(text, 'sgagent_applies_total{result="success"}') >= 1
    assert 'rule="tcp-8080"' in text
    # an invalid document and a repair are counted
    write_atomic(path, "version: 1\nhost: [\n")
    d.wait_log("refused the document")
    subprocess.run(["ip", "netns", "exec", ns, "nft", "flush", "table", "inet", "sgagent"],
                   check=True, timeout=10)
    d.wait_log("drift repaired")
    def repaired() -> str | None:
        t = scrape(port, ("prom", "pw-123"))
        return t if value(t, "sgagent_drift_repairs_total") >= 1 else None
    text = wait_until(repaired, 5, what="the repair in the metrics")
    assert value(text, "sgagent_invalid_documents_total") >= 1
    assert d.stop() == 0
