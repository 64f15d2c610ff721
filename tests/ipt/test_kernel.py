"""The iptables backend in real namespaces, for both variants (legacy and nf_tables): real
packets get the evaluator's verdicts (both sides) and count on its rules; the host's own
rules (a Docker-like NAT chain, a user INPUT rule) survive apply, re-apply and flush; counters
of kept rules never go back; a refused apply leaves the previous ruleset exactly as it was."""

from __future__ import annotations

import copy
import re
import secrets

import pytest

from sgagent.backend.kernel import ApplyError, Refused
from sgagent.compiler import compile_document
from sgagent.ipt.backend import IptBackend
from sgagent.ipt.kernel import IptKernel
from sgagent.load import load_file, parse_data
from sgagent.sandbox import Outcome, Probe, Sandbox
from sgagent.verify import Expectation, check, outcome_of
from sgagent.evaluator import evaluate

from .conftest import run_in

VARIANTS = ["legacy", "nft"]
DOC = {
    "version": 1,
    "host": {"instance": "i-c", "account": "1", "network": "vpc",
             "nics": [{"name": "eth0", "role": "vpc", "security_groups": ["sg-a"]}]},
    "security_groups": {"sg-a": {"members": ["10.1.0.30", "2001:db8:1::30"], "rules": [
        {"id": "web", "direction": "inbound", "protocol": "tcp", "ports": 80,
         "source": "198.51.100.0/24"},
        {"id": "web6", "direction": "inbound", "protocol": "tcp", "ports": 80,
         "source": "2001:db8:2::/48"},
        {"id": "no-7", "direction": "inbound", "policy": "drop", "priority": 1,
         "protocol": "tcp", "ports": 80, "source": "198.51.100.7"},
        {"id": "db-from-peers", "direction": "inbound", "protocol": "tcp", "ports": 3306,
         "source": {"group": "sg-a"}},
        {"id": "no-out", "direction": "outbound", "policy": "reject", "protocol": "tcp",
         "ports": 25, "destination": "0.0.0.0/0"},
    ]}},
}


def expect(doc, nic, direction, peer, proto, port):
    e = Expectation(nic, direction, peer, proto, port)
    v = evaluate(doc, e.packet())
    return Expectation(nic, direction, peer, proto, port, outcome_of(v.verdict, False),
                       v.group, v.rule)


def packets(be) -> dict[str, int]:
    return {r.key.rule: r.packets for r in be.counters() if r.key.group}


@pytest.mark.parametrize("variant", VARIANTS)
def test_real_packets_get_the_oracles_verdicts(root, variant):
    doc = parse_data(DOC)
    probes = [("inbound", "198.51.100.8", "tcp", 80), ("inbound", "198.51.100.7", "tcp", 80),
              ("inbound", "203.0.113.9", "tcp", 80), ("inbound", "10.1.0.30", "tcp", 3306),
              ("inbound", "10.1.0.31", "tcp", 3306), ("inbound", "2001:db8:2::7", "tcp", 80),
              ("inbound", "2001:db8:3::7", "tcp", 80), ("inbound", "2001:db8:1::30", "tcp", 3306),
              ("outbound", "203.0.113.9", "tcp", 25), ("outbound", "203.0.113.9", "tcp", 443),
              ("inbound", "198.51.100.8", "udp", 53), ("inbound", "198.51.100.8", "icmp", None)]
    exps = [expect(doc, "eth0", *p) for p in probes]
    outcomes = {e.outcome for e in exps}
    assert {"open", "dropped", "rejected"} <= outcomes  # both sides, and a reject
    with Sandbox([("eth0", "vpc")], prefix=f"sgi{secrets.token_hex(3)}") as sb:
        with IptBackend(sb.host_ns, variant=variant) as be:
            report = check(doc, exps, sandbox=sb, backend=be)
            assert report.ok, report.table()
            assert run_in(sb.host_ns, f"iptables-{variant}-save", "-t", "filter").count(
                "-A INPUT -j sgagent-INPUT") == 1


HOST_RULES = {
    "nat": ["-N DOCKER", "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
            "-A DOCKER -i docker0 -j RETURN",
            "-A DOCKER ! -i docker0 -p tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80",
            "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE"],
    "filter": ["-A INPUT -s 192.0.2.99/32 -p tcp --dport 9999 -j ACCEPT"],
}


def host_view(ns: str, variant: str) -> str:
    """Everything iptables shows in both families, sgagent's own lines and dates aside."""
    out = []
    for tool in ("iptables", "ip6tables"):
        text = run_in(ns, f"{tool}-{variant}-save")
        out += [line for line in text.splitlines()
                if not line.startswith("#") and "sgagent" not in line]
    return "\n".join(out)


