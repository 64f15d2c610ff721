"""The collectors without a kernel: exposition, monotonic offsets, one read per scrape."""

from __future__ import annotations

import logging
import math
import threading

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sgagent import __version__
from sgagent.compiler import compile_document
from sgagent.load import load_file
from sgagent.metrics import (APPLY_BUCKETS, AgentStats, MetricsRegistry, MonotonicCounters,
                             build_registry)

from .helpers import ROOT, FakeKernel, reading

RULE = ("group", "rule", "nic", "direction", "policy")


def samples(text: str | bytes) -> dict[tuple, float]:
    """{(sample name, sorted label items): value} of a text exposition."""
    if isinstance(text, bytes):
        text = text.decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in out, f"duplicate sample {key}"
            out[key] = s.value
    return out


def value(text, name, **labels) -> float | None:
    return samples(text).get((name, tuple(sorted(labels.items()))))


def rule_samples(text) -> dict[tuple, float]:
    return {k: v for k, v in samples(text).items()
            if k[0].startswith(("sgagent_rule_", "sgagent_default_"))}


def rule(name="sgagent_rule_packets_total", group="sg-web", rule="http", nic="eth0",
         direction="inbound", policy="accept"):
    return (name, tuple(sorted(dict(group=group, rule=rule, nic=nic, direction=direction,
                                    policy=policy).items())))


def test_every_metric_of_issue_5_is_exposed():
    kernel = FakeKernel([
        reading(rule="http", packets=3, nbytes=180),
        reading(group=None, rule="failsafe/0", packets=1, nbytes=60),
        reading(group=None, rule="default", policy="drop", packets=7, nbytes=420),
    ])
    stats = AgentStats()
    text = build_registry(stats, kernel).exposition().decode()
    for name, kind in [
        ("sgagent_rule_packets_total", "counter"), ("sgagent_rule_bytes_total", "counter"),
        ("sgagent_default_packets_total", "counter"), ("sgagent_default_bytes_total", "counter"),
        ("sgagent_apply_duration_seconds", "histogram"), ("sgagent_applies_total", "counter"),
        ("sgagent_source_up", "gauge"), ("sgagent_last_sync_timestamp_seconds", "gauge"),
        ("sgagent_source_errors_total", "counter"), ("sgagent_invalid_documents_total", "counter"),
        ("sgagent_drift_repairs_total", "counter"),
        ("sgagent_revoked_connections_total", "counter"), ("sgagent_rules", "gauge"),
        ("sgagent_build_info", "gauge"), ("sgagent_scrape_errors_total", "counter"),
    ]:
        assert f"# TYPE {name} {kind}\n" in text, name
        assert f"# HELP {name} " in text, name
    s = samples(text)
    assert s[rule()] == 3
    assert s[rule("sgagent_rule_bytes_total")] == 180
    assert s[rule(group="", rule="failsafe/0")] == 1          # failsafe: group label ""
    dflt = ("sgagent_default_packets_total",
            (("direction", "inbound"), ("nic", "eth0"), ("policy", "drop")))
    assert s[dflt] == 7
    assert s[("sgagent_default_bytes_total", dflt[1])] == 420
    # a default is not a rule, and has no group or rule label
    assert not any(k[0].startswith("sgagent_rule_") and ("rule", "default") in k[1] for k in s)
    assert s[("sgagent_build_info", (("backend", "nftables"), ("version", __version__)))] == 1
    assert s[("sgagent_applies_total", (("result", "failure"),))] == 0
    assert s[("sgagent_applies_total", (("result", "success"),))] == 0


