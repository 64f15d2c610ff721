"""The collector on the real kernel: real packets in a sandbox, counters in the exposition.

Everything happens in the sandbox's namespaces (created and removed here); nothing touches the
root namespace's firewall.
"""

from __future__ import annotations

import json
import re
import threading
import time

import pytest

from sgagent.cli import main as cli_main
from sgagent.compiler import compile_document
from sgagent.load import parse_data
from sgagent.metrics import AgentStats, build_registry
from sgagent.nft.netlink import NetlinkCounterReader
from sgagent.nft import netlink as nftcounters
from sgagent.nft.backend import NftBackend

from .helpers import EXPECTED, EXPECTED_DEFAULTS, host_document, traffic
from .test_collector import samples

pytestmark = pytest.mark.kernel


@pytest.fixture
def sandbox(needs_root):
    from sgagent.sandbox import Sandbox
    with Sandbox([("eth0", "vpc")]) as sb:
        yield sb


def ruleset(**kw):
    return compile_document(parse_data(host_document(**kw), "metrics-test"))


def rules_and_defaults(text) -> tuple[dict, dict]:
    """Packets per rule identity and per default (nic, direction, policy)."""
    rules, defaults = {}, {}
    for (name, labels), v in samples(text).items():
        d = dict(labels)
        if name == "sgagent_rule_packets_total":
            rules[(d["group"], d["rule"], d["nic"], d["direction"], d["policy"])] = v
        elif name == "sgagent_default_packets_total":
            defaults[(d["nic"], d["direction"], d["policy"])] = v
    return rules, defaults


def send(sb) -> None:
    probes = traffic()
    got = sb.probe_many([p for p, _ in probes], timeout=1.0)
    assert got == [want for _, want in probes], list(zip(probes, got))


def check_increase(before: tuple[dict, dict], after: tuple[dict, dict]) -> None:
    (rb, db), (ra, da) = before, after
    assert set(ra) == set(EXPECTED) and set(da) == set(EXPECTED_DEFAULTS)
    for key, (lo, hi) in EXPECTED.items():
        assert lo <= ra[key] - rb[key] <= hi, (key, rb[key], ra[key])
    for key, (lo, hi) in EXPECTED_DEFAULTS.items():
        assert lo <= da[key] - db[key] <= hi, (key, db[key], da[key])


def test_real_packets_increase_exactly_the_rules_they_hit(sandbox):
    rs = ruleset()
    with NftBackend(sandbox.host_ns) as backend, NetlinkCounterReader(sandbox.host_ns) as reader:
        backend.apply(rs)
        stats = AgentStats(backend.name)
        stats.ruleset_applied(rs)
        registry = build_registry(stats, reader)
        before = rules_and_defaults(registry.exposition())
        assert all(v == 0 for v in before[0].values())
        send(sandbox)
        after = rules_and_defaults(registry.exposition())
        check_increase(before, after)
        s = samples(registry.exposition())
        assert s[("sgagent_rules", (("direction", "inbound"), ("nic", "eth0")))] == 6  # 5 + failsafe
        assert s[("sgagent_rules", (("direction", "outbound"), ("nic", "eth0")))] == 1
        assert s[("sgagent_scrape_errors_total", ())] == 0


def test_flush_and_reapply_never_goes_backwards_and_removed_rules_vanish(sandbox):
    rs = ruleset()
    with NftBackend(sandbox.host_ns) as backend, NetlinkCounterReader(sandbox.host_ns) as reader:
        backend.apply(rs)
        registry = build_registry(AgentStats(), reader)
        send(sandbox)
        first, _ = rules_and_defaults(registry.exposition())
        http = ("sg-web", "http", "eth0", "inbound", "accept")
        assert first[http] == 3
        # a re-apply that keeps the rules keeps the kernel's counters
        backend.apply(rs)
        assert rules_and_defaults(registry.exposition())[0] == first
        # someone else deletes the table; the agent repairs the drift: the kernel starts from 0
        sandbox.run("host", ["nft", "delete", "table", "inet", "sgagent"])
        assert reader() == []
        assert rules_and_defaults(registry.exposition()) == ({}, {})   # scraped meanwhile
        backend.apply(rs, full=True)
        assert all(r.packets == 0 for r in reader())
        assert rules_and_defaults(registry.exposition())[0] == first
        send(sandbox)
        second, _ = rules_and_defaults(registry.exposition())
        assert second[http] == 6
        # a document without https: its series disappears, the others carry on
        backend.apply(ruleset(with_https=False))
        third, _ = rules_and_defaults(registry.exposition())
        assert ("sg-web", "https", "eth0", "inbound", "accept") not in third
        assert third[http] == 6
        # no table at all: no rule series, and no error
        backend.flush()
        text = registry.exposition()
        assert rules_and_defaults(text) == ({}, {})
        assert samples(text)[("sgagent_scrape_errors_total", ())] == 0