@pytest.mark.parametrize("variant", VARIANTS)
def test_host_rules_survive_apply_reapply_and_flush(ns, variant):
    for table, rules in HOST_RULES.items():
        for rule in rules:
            run_in(ns, f"iptables-{variant}", "-t", table, *rule.split())
    run_in(ns, f"ip6tables-{variant}", "-A", "INPUT", "-s", "2001:db8::99", "-j", "ACCEPT")
    run_in(ns, "ipset", "create", "user-set", "hash:ip")
    before = host_view(ns, variant)
    assert "DNAT" in before and "9999" in before
    with IptBackend(ns, variant=variant) as be:
        be.apply(compile_document(parse_data(DOC)))
        assert host_view(ns, variant) == before
        saved = run_in(ns, f"iptables-{variant}-save", "-t", "filter")
        assert re.search(r"-A INPUT -j sgagent-INPUT\n-A INPUT -s 192.0.2.99", saved)
        changed = copy.deepcopy(DOC)
        changed["security_groups"]["sg-a"]["rules"].pop(0)
        changed["security_groups"]["sg-a"]["members"].append("10.1.0.31")
        assert be.apply(compile_document(parse_data(changed))).mode == "delta"
        assert host_view(ns, variant) == before
        assert be.diff(compile_document(parse_data(changed))) == ""
        assert be.flush() is True
        assert be.live_text() == "" and not be.loaded()
        assert be.flush() is False
    assert host_view(ns, variant) == before
    for tool in ("iptables", "ip6tables"):
        assert "sgagent" not in run_in(ns, f"{tool}-{variant}-save")
    assert run_in(ns, "ipset", "list", "-n").split() == ["user-set"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_kept_rules_keep_counting_across_applies(root, variant):
    with Sandbox([("eth0", "vpc")], prefix=f"sgi{secrets.token_hex(3)}") as sb:
        sb.ensure_tcp_listener("host", 80)
        sb.ensure_tcp_listener("host", 3306)
        hit = [Probe("eth0", "inbound", "198.51.100.8", "tcp", 80),
               Probe("eth0", "inbound", "10.1.0.30", "tcp", 3306)]
        with IptBackend(sb.host_ns, variant=variant) as be:
            be.apply(compile_document(parse_data(DOC)))
            assert sb.probe_many(hit) == [Outcome.OPEN, Outcome.OPEN]
            seen = packets(be)
            assert seen["web"] == 1 and seen["db-from-peers"] == 1
            more = copy.deepcopy(DOC)
            more["security_groups"]["sg-a"]["rules"].append(
                {"id": "ssh", "direction": "inbound", "service": "ssh", "source": "10.0.0.0/8"})
            more["security_groups"]["sg-a"]["members"].append("10.1.0.31")
            assert be.apply(compile_document(parse_data(more))).mode == "delta"
            assert packets(be) == {**seen, "ssh": 0}
            be.apply(compile_document(parse_data(more)), full=True)
            assert packets(be) == {**seen, "ssh": 0}
            sb.probe_many(hit)
            after = packets(be)
            assert after["web"] == 2 and after["db-from-peers"] == 2


class RefusesSecondFamily(IptKernel):
    """A kernel whose ip6tables-restore is refused, after iptables-restore committed."""

    def _restore(self, family, script, test=False):
        if family == 6 and script and not test:
            raise Refused("ip6tables-restore: refused (test)")
        super()._restore(family, script, test)


@pytest.mark.parametrize("variant", VARIANTS)
def test_refused_apply_leaves_the_previous_ruleset(ns, variant):
    with IptBackend(ns, variant=variant) as be:
        be.apply(compile_document(parse_data(DOC)))
        live = be.live_text()
        counts = packets(be)
    changed = copy.deepcopy(DOC)
    changed["security_groups"]["sg-a"]["rules"][0]["ports"] = 81
    changed["security_groups"]["sg-a"]["members"] = ["10.1.0.40", "2001:db8:1::40"]
    with IptBackend(kernel=RefusesSecondFamily(ns, variant)) as be:
        with pytest.raises(ApplyError, match="nothing was changed"):
            be.apply(compile_document(parse_data(changed)))
        assert be.live_text() == live and packets(be) == counts
    # the first apply into an empty namespace, refused: nothing at all is left
    with IptBackend(ns, variant=variant) as be:
        be.flush()
    with IptBackend(kernel=RefusesSecondFamily(ns, variant)) as be:
        with pytest.raises(ApplyError):
            be.apply(compile_document(parse_data(DOC)))
        assert be.live_text() == ""
    assert "sgagent" not in run_in(ns, f"iptables-{variant}-save")


def test_example_applies_in_both_variants_side_by_side_with_nftables_text(ns):
    rs = compile_document(load_file("examples/tencent/multi-group-order.yaml"))
    with IptBackend(ns, variant="nft") as be:
        assert be.apply(rs, dry_run=True).mode == "full"
        assert be.live_text() == ""  # a dry run leaves nothing, sets included
        assert run_in(ns, "ipset", "list", "-n") == ""
        be.apply(rs)
        assert be.diff(rs) == ""


def test_watch_reports_foreign_changes_not_its_own(ns):
    import threading
    seen = threading.Event()
    with IptBackend(ns, variant="nft") as be:
        be.apply(compile_document(parse_data(DOC)))
        watch = be.kernel.watch(seen.set, interval=0.1)
        try:
            changed = copy.deepcopy(DOC)
            changed["security_groups"]["sg-a"]["rules"].pop(0)
            be.apply(compile_document(parse_data(changed)))  # sgagent's own: not reported
            assert not seen.wait(1.0)
            run_in(ns, "iptables-nft", "-D", "INPUT", "-j", "sgagent-INPUT")  # someone else
            assert seen.wait(5.0)
        finally:
            watch.close()