def test_fast_exposition_equals_prometheus_client_encoding():
    kernel = FakeKernel([
        reading(rule="web", packets=10**15, nbytes=2**63),
        reading(nic="eth1", direction="outbound", group="sg-b", rule="sg-b/0", policy="reject",
                packets=5, nbytes=300),
        reading(group=None, rule="default", policy="accept", packets=2, nbytes=120),
        reading(group="odd", rule='we"ird\\rule\nx', packets=1, nbytes=1),
    ])
    stats = AgentStats()
    stats.apply_finished(0.3, "success")
    stats.source_error("timeout")
    registry = build_registry(stats, kernel, process=False)
    fast = samples(registry.exposition())
    slow = samples(generate_latest(registry))
    fast.pop(("sgagent_kernel_read_duration_seconds", ()))
    slow.pop(("sgagent_kernel_read_duration_seconds", ()))
    assert fast == slow
    assert fast[rule(rule='we"ird\\rule\nx', group="odd")] == 1
    assert fast[rule()[:1] + (rule(rule="web")[1],)] == 10**15


def test_one_kernel_read_per_scrape(fake_kernel):
    fake_kernel.readings = [reading(rule=f"r{i}", packets=i) for i in range(50)]
    registry = build_registry(AgentStats(), fake_kernel)
    assert fake_kernel.calls == 0, "building the registry must not read the kernel"
    registry.exposition()
    assert fake_kernel.calls == 1
    generate_latest(registry)
    assert fake_kernel.calls == 2
    for _ in range(5):
        registry.exposition()
    assert fake_kernel.calls == 7


def test_counters_never_go_backwards_across_a_kernel_reset(fake_kernel):
    registry = build_registry(AgentStats(), fake_kernel)
    fake_kernel.readings = [reading(packets=10, nbytes=1000), reading(rule="ssh", packets=4, nbytes=400)]
    t = registry.exposition()
    assert value(t, "sgagent_rule_packets_total", **dict(zip(RULE, ("sg-web", "http", "eth0", "inbound", "accept")))) == 10
    # someone flushed the table; the agent re-applied: the kernel counts from zero again
    fake_kernel.readings = [reading(packets=3, nbytes=200), reading(rule="ssh", packets=5, nbytes=500)]
    s = samples(registry.exposition())
    assert s[rule()] == 13 and s[rule("sgagent_rule_bytes_total")] == 1200
    assert s[rule(rule="ssh")] == 5 and s[rule("sgagent_rule_bytes_total", rule="ssh")] == 500
    fake_kernel.readings = [reading(packets=5, nbytes=260), reading(rule="ssh", packets=5, nbytes=500)]
    s = samples(registry.exposition())
    assert s[rule()] == 15 and s[rule("sgagent_rule_bytes_total")] == 1260
    # a second reset
    fake_kernel.readings = [reading(packets=0, nbytes=0), reading(rule="ssh", packets=5, nbytes=500)]
    s = samples(registry.exposition())
    assert s[rule()] == 15 and s[rule("sgagent_rule_bytes_total")] == 1260


def test_a_table_gone_between_scrapes_resets_nothing(fake_kernel):
    """The table deleted behind the agent's back, a scrape, then the repair: the counters
    carry on from where they were."""
    registry = build_registry(AgentStats(), fake_kernel)
    fake_kernel.readings = [reading(packets=10, nbytes=1000), reading(rule="ssh", packets=4)]
    registry.exposition()
    fake_kernel.readings = []
    assert rule_samples(registry.exposition()) == {}
    fake_kernel.readings = [reading(packets=2, nbytes=100), reading(rule="ssh", packets=0)]
    s = samples(registry.exposition())
    assert s[rule()] == 12 and s[rule("sgagent_rule_bytes_total")] == 1100
    assert s[rule(rule="ssh")] == 4


def test_a_reset_of_bytes_alone_counts_as_a_reset():
    mono = MonotonicCounters()
    mono.update([reading(packets=10, nbytes=1000)])
    (st,) = mono.update([reading(packets=12, nbytes=100)])   # packets grew past, bytes dropped
    assert (st.packets, st.bytes) == (22, 1100)


