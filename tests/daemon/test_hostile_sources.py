"""Hostile documents through each of the daemon's sources (issue 9, the daemon half of the fuzz
suite): the project's corpus (tests/hostile/) and a few of this file's own go, one after the
other, through the file, HTTPS and etcd sources into a real ``sgagent run`` that runs under
resource limits (address space and CPU time, set with resource.setrlimit before exec). The
daemon never dies, never logs a traceback, refuses each document, keeps the rules in force,
and applies the next valid document within a few seconds."""

from __future__ import annotations

import re
import resource
from pathlib import Path

import pytest

from .support import (ROOT, dports, dump, document, group, host_section, wait_until,
                      write_atomic)

pytestmark = pytest.mark.kernel

CORPUS = ROOT / "tests" / "hostile"
LIMITS = {resource.RLIMIT_AS: 1 << 30,   # 1 GiB of address space for the whole daemon
          resource.RLIMIT_CPU: 300}      # CPU seconds for its whole life
APPLY_WITHIN = 5.0                       # seconds for the next valid document

_LAUGHS = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 9))
OWN = {
    # ~700 bytes: a rule's ports are 9**9 strings once the aliases are followed
    "own-alias-bomb.yaml": "version: 1\nl0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
                           + _LAUGHS + "host: {instance: i-test, account: '1001', network: vpc, "
                           "nics: [{name: eth0, role: vpc, security_groups: [sg-web]}]}\n"
                           "security_groups:\n  sg-web:\n    rules:\n    - {direction: "
                           "inbound, protocol: tcp, ports: *l8, source: 10.0.0.0/8}\n",
    # the second sg-web, without rules, used to replace the first silently
    "own-duplicate-keys.yaml": (
        "version: 1\nhost: {instance: i-test, account: '1001', network: vpc, nics: "
        "[{name: eth0, role: vpc, security_groups: [sg-web]}]}\nsecurity_groups:\n"
        "  sg-web: {account: '1001', rules: [{id: tcp-1111, direction: inbound, protocol: tcp, "
        "ports: 1111, source: 10.0.0.0/8}]}\n  sg-web: {account: '1001', rules: []}\n"),
    "own-huge-string.yaml": dump(document([1112])).replace("protocol: tcp",
                                                           "protocol: " + "x" * 200_000),
    "own-deep-nesting.yaml": "version: 1\nhost: " + "[" * 20_000 + "]" * 20_000 + "\n",
    "own-not-utf8.yaml": "version: 1\nhost: {instance: \udcff}\n",
    "own-empty.yaml": "",
}


def hostile_documents() -> list[tuple[str, bytes]]:
    docs = [(name, text.encode("utf-8", "surrogateescape")) for name, text in OWN.items()]
    if CORPUS.is_dir():
        docs += [(p.name, p.read_bytes()) for p in sorted(CORPUS.iterdir())
                 if p.is_file() and p.suffix in (".yaml", ".yml", ".json")]
    return docs


DOCS = hostile_documents()


class Feeder:
    """Runs the rounds: hostile document, then a valid one with a new port."""

    def __init__(self, d, ns: str) -> None:
        self.d, self.ns = d, ns
        self.port = 20000

    def round(self, name: str, put_hostile, put_valid) -> None:
        d = self.d
        mark = d.mark()
        put_hostile()
        try:
            d.wait_log(r"refused the document from", 15, since=mark)
        except AssertionError as exc:
            raise AssertionError(f"{name}: not refused\n{exc}") from None
        assert d.proc is not None and d.proc.poll() is None, f"{name}: the daemon died"
        assert dports(self.ns) == {self.port}, f"{name}: the rules in force changed"
        self.port += 1
        put_valid(self.port)
        try:
            wait_until(lambda: dports(self.ns) == {self.port}, APPLY_WITHIN,
                       what=f"the valid document after {name}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- daemon log ---\n{d.log()[-3000:]}") from None

    def finish(self) -> None:
        log = self.d.log()
        assert "Traceback" not in log, log[log.index("Traceback") - 2000:][:6000]
        assert not re.search(r"CRITICAL|died|makes no progress", log), log[-4000:]
        assert self.d.stop() == 0
        refused = len(re.findall(r"ERROR refused the document from", self.d.log()))
        assert refused >= len(DOCS)


def test_hostile_documents_through_the_file_source(ns, make_daemon, tmp_path: Path):
    path = tmp_path / "host.yaml"
    path.write_text(dump(document([20000])))
    d = make_daemon({"file": {"path": str(path)}}, ns, resync_interval=2.0)
    d.rlimits = LIMITS
    d.start()
    d.wait_log("ready:")
    f = Feeder(d, ns)
    for name, raw in DOCS:
        def hostile(raw: bytes = raw) -> None:
            tmp = path.with_name(".host.tmp")
            tmp.write_bytes(raw)
            tmp.replace(path)
        f.round(name, hostile, lambda port: write_atomic(path, dump(document([port]))))
    f.finish()


def test_hostile_documents_through_the_https_source(docserver, ns, make_daemon,
                                                    tmp_path: Path):
    token = tmp_path / "token"
    token.write_text(docserver.token)
    docserver.set(dump(document([20000])))
    docserver.start()
    d = make_daemon({"https": {"url": docserver.url, "token_file": str(token),
                               "ca_bundle": str(docserver.ca), "timeout": 3,
                               "poll_interval": 0.2, "backoff": {"initial": 0.1, "max": 0.5}}},
                    ns, resync_interval=2.0)
    d.rlimits = LIMITS
    d.start()
    d.wait_log("ready:")
    f = Feeder(d, ns)
    for name, raw in DOCS:
        f.round(name, lambda raw=raw: docserver.set_raw(raw),
                lambda port: docserver.set(dump(document([port]))))
    f.finish()


def test_hostile_documents_through_the_etcd_source(etcd, ns, make_daemon):
    """Each hostile text is the host's binding (the value every host reads first); each valid
    round binds the host again and changes its group."""
    p = "/sgagent"
    etcd.put(f"{p}/groups/sg-web", group([20000]))
    binding = host_section(groups=["sg-web"], instance="h1")
    etcd.put(f"{p}/hosts/h1", binding)
    d = make_daemon({"etcd": {"endpoints": [etcd.url], "prefix": p, "host": "h1", "timeout": 3,
                              "backoff": {"initial": 0.1, "max": 0.5}}}, ns, resync_interval=2.0)
    d.rlimits = LIMITS
    d.start()
    d.wait_log("ready:")
    f = Feeder(d, ns)
    for name, raw in DOCS:
        def hostile(raw: bytes = raw) -> None:
            etcd.post("/v3/kv/put", {"key": _b64(f"{p}/hosts/h1".encode()),
                                     "value": _b64(raw)})

        def valid(port: int) -> None:
            etcd.put(f"{p}/groups/sg-web", group([port]))
            etcd.put(f"{p}/hosts/h1", binding)
        f.round(name, hostile, valid)
    f.finish()


def _b64(raw: bytes) -> str:
    import base64
    return base64.b64encode(raw).decode()
