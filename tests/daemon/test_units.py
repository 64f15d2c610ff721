"""Fast checks of the daemon's parts: config, state, sd_notify, backoff, the etcd document
assembly, revocation's packet reconstruction, and the CLI's ``run``/``restore``."""

from __future__ import annotations

import ipaddress
import json
import os
import random
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sgagent.cli import main
from sgagent.daemon.config import (DEFAULT_DOCUMENT_PATH, Backoff as BackoffConfig,
                                   EtcdSource as EtcdConfig, default_config, load_config,
                                   parse_config)
from sgagent.daemon.revoke import Flow, packets_for, refused
from sgagent.daemon.sdnotify import Notifier
from sgagent.daemon.source_etcd import EtcdSource
from sgagent.daemon.sources import Backoff
from sgagent.daemon.state import StateStore
from sgagent.load import DocumentError, parse_data

from .support import ROOT, document, dports, dump, group, host_section, live_table


# -- config ----------------------------------------------------------------------------------
def test_default_config_is_a_file_source_at_the_documented_path():
    cfg = default_config()
    assert cfg.source.kind == "file" and cfg.source.file is not None
    assert cfg.source.file.path == DEFAULT_DOCUMENT_PATH == "/etc/sgagent/host.yaml"
    assert cfg.backend == "nftables" and cfg.netns is None and cfg.revocation is True
    assert cfg.state_dir == "/var/lib/sgagent" and cfg.resync_interval == 60
    assert cfg.metrics.enabled is False and cfg.metrics.address == "127.0.0.1"


def test_example_config_is_valid_and_matches_the_defaults():
    cfg = load_config(ROOT / "systemd" / "agent.yaml")
    assert cfg.source == default_config().source
    assert cfg.metrics.port == 9469


@pytest.mark.parametrize("text,problem", [
    ("log_level: info\nlog_level: debug\n", "key 'log_level' appears twice"),
    ("a: &x [1]\nb: *x\n", "anchors and aliases are not accepted"),
    ("resync_interval: !!float 5\n", "tags are not accepted"),
])
def test_config_file_is_read_with_the_documents_input_subset(tmp_path, text, problem):
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    with pytest.raises(DocumentError) as e:
        load_config(path)
    assert problem in "; ".join(e.value.errors)


def test_every_config_error_is_reported_with_its_path():
    with pytest.raises(DocumentError) as e:
        parse_config({"source": {"etcd": {"endpoints": ["nope"], "prefix": "x/"}},
                      "resync_interval": 0, "metrics": {"port": 70000}, "colour": "blue"})
    errs = e.value.errors
    assert "source.etcd.endpoints[0]: 'nope' is not an etcd client URL (http://HOST:PORT or " \
           "https://...)" in errs
    assert any(x.startswith("source.etcd.prefix: ") for x in errs)
    assert any(x.startswith("resync_interval: ") for x in errs)
    assert any(x.startswith("metrics.port: ") for x in errs)
    assert "colour: unknown field" in errs


@pytest.mark.parametrize("source, where", [
    ({}, "source: give exactly one of file, https, etcd (got none)"),
    ({"file": {}, "etcd": {}}, "source: give exactly one of file, https, etcd (got file and etcd)"),
    ({"https": {"url": "http://cp/x"}}, "source.https.url: 'http://cp/x' is plain http"),
    ({"https": {"url": "https://cp/x", "client_cert": "/c"}},
     "source.https.client_key: client_cert and client_key go together"),
    ({"https": {"url": "https://cp/x", "backoff": {"initial": 5, "max": 1}}},
     "source.https.backoff: max (1.0) is below initial (5.0)"),
    ({"file": {"pathh": "/x"}}, "source.file.pathh: unknown field"),
])
def test_source_errors(source, where):
    with pytest.raises(DocumentError) as e:
        parse_config({"source": source})
    assert any(x.startswith(where) for x in e.value.errors), e.value.errors


def test_paths_expand_credentials_directory(monkeypatch):
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/run/credentials/sgagent.service")
    cfg = parse_config({"source": {"https": {"url": "https://cp/x",
                                             "token_file": "$CREDENTIALS_DIRECTORY/token"}}})
    assert cfg.source.https is not None
    assert cfg.source.https.token_file == "/run/credentials/sgagent.service/token"