def test_removed_rule_disappears_and_its_offset_is_forgotten(fake_kernel):
    registry = build_registry(AgentStats(), fake_kernel)
    fake_kernel.readings = [reading(packets=10), reading(rule="ssh", packets=4)]
    registry.exposition()
    fake_kernel.readings = [reading(packets=2), reading(rule="ssh", packets=6)]   # http reset
    assert samples(registry.exposition())[rule()] == 12
    fake_kernel.readings = [reading(rule="ssh", packets=6)]                       # http removed
    s = samples(registry.exposition())
    assert rule() not in s and rule("sgagent_rule_bytes_total") not in s
    assert s[rule(rule="ssh")] == 6
    fake_kernel.readings = [reading(packets=1), reading(rule="ssh", packets=6)]   # http is back
    assert samples(registry.exposition())[rule()] == 1


def test_a_policy_change_is_a_new_series(fake_kernel):
    registry = build_registry(AgentStats(), fake_kernel)
    fake_kernel.readings = [reading(packets=10)]
    registry.exposition()
    fake_kernel.readings = [reading(policy="drop", packets=1)]
    s = rule_samples(registry.exposition())
    assert s == {rule(policy="drop"): 1, rule("sgagent_rule_bytes_total", policy="drop"): 0}


def test_the_same_identity_twice_in_one_read_is_summed():
    mono = MonotonicCounters()
    (st,) = mono.update([reading(packets=5, nbytes=50), reading(packets=5, nbytes=50)])
    assert (st.packets, st.bytes) == (10, 100)
    (st,) = mono.update([reading(packets=6, nbytes=60), reading(packets=5, nbytes=50)])
    assert (st.packets, st.bytes) == (11, 110)      # grew: no reset


def test_a_failing_read_breaks_nothing_else(fake_kernel, caplog):
    stats = AgentStats()
    stats.invalid_document()
    registry = build_registry(stats, fake_kernel)
    fake_kernel.readings = [reading(packets=10)]
    registry.exposition()
    fake_kernel.fail = OSError("netlink went away")
    with caplog.at_level(logging.WARNING, logger="sgagent.metrics"):
        t1 = registry.exposition()
        t2 = generate_latest(registry)
    assert "netlink went away" in caplog.text
    assert caplog.text.count("netlink went away") == 1, "logged once, not per scrape"
    for t in (t1, t2):
        s = samples(t)
        assert not rule_samples(t), "no rule series from a failed read"
        assert s[("sgagent_invalid_documents_total", ())] == 1
        assert ("sgagent_build_info", (("backend", "nftables"), ("version", __version__))) in s
        assert ("process_cpu_seconds_total", ()) in s
    assert samples(t2)[("sgagent_scrape_errors_total", ())] == 2
    # it works again; offsets survived the failure
    fake_kernel.fail = None
    fake_kernel.readings = [reading(packets=1)]
    s = samples(registry.exposition())
    assert s[rule()] == 11
    assert s[("sgagent_scrape_errors_total", ())] == 2


def test_a_broken_collector_does_not_hide_the_others(fake_kernel):
    class Broken:
        def collect(self):
            raise RuntimeError("boom")
    registry = build_registry(AgentStats(), fake_kernel)
    registry.register(Broken())
    fake_kernel.readings = [reading(packets=1)]
    assert samples(registry.exposition())[rule()] == 1


