"""End to end: a real Prometheus server scrapes the agent's endpoint; real packets; PromQL.

The agent side runs in this process: a MetricsServer on 127.0.0.1 (root namespace, loopback
only) whose collector reads the nftables table of a sandbox namespace, where the document is
applied and the packets flow.  Prometheus (Debian's package) runs as a child process on
127.0.0.1 with a 1 s scrape interval, a scratch storage directory, and is stopped in a
finalizer.  A second job scrapes the same registry over TLS with basic auth, and the example
alerting rules are loaded, so the documented setup is what is tested.
"""

from __future__ import annotations

import json
import re
import shutil
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from sgagent.compiler import compile_document
from sgagent.load import parse_data
from sgagent.metrics import AgentStats, MetricsServer, build_registry
from sgagent.nft.netlink import NetlinkCounterReader
from sgagent.nft.backend import NftBackend

from .helpers import EXPECTED, EXPECTED_DEFAULTS, MONITORING, ROOT, free_port, host_document, traffic

pytestmark = pytest.mark.kernel

WAIT = 20.0                # seconds, for every poll of Prometheus
USER, PASSWORD = "prometheus", "e2e-secret"


class Prom:
    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(timeout=5.0, trust_env=False)

    def query(self, expr: str) -> list[dict]:
        r = self.http.get(f"{self.url}/api/v1/query", params={"query": expr})
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", (expr, body)
        return body["data"]["result"]

    def values(self, expr: str, labels: tuple[str, ...]) -> dict[tuple, float]:
        return {tuple(s["metric"].get(k, "") for k in labels): float(s["value"][1])
                for s in self.query(expr)}

    def wait(self, what: str, check, timeout: float = WAIT):
        """Poll ``check()`` until it returns something truthy; fail with its last value."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = check()
            except (httpx.HTTPError, AssertionError, KeyError) as exc:
                last = exc
            else:
                if last:
                    return last
            time.sleep(0.5)
        pytest.fail(f"Prometheus: {what} not seen within {timeout:.0f} s (last: {last!r})")


@pytest.fixture
def prometheus_bin():
    path = shutil.which("prometheus")
    if path is None:
        pytest.skip("the prometheus server is not installed (Debian package 'prometheus')")
    return path


@pytest.fixture
def sandbox(needs_root):
    from sgagent.sandbox import Sandbox
    with Sandbox([("eth0", "vpc")]) as sb:
        yield sb


@pytest.fixture
def prometheus(prometheus_bin, tmp_path, tls_cert):
    """Start Prometheus once the caller knows its targets: ``prometheus(plain, tls)``."""
    procs: list[subprocess.Popen] = []
    logs: list[Path] = []

    def start(plain_port: int, tls_port: int) -> Prom:
        cert, _ = tls_cert
        password_file = tmp_path / "password"
        password_file.write_text(PASSWORD)
        config = tmp_path / "prometheus.yml"
        config.write_text(json.dumps({       # JSON is YAML
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                       "evaluation_interval": "1s"},
            "rule_files": [str(MONITORING / "sgagent-alerts.yml")],
            "scrape_configs": [
                {"job_name": "sgagent",
                 "static_configs": [{"targets": [f"127.0.0.1:{plain_port}"]}]},
                {"job_name": "sgagent-tls", "scheme": "https",
                 "tls_config": {"ca_file": cert},
                 "basic_auth": {"username": USER, "password_file": str(password_file)},
                 "static_configs": [{"targets": [f"127.0.0.1:{tls_port}"]}]},
            ],
        }))
        port = free_port()
        log = tmp_path / "prometheus.log"
        logs.append(log)
        proc = subprocess.Popen(
            [prometheus_bin, f"--config.file={config}",
             f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=log.open("w"), stdin=subprocess.DEVNULL)
        procs.append(proc)
        prom = Prom(f"http://127.0.0.1:{port}")

        def ready():
            assert proc.poll() is None, f"prometheus exited: {log.read_text()[-2000:]}"
            return prom.http.get(f"{prom.url}/-/ready").status_code == 200
        prom.wait("readiness", ready)
        return prom

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _grafana_exprs() -> list[str]:
    dash = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for v in dash["templating"]["list"]:
        q = v.get("query")
        if isinstance(q, dict) and q["query"].startswith("label_values("):
            # label_values(METRIC{...}, label) -> the series selector Grafana asks for
            inner = q["query"][len("label_values("):].rsplit(",", 1)[0]
            exprs.append(inner)
    return exprs


def _doc_exprs() -> list[str]:
    text = (ROOT / "docs" / "MONITORING.md").read_text()
    return [e.strip() for e in re.findall(r"```promql\n(.*?)```", text, re.S)]


def _substitute(expr: str) -> str:
    for var, value in (("$__rate_interval", "1m"), ("$__interval", "15s"), ("$__range", "5m"),
                       ("$instance", ".*"), ("$nic", ".*"), ("$group", ".*"), ("$job", ".*")):
        expr = expr.replace(var, value)
    return expr


def test_prometheus_sees_the_rules_hit_and_not_their_neighbours(sandbox, prometheus, tls_cert):
    cert, key = tls_cert
    rs = compile_document(parse_data(host_document(), "e2e"))
    with NftBackend(sandbox.host_ns) as backend, NetlinkCounterReader(sandbox.host_ns) as reader:
        start = time.monotonic()
        backend.apply(rs)
        stats = AgentStats(backend.name)
        stats.apply_finished(time.monotonic() - start, "success")
        stats.ruleset_applied(rs)
        stats.source_up(True)
        stats.synced()
        registry = build_registry(stats, reader)
        with MetricsServer(registry, "127.0.0.1", 0) as plain, \
                MetricsServer(registry, "127.0.0.1", 0, tls_cert=cert, tls_key=key,
                              basic_auth=(USER, PASSWORD)) as secure:
            # sanity: the TLS endpoint really wants its credentials
            with httpx.Client(verify=ssl.create_default_context(cafile=cert),
                              trust_env=False, timeout=5) as c:
                assert c.get(secure.url).status_code == 401
            prom = prometheus(plain.port, secure.port)
            rule_labels = ("group", "rule", "nic", "direction", "policy")
            default_labels = ("nic", "direction", "policy")
            expected_series = set(EXPECTED) | {k for k in EXPECTED_DEFAULTS}

            def scraped():
                up = prom.values("up", ("job",))
                rules = prom.values('sgagent_rule_packets_total{job="sgagent"}', rule_labels)
                defaults = prom.values('sgagent_default_packets_total{job="sgagent"}',
                                       default_labels)
                ok = (up.get(("sgagent",)) == 1 and up.get(("sgagent-tls",)) == 1
                      and set(rules) | set(defaults) == expected_series)
                return (rules, defaults) if ok else None
            base_rules, base_defaults = prom.wait("both jobs up with every series", scraped)

            probes = traffic()
            got = sandbox.probe_many([p for p, _ in probes], timeout=1.0)
            assert got == [want for _, want in probes], list(zip(probes, got))
            direct_rules = {k: v for k, v in _direct(registry).items()}

            def increased():
                rules = prom.values('sgagent_rule_packets_total{job="sgagent"}', rule_labels)
                defaults = prom.values('sgagent_default_packets_total{job="sgagent"}',
                                       default_labels)
                # Prometheus has caught up with the kernel once it shows what we read directly
                if any(rules.get(k) != v for k, v in direct_rules.items() if len(k) == 5):
                    return None
                return rules, defaults
            rules, defaults = prom.wait("the increase", increased)
            for key, (lo, hi) in EXPECTED.items():
                assert lo <= rules[key] - base_rules[key] <= hi, (key, base_rules[key], rules[key])
            for key, (lo, hi) in EXPECTED_DEFAULTS.items():
                assert lo <= defaults[key] - base_defaults[key] <= hi, (key, defaults[key])

            # The same through increase(): > 0 exactly on the rules hit and the default drop
            inc = prom.values('increase(sgagent_rule_packets_total{job="sgagent"}[1m])',
                              rule_labels)
            for key, (lo, hi) in EXPECTED.items():
                assert (inc[key] > 0) == (hi > 0), (key, inc[key])
            inc = prom.values('increase(sgagent_default_packets_total{job="sgagent"}[1m])',
                              default_labels)
            assert inc[("eth0", "inbound", "drop")] > 0
            assert inc[("eth0", "outbound", "accept")] == 0

            # The TLS job sees the same counters
            tls_rules = prom.wait("the TLS job's values", lambda: prom.values(
                'sgagent_rule_packets_total{job="sgagent-tls"}', rule_labels) == rules and rules)
            assert tls_rules == rules

            # Health metrics made it too
            assert prom.values('sgagent_source_up{job="sgagent"}', ()) == {(): 1.0}
            assert prom.values('sgagent_applies_total{job="sgagent"}', ("result",)) == \
                {("success",): 1.0, ("failure",): 0.0}
            assert prom.values('sgagent_rules{job="sgagent"}', ("nic", "direction")) == \
                {("eth0", "inbound"): 6.0, ("eth0", "outbound"): 1.0}
            assert prom.values('sgagent_build_info{job="sgagent"}', ("backend",)) == \
                {("nftables",): 1.0}

            # The shipped alerting rules are loaded, and none fires on a healthy agent
            body = prom.http.get(f"{prom.url}/api/v1/rules").json()
            groups = {g["name"]: g for g in body["data"]["groups"]}
            shipped = re.findall(r"^\s*- alert: (\S+)", (MONITORING / "sgagent-alerts.yml").read_text(),
                                 re.M)
            assert len(shipped) >= 9   # SgagentFlowRecordsLost among them
            assert sorted(r["name"] for r in groups["sgagent"]["rules"]) == sorted(shipped)
            assert all(r["health"] == "ok" for r in groups["sgagent"]["rules"]), groups
            assert prom.query('ALERTS{alertstate="firing", alertname=~"Sgagent.*"}') == []

            # Every PromQL expression of the dashboard and of docs/MONITORING.md is valid, and
            # the dashboard's hit and default-drop panels have data
            for expr in _grafana_exprs() + _doc_exprs():
                prom.query(_substitute(expr))
            assert _doc_exprs(), "docs/MONITORING.md has no ```promql blocks"
            hits = prom.query(_substitute(next(e for e in _grafana_exprs()
                                               if "rate(sgagent_rule_packets_total" in e)))
            assert hits


def _direct(registry) -> dict[tuple, float]:
    from .test_collector import samples
    out = {}
    for (name, labels), v in samples(registry.exposition()).items():
        d = dict(labels)
        if name == "sgagent_rule_packets_total":
            out[(d["group"], d["rule"], d["nic"], d["direction"], d["policy"])] = v
    return out