def test_status_and_the_collector_read_the_same_counters(sandbox, capsys):
    """`sgagent status` (NftBackend.counters, libnftables) and the collector (one netlink
    dump) report the same numbers for the same kernel state."""
    with NftBackend(sandbox.host_ns) as backend, NetlinkCounterReader(sandbox.host_ns) as reader:
        backend.apply(ruleset())
        send(sandbox)
        via_libnftables = backend.counters_via_listing()
        via_netlink = reader()
        assert sorted(via_netlink, key=repr) == sorted(via_libnftables, key=repr)
        capsys.readouterr()
        assert cli_main(["status", "--json", "--netns", sandbox.host_ns]) == 0
        rows = json.loads(capsys.readouterr().out)
        text = build_registry(AgentStats(), reader).exposition()
    rules, defaults = rules_and_defaults(text)
    byte_values = {}
    for (name, labels), v in samples(text).items():
        d = dict(labels)
        if name == "sgagent_rule_bytes_total":
            byte_values[(d["group"], d["rule"], d["nic"], d["direction"], d["policy"])] = v
        elif name == "sgagent_default_bytes_total":
            byte_values[(d["nic"], d["direction"], d["policy"])] = v
    assert rows and len(rows) == len(rules) + len(defaults)
    assert any(r["packets"] > 0 for r in rows)
    for r in rows:
        assert set(r) == {"group", "rule", "nic", "direction", "policy", "packets", "bytes"}
        if r["group"] is None and r["rule"] == "default":
            key = (r["nic"], r["direction"], r["policy"])
            assert defaults[key] == r["packets"], key
        else:
            key = (r["group"] or "", r["rule"], r["nic"], r["direction"], r["policy"])
            assert rules[key] == r["packets"], key
        assert byte_values[key] == r["bytes"], key


def test_netlink_fallback_parser_reads_the_same(sandbox, monkeypatch):
    with NftBackend(sandbox.host_ns) as backend, NetlinkCounterReader(sandbox.host_ns) as reader:
        backend.apply(ruleset())
        send(sandbox)
        fast = reader()
        monkeypatch.setattr(nftcounters, "_FAST", re.compile(rb"(x)(y)(z)NEVER"))
        slow = reader()
        assert sorted(fast, key=repr) == sorted(slow, key=repr)
        assert len(fast) == len(EXPECTED) + len(EXPECTED_DEFAULTS)


def test_reads_during_applies_are_consistent(needs_root):
    """A dump that races an apply is repeated: every read is one whole ruleset, never a mix.

    (The kernel lets a dump that overlaps a commit skip objects silently -- same generation
    before and after, no NLM_F_DUMP_INTR; libnftables' listing, and so ``sgagent status``,
    can show such a partial table.  The reader must not.)"""
    from sgagent import netns
    import secrets

    def doc(tag: str, n: int) -> dict:
        rules = [{"id": f"{tag}{i}", "direction": "inbound", "policy": "accept",
                  "protocol": "tcp", "ports": str(1000 + i), "source": "10.0.0.0/8"}
                 for i in range(n)]
        return {"version": 1,
                "host": {"instance": "i", "account": "1", "network": "vpc",
                         "nics": [{"name": "eth0", "role": "vpc", "security_groups": ["sg"]}]},
                "security_groups": {"sg": {"type": "basic", "rules": rules}}}

    a = compile_document(parse_data(doc("a", 600), "a"))
    b = compile_document(parse_data(doc("b", 800), "b"))
    keys = {name: {k for c in rs.chains for k in c.counters} for name, rs in (("a", a), ("b", b))}
    name = f"sgmt-{secrets.token_hex(3)}"
    netns.create(name)
    try:
        with NftBackend(name) as backend, NetlinkCounterReader(name) as reader:
            backend.apply(a)
            stop = threading.Event()
            errors = []

            def flip():
                deadline = time.monotonic() + 15
                try:
                    for i in range(10):
                        if stop.is_set() or time.monotonic() > deadline:
                            break
                        backend.apply(b if i % 2 == 0 else a)
                except Exception as exc:  # pragma: no cover
                    errors.append(exc)
                finally:
                    stop.set()

            t = threading.Thread(target=flip)
            t.start()
            reads = 0
            try:
                while not stop.is_set() and reads < 2000:
                    got = {r.key for r in reader()}
                    assert got in (keys["a"], keys["b"]), f"a mixed read: {len(got)} counters"
                    reads += 1
            finally:
                stop.set()
                t.join(60)
            assert not errors and reads > 0
    finally:
        netns.delete(name)