def test_agent_stats():
    stats = AgentStats("nftables")
    for seconds in (0.001, 0.02, 0.02, 0.7, 100.0, -5, float("nan")):
        stats.apply_finished(seconds, "success")
    stats.apply_finished(0.05, "failure")
    with pytest.raises(ValueError):
        stats.apply_finished(0.1, "maybe")
    stats.source_up(True)
    stats.synced(1_700_000_000.5)
    for reason in ("timeout", "timeout", "HTTP status", "etcd"):
        stats.source_error(reason)
    stats.invalid_document()
    stats.drift_repaired()
    stats.drift_repaired()
    stats.connections_revoked(3)
    stats.connections_revoked(0)
    stats.connections_revoked(-2)
    doc = load_file(ROOT / "examples" / "alibaba" / "multi-group-priority.yaml")
    stats.ruleset_applied(compile_document(doc))
    s = samples(build_registry(stats, FakeKernel(), process=False).exposition())

    def h(le):
        return s[("sgagent_apply_duration_seconds_bucket", (("le", le),))]
    assert h("0.005") == 3           # 0.001 and the two clamped to 0
    assert h("0.025") == 5
    assert h("0.05") == 6            # the failure counts too
    assert h("1.0") == 7
    assert h("60.0") == 7 and h("+Inf") == 8
    assert s[("sgagent_apply_duration_seconds_count", ())] == 8
    assert math.isclose(s[("sgagent_apply_duration_seconds_sum", ())], 0.001 + 0.04 + 0.7 + 100 + 0.05)
    assert s[("sgagent_applies_total", (("result", "success"),))] == 7
    assert s[("sgagent_applies_total", (("result", "failure"),))] == 1
    assert s[("sgagent_source_up", ())] == 1
    assert s[("sgagent_last_sync_timestamp_seconds", ())] == 1_700_000_000.5
    assert s[("sgagent_source_errors_total", (("reason", "timeout"),))] == 2
    assert s[("sgagent_source_errors_total", (("reason", "http_status"),))] == 1
    assert s[("sgagent_source_errors_total", (("reason", "etcd"),))] == 1
    assert s[("sgagent_invalid_documents_total", ())] == 1
    assert s[("sgagent_drift_repairs_total", ())] == 2
    assert s[("sgagent_revoked_connections_total", ())] == 3
    # multi-group-priority: eth0 and eth1 each bind sg-open-web (2 inbound) + sg-block-lab (1)
    for nic in ("eth0", "eth1"):
        assert s[("sgagent_rules", (("direction", "inbound"), ("nic", nic)))] == 3
        assert s[("sgagent_rules", (("direction", "outbound"), ("nic", nic)))] == 0
    assert len(APPLY_BUCKETS) + 1 == sum(1 for k in s if k[0].endswith("_bucket"))
    stats.ruleset_applied(None)
    s = samples(build_registry(stats, FakeKernel(), process=False).exposition())
    assert not any(k[0] == "sgagent_rules" for k in s)


def test_source_error_reasons_are_bounded():
    stats = AgentStats()
    for i in range(100):
        stats.source_error(f"reason-{i}")
    reasons = dict(stats.snapshot().source_errors)
    assert len(reasons) == 33 and reasons["other"] == 68
    stats.source_error("")
    assert dict(stats.snapshot().source_errors).get("unknown", 0) + \
        dict(stats.snapshot().source_errors)["other"] == 69


def test_concurrent_scrapes_and_updates_stay_monotonic():
    lock = threading.Lock()
    state = {"n": 0}

    def read():
        with lock:
            state["n"] += 1
            n = state["n"]
        # every 7th read the kernel "resets"
        return [reading(packets=n % 7, nbytes=(n % 7) * 100)]

    stats = AgentStats()
    registry = build_registry(stats, read, process=False)
    seen: list[list[float]] = [[] for _ in range(4)]
    errors = []

    def scraper(i):
        try:
            for _ in range(50):
                stats.apply_finished(0.01, "success")
                seen[i].append(samples(registry.exposition())[rule()])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=scraper, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    for values in seen:
        assert values == sorted(values), "a counter went backwards"
    assert samples(registry.exposition())[("sgagent_applies_total", (("result", "success"),))] == 200


def test_registry_is_a_prometheus_client_registry():
    from prometheus_client import CollectorRegistry
    registry = build_registry(AgentStats(), FakeKernel())
    assert isinstance(registry, CollectorRegistry) and isinstance(registry, MetricsRegistry)
    registry.unregister(next(iter(registry._ordered)))
    assert "sgagent_build_info" not in registry.exposition().decode()