def test_cli_run_bad_config_is_one_error_exit_1(tmp_path: Path, capsys):
    assert main(["run", "--config", str(tmp_path / "missing.yaml")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"{tmp_path / 'missing.yaml'}: no such file"]
    bad = tmp_path / "agent.yaml"
    bad.write_text("source: {file: {path: /x}}\nrevocation: maybe\n")
    assert main(["run", "--config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "revocation: true or false, not a string ('maybe')" in err


# -- state -----------------------------------------------------------------------------------
def test_state_saved_atomically_and_read_back(tmp_path: Path):
    store = StateStore(tmp_path / "state")
    assert store.load() is None
    raw = dump(document([8080])).encode()
    store.save(raw, "file:/etc/sgagent/host.yaml")
    store.save(raw.replace(b"8080", b"9090"), "second")
    saved = store.load()
    assert saved is not None and saved.origin == "second"
    assert saved.document.security_groups["sg-web"].rules[0].ports == ((9090, 9090),)
    assert [p.name for p in store.dir.iterdir()] == ["last-good.json"]  # no temporary left
    assert (store.path.stat().st_mode & 0o777) == 0o640


def test_state_unusable_is_an_error(tmp_path: Path):
    store = StateStore(tmp_path)
    store.path.write_text("{not json")
    with pytest.raises(DocumentError):
        store.load()
    store.path.write_text(json.dumps({"format": 1, "origin": "x",
                                      "document": "version: 1\nhost: {}\n"}))
    with pytest.raises(DocumentError) as e:
        store.load()
    assert any("host.instance" in x for x in e.value.errors)


@pytest.mark.kernel
def test_restore_command(ns, tmp_path: Path, capsys):
    state = tmp_path / "state"
    assert main(["restore", "--state-dir", str(state), "--netns", ns]) == 0
    assert "nothing saved" in capsys.readouterr().out
    StateStore(state).save(dump(document([8080])).encode(), "test")
    assert main(["restore", "--state-dir", str(state), "--netns", ns]) == 0
    assert "restored the document saved" in capsys.readouterr().out
    assert dports(ns) == {8080}


@pytest.mark.kernel
def test_restore_leaves_a_loaded_table_as_it_is(ns, tmp_path: Path, capsys):
    """A second restore (a daemon restart used to pull the unit in again) must not put the
    saved document back over newer live rules: here the saved one opens 8080, the live one
    (applied later, its save lost) opens only 9090."""
    from sgagent.compiler import compile_document
    from sgagent.nft.backend import NftBackend
    state = tmp_path / "state"
    StateStore(state).save(dump(document([8080])).encode(), "older")
    with NftBackend(ns) as be:
        be.apply(compile_document(parse_data(document([9090]))))
    before = live_table(ns)
    assert main(["restore", "--state-dir", str(state), "--netns", ns]) == 0
    assert "already loaded; left as it is" in capsys.readouterr().out
    assert live_table(ns) == before and dports(ns) == {9090}
    # an unusable saved file is not even read while the table is loaded
    (state / "last-good.json").write_text("{not json")
    assert main(["restore", "--state-dir", str(state), "--netns", ns]) == 0
    assert live_table(ns) == before
    StateStore(state).save(dump(document([8080])).encode(), "older")
    # --force replaces it; so does a restore once the table is gone (sgagent flush)
    assert main(["restore", "--state-dir", str(state), "--netns", ns, "--force"]) == 0
    assert "restored the document saved" in capsys.readouterr().out
    assert dports(ns) == {8080}
    assert main(["flush", "--netns", ns]) == 0
    assert live_table(ns) == ""
    assert main(["restore", "--state-dir", str(state), "--netns", ns]) == 0
    assert dports(ns) == {8080}


# -- the units: the boot restore is bounded and pulled in at boot only (issue 9, item 8) -----
def _unit(name: str) -> dict[str, dict[str, list[str]]]:
    """section -> key -> values, in order (a unit file may repeat a key)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = out.setdefault("", {})
    for line in (ROOT / "systemd" / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = out.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        section.setdefault(key.strip(), []).append(value.strip())
    return out


def _seconds(value: str) -> float:
    units = {"": 1, "s": 1, "sec": 1, "ms": 0.001, "min": 60, "m": 60}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    return total


def test_restore_unit_start_is_bounded():
    svc = _unit("sgagent-restore.service")["Service"]
    assert svc["Type"] == ["oneshot"]
    start, = svc["TimeoutStartSec"]          # a oneshot has no start timeout unless given one
    stop, = svc["TimeoutStopSec"]            # and a killed one gets SIGKILL this much later
    assert start not in ("infinity", "0") and 0 < _seconds(start) <= 120, start
    assert 0 < _seconds(stop) <= 30, stop
    unit = _unit("sgagent-restore.service")["Unit"]
    assert unit["DefaultDependencies"] == ["no"]
    assert any("network-pre.target" in v for v in unit["Before"])
    # after nftables.service, whose "flush ruleset" would otherwise remove what it loaded
    assert any("nftables.service" in v.split() for v in unit["After"])
    assert "sysinit.target" in _unit("sgagent-restore.service")["Install"]["WantedBy"]


def test_daemon_is_ordered_after_the_restore_but_does_not_pull_it_in():
    unit = _unit("sgagent.service")
    pulls = [v for key in ("Wants", "Requires", "Requisite", "BindsTo", "Upholds", "PartOf")
             for line in unit["Unit"].get(key, []) for v in line.split()]
    assert "sgagent-restore.service" not in pulls, pulls
    assert "sgagent-restore.service" in " ".join(unit["Unit"]["After"]).split()
    assert unit["Install"]["Also"] == ["sgagent-restore.service"]   # enabled together
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_restore_unit_runs_restore_without_force():
    exec_start, = _unit("sgagent-restore.service")["Service"]["ExecStart"]
    assert exec_start.split()[1:] == ["restore", "--state-dir", "/var/lib/sgagent"]


# -- sd_notify, backoff ----------------------------------------------------------------------
def test_notifier_environment():
    n = Notifier({"NOTIFY_SOCKET": "@abc", "WATCHDOG_USEC": "3000000"})
    assert n.address == "\0abc" and n.watchdog_interval == 1.5
    n = Notifier({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert n.address == "/run/x" and n.watchdog_interval is None  # meant for another process
    n = Notifier({})
    assert not n.enabled and n.notify("READY=1") is False
    n = Notifier({"NOTIFY_SOCKET": "relative"})
    assert not n.enabled


def test_notifier_sends_datagrams():
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(f"\0sgagent-unit-{os.getpid()}")
    rx.settimeout(2)
    n = Notifier({"NOTIFY_SOCKET": f"@sgagent-unit-{os.getpid()}"})
    assert n.ready("enforcing x")
    assert rx.recv(1024).decode().splitlines()[:2] == ["READY=1", "STATUS=enforcing x"]
    n.watchdog()
    assert rx.recv(1024) == b"WATCHDOG=1"
    n.close()
    rx.close()


def test_backoff_grows_caps_and_jitters():
    b = Backoff(BackoffConfig(initial=1, max=8, jitter=0.5), random.Random(1))
    delays = [b.next() for _ in range(8)]
    for d, base in zip(delays, [1, 2, 4, 8, 8, 8, 8, 8]):
        assert base * 0.5 <= d <= base
    assert len(set(delays)) == len(delays)  # jittered
    b.reset()
    assert b.next() <= 1


# -- etcd document assembly ------------------------------------------------------------------
def _etcd(host: dict | None, groups: dict[str, dict | str]) -> EtcdSource:
    src = EtcdSource(EtcdConfig(host="h1"), lambda ev: None)
    src._host_value = None if host is None else json.dumps(host).encode()
    src._groups = {k: (v if isinstance(v, str) else yaml.safe_dump(v)).encode()
                   for k, v in groups.items()}
    return src


def test_etcd_assembles_only_the_groups_a_host_needs():
    web = group([80])
    web["rules"].append({"direction": "inbound", "protocol": "tcp", "ports": 22,
                         "source": [{"group": "sg-admin"}]})
    src = _etcd(host_section(groups=["sg-web"]), {
        "sg-web": web, "sg-admin": group([1], members=["10.0.0.9"]),
        "sg-broken": "rules: [\n", "sg-unused": group([2])})
    data = src.assemble()
    assert sorted(data["security_groups"]) == ["sg-admin", "sg-web"]
    parse_data(data)  # valid: the broken group is not this host's business
    assert src.host_key == "/sgagent/hosts/h1" and src.groups_prefix == "/sgagent/groups/"


def test_etcd_assembly_errors_name_the_group():
    src = _etcd(host_section(groups=["sg-web", "sg-missing"]), {"sg-web": "rules: [\n"})
    with pytest.raises(DocumentError) as e:
        src.assemble()
    assert e.value.errors[0].startswith("security_groups.sg-web: not valid YAML")
    src = _etcd(host_section(groups=["sg-web", "sg-missing"]), {"sg-web": group([80])})
    with pytest.raises(DocumentError) as e:
        parse_data(src.assemble())
    assert any("sg-missing" in x for x in e.value.errors)
    with pytest.raises(DocumentError) as e:
        _etcd(["not", "a", "mapping"], {}).assemble()  # type: ignore[arg-type]
    assert e.value.errors == ["host: the binding at /sgagent/hosts/h1 must be a mapping"]


# -- a clean start logs no warnings (issue 9, item 9) ---------------------------------------
_REVOKE_HIDDEN_PROC_NET = """
import os, sys
from sgagent.daemon.daemon import setup_logging
from sgagent.daemon.revoke import Revoker
from sgagent.load import parse_data
sys.path.insert(0, sys.argv[1])
from daemon.support import document
assert not os.path.exists("/proc/net/psched"), "/proc/net is not hidden"
setup_logging("debug")
revoker = Revoker(None)
result = revoker.revoke(parse_data(document([8080])))
revoker.close()
print("revoked", result.revoked, "of", result.examined)
"""


@pytest.mark.kernel
def test_revoker_logs_no_warning_with_proc_net_hidden(root):
    """sgagent.service has ProcSubset=pid, which hides /proc/net; pyroute2 used to warn about
    /proc/net/psched at every start. Run the revoker in a fresh network namespace with a proc
    mounted as the unit mounts it."""
    script = ('mount -t proc -o subset=pid proc /proc || exit 77; '
              'exec "$0" -c "$1" "$2"')
    p = subprocess.run(["unshare", "--net", "--mount", "--propagation", "private", "--",
                        "sh", "-c", script, sys.executable, _REVOKE_HIDDEN_PROC_NET,
                        str(ROOT / "tests")],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    if p.returncode == 77:
        pytest.skip("cannot mount proc with subset=pid here: " + p.stderr)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "revoked 0 of 0"
    assert "WARNING" not in p.stderr and "psched" not in p.stderr, p.stderr


# -- revocation: which packets a conntrack entry stands for ----------------------------------
class FakeView:
    def __init__(self, local: list[str], routes: dict[str, str]) -> None:
        self.local = {ipaddress.ip_address(a) for a in local}
        self._routes = {ipaddress.ip_address(k): v for k, v in routes.items()}

    def nic_towards(self, addr):
        return self._routes.get(addr, "lo")


def _flow(src: str, dst: str, dport: int = 7000, proto: int = 6) -> Flow:
    return Flow(4, proto, ipaddress.ip_address(src), ipaddress.ip_address(dst), 40000, dport,
                None)


def test_packets_for_inbound_outbound_forwarded():
    view = FakeView(["10.1.0.10", "127.0.0.1"],
                    {"10.1.0.21": "eth0", "192.0.2.7": "eth1", "172.31.0.2": "wl0"})
    managed = {"eth0", "eth1"}
    (p,) = packets_for(_flow("10.1.0.21", "10.1.0.10"), view, managed)  # type: ignore[arg-type]
    assert (p.nic, p.direction, str(p.peer), p.protocol, p.port, p.sport) == \
        ("eth0", "inbound", "10.1.0.21", "tcp", 7000, 40000)
    (p,) = packets_for(_flow("10.1.0.10", "192.0.2.7", 443), view, managed)  # type: ignore[arg-type]
    assert (p.nic, p.direction, str(p.peer), p.port) == ("eth1", "outbound", "192.0.2.7", 443)
    # forwarded from eth0 to an unmanaged workload NIC: judged inbound on eth0 only
    (p,) = packets_for(_flow("10.1.0.21", "172.31.0.2"), view, managed)  # type: ignore[arg-type]
    assert (p.nic, p.direction) == ("eth0", "inbound")
    # forwarded between two managed NICs: judged on both
    ps = packets_for(_flow("10.1.0.21", "192.0.2.7"), view, managed)  # type: ignore[arg-type]
    assert {(p.nic, p.direction) for p in ps} == {("eth0", "inbound"), ("eth1", "outbound")}
    # the host talking to itself, or over unmanaged NICs: not judged
    assert packets_for(_flow("127.0.0.1", "10.1.0.10"), view, managed) == []  # type: ignore[arg-type]
    icmp = Flow(4, 1, ipaddress.ip_address("10.1.0.21"), ipaddress.ip_address("10.1.0.10"),
                None, None, 8)
    (p,) = packets_for(icmp, view, managed)  # type: ignore[arg-type]
    assert (p.protocol, p.icmp_type, p.port) == ("icmp", 8, None)


def test_refused_uses_the_evaluator():
    doc = parse_data(document([7000], sources="10.1.0.21/32"))
    view = FakeView(["10.1.0.10"], {"10.1.0.21": "eth0", "10.1.0.22": "eth0"})
    cache: dict = {}
    assert not refused(doc, _flow("10.1.0.21", "10.1.0.10"), view, {"eth0"}, cache)  # type: ignore[arg-type]
    assert refused(doc, _flow("10.1.0.22", "10.1.0.10"), view, {"eth0"}, cache)  # type: ignore[arg-type]
    assert refused(doc, _flow("10.1.0.21", "10.1.0.10", 7001), view, {"eth0"}, cache)  # type: ignore[arg-type]
    # outbound is accepted by default (basic group)
    assert not refused(doc, _flow("10.1.0.10", "10.1.0.22", 53), view, {"eth0"}, cache)  # type: ignore[arg-type]


@pytest.mark.kernel
def test_cli_run_missing_namespace_is_one_error(root, tmp_path: Path, capsys):
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(yaml.safe_dump({"source": {"file": {"path": str(tmp_path / "h.yaml")}},
                                   "netns": "sgdn-does-not-exist",
                                   "state_dir": str(tmp_path / "state")}))
    assert main(["run", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: network namespace 'sgdn-does-not-exist' does not exist")
