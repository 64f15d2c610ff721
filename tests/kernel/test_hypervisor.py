"""The hypervisor case (SEMANTICS 3 and 6): a host that routes between its VMs, one managed NIC
per VM, judges every forwarded packet on the NIC it enters by and again on the NIC it leaves by.

The topology is the sandbox's: the host namespace is the hypervisor, NIC ``vmNNN`` is its end
of VM ``NNN``'s wire (the VM's ENI as the hypervisor sees it), the NIC's peer namespace is the
VM, its own address the NIC's gateway (10.(i+1).0.1, fd00:(i+1)::1), and
:meth:`Sandbox.route_between_nics` makes the host route between the VMs.

**What a hypervisor operator writes.** A packet from VM ``a`` to VM ``b``

* *arrives* on the hypervisor's interface for ``a``: it is **inbound on NIC a** (the table's
  forward hook dispatches ``iifname`` to NIC ``a``'s inbound chain); the peer an inbound rule
  names is the packet's **source**, which is VM ``a``'s own address;
* then *leaves* by the interface for ``b``: it is **outbound on NIC b** (``oifname`` to NIC
  ``b``'s outbound chain); the peer an outbound rule names is the **destination**, VM ``b``'s
  own address;
* ports are the destination port (VM ``b``'s port) on both, and the flow passes only if both
  chains accept its first packet; replies pass as established.

So NIC ``a``'s ``inbound`` rules (peer ``source: <a's addresses>``) say what VM ``a`` may
*send*, and NIC ``b``'s ``outbound`` rules (``destination: <b's addresses>``) what VM ``b`` may
*receive* -- the reverse of the directions a cloud console shows for the VM's own ENI. Neither
chain sees the *other* VM's address as its peer: a rule on NIC ``b`` naming VM ``a``'s address
never matches ``a``'s traffic to ``b``. With basic groups, NIC ``a``'s inbound default drops
whatever ``a`` sends that no rule allows (unless ``a``'s address is a member of one of its
groups with inner access), and NIC ``b``'s outbound default accepts; an ``enterprise`` group or
``host.defaults.outbound: drop`` makes ``b``'s outbound side an allow-list.

The first test spells this out on a small hand-written document; the second runs a
hypervisor document from bench/hvgen.py (the generator of the 100 x 1,000-rule benchmark,
here 8 VMs x 30 rules, with more refusing rules) and holds every flow's outcome and every
counter against the evaluator, judged as inbound on the entering NIC then outbound on the
leaving one.
"""

from __future__ import annotations

import ipaddress
import random
import secrets
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from sgagent.compiler import compile_document
from sgagent.evaluator import Packet, Verdict, evaluate
from sgagent.ir import CounterKey, Match
from sgagent.load import parse_data
from sgagent.nft.backend import NftBackend
from sgagent.sandbox import Outcome, Sandbox, Transit
from sgagent.verify import forget_connections

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import hvgen  # noqa: E402

VMS = 8
RULES = 30
SEED = 10
TIMEOUT = 1.0
PER_BUCKET = 24
ECHO = {4: ("icmp", 8), 6: ("icmpv6", 128)}


@dataclass(frozen=True)
class Flow:
    src: str       # NIC the flow enters by (VM a's)
    dst: str       # NIC it leaves by (VM b's)
    protocol: str  # tcp | udp | icmp | icmpv6
    port: int | None
    family: int
    entering: Verdict  # inbound on src, peer = a's address
    leaving: Verdict   # outbound on dst, peer = b's address

    @property
    def passes(self) -> bool:
        return self.entering.verdict == "accept" and self.leaving.verdict == "accept"

    @property
    def expected(self) -> Outcome:
        v = self.entering if self.entering.verdict != "accept" else self.leaving
        return {"accept": Outcome.OPEN, "drop": Outcome.DROPPED,
                "reject": Outcome.REJECTED}[v.verdict]

    def transit(self) -> Transit:
        return Transit(self.src, self.dst, self.protocol, self.port, self.family)

    def counters(self) -> list[tuple[CounterKey, bool]]:
        """The counters this flow moves, each with whether it moves by exactly one (the first
        packet of a connection that passes) or at least one (a refused flow's retries, or an
        accept on the entering NIC before a refusal on the leaving one)."""
        out = [(_key(self.src, "inbound", self.entering), self.passes)]
        if self.entering.verdict == "accept":
            out.append((_key(self.dst, "outbound", self.leaving), self.passes))
        return out

    def __str__(self) -> str:
        port = f" {self.port}" if self.port else ""
        return (f"{self.src} -> {self.dst} {self.protocol}{port} (IPv{self.family}): in on "
                f"{self.src}: {_who(self.entering)}; out on {self.dst}: {_who(self.leaving)}")


def _key(nic: str, direction: str, v: Verdict) -> CounterKey:
    return CounterKey(nic, direction, v.group, v.rule, v.verdict)  # type: ignore[arg-type]


def _who(v: Verdict) -> str:
    return f"{v.verdict} by {v.group + '/' if v.group else ''}{v.rule} ({v.reason})"


def judge(doc, addrs: dict[str, tuple[str, str]], src: str, dst: str, protocol: str,
          port: int | None, family: int) -> Flow:
    """The evaluator's view of a forwarded flow: inbound on the NIC it enters by (peer: its
    source), outbound on the one it leaves by (peer: its destination)."""
    icmp = ECHO[family][1] if protocol.startswith("icmp") else None
    a = ipaddress.ip_address(addrs[src][family // 6])
    b = ipaddress.ip_address(addrs[dst][family // 6])
    entering = evaluate(doc, Packet(src, "inbound", a, protocol, port, icmp))
    leaving = evaluate(doc, Packet(dst, "outbound", b, protocol, port, icmp))
    return Flow(src, dst, protocol, port, family, entering, leaving)


def run_flows(sb: Sandbox, backend: NftBackend, doc, flows: list[Flow]) -> list[str]:
    """Apply, send every flow for real, and list each disagreement with the evaluator: an
    outcome, a counter that moved by the wrong amount, or one that moved for no flow."""
    backend.apply(compile_document(doc))
    forget_connections(sb.host_ns)
    before = {r.key: r.packets for r in backend.counters()}
    got = sb.probe_transit([f.transit() for f in flows], timeout=TIMEOUT)
    after = {r.key: r.packets for r in backend.counters()}
    bad = [f"{f}: expected {f.expected}, the kernel {o}"
           for f, o in zip(flows, got) if o != f.expected]
    decided: Counter[CounterKey] = Counter()
    exact: dict[CounterKey, bool] = {}
    for f in flows:
        for key, one in f.counters():
            decided[key] += 1
            exact[key] = exact.get(key, True) and one
    for key in set(before) | set(after) | set(decided):
        delta = after.get(key, 0) - before.get(key, 0)
        n = decided.get(key, 0)
        if n == 0 and delta:
            bad.append(f"counter {key} moved by {delta} but decided no flow")
        elif n and (delta != n if exact[key] else delta < n):
            bad.append(f"counter {key} moved by {delta}, expected {'' if exact[key] else '>= '}{n}")
    return bad


HAND = {
    "version": 1,
    "host": {"instance": "i-hv", "account": "1", "network": "vpc", "nics": [
        {"name": "vm000", "role": "vpc", "security_groups": ["sg-a"]},
        {"name": "vm001", "role": "vpc", "security_groups": ["sg-b"]},
        {"name": "vm002", "role": "vpc", "security_groups": ["sg-c"]},
    ]},
    "security_groups": {
        # VM a (10.1.0.1) may send web, dns and 8080; nothing else (inbound default drop).
        "sg-a": {"rules": [
            {"id": "a-sends-web", "direction": "inbound", "protocol": "tcp", "ports": 80,
             "source": "10.1.0.1"},
            {"id": "a-sends-dns", "direction": "inbound", "protocol": "udp", "ports": 53,
             "source": "10.1.0.0/16"},
            {"id": "a-sends-8080", "direction": "inbound", "protocol": "tcp", "ports": 8080,
             "source": "10.1.0.1"},
            {"id": "a-receives-web", "direction": "outbound", "protocol": "tcp", "ports": 80,
             "destination": "10.1.0.1"},
        ]},
        # VM b (10.2.0.1) refuses web (a reject: the sender gets a reset).
        "sg-b": {"rules": [
            {"id": "b-refuses-web", "direction": "outbound", "policy": "reject",
             "protocol": "tcp", "ports": 80, "destination": "10.2.0.1"},
        ]},
        # VM c (10.3.0.1) may not send web, and drops dns. The last rule names the *sender*
        # a: on c's NIC it never sees a's traffic (the peer of an outbound rule there is c).
        "sg-c": {"rules": [
            {"id": "c-sends-no-web", "direction": "inbound", "policy": "drop", "protocol": "tcp",
             "ports": 80, "source": "10.3.0.1"},
            {"id": "c-sends-anything", "direction": "inbound", "policy": "accept",
             "protocol": "all", "source": "10.3.0.1", "priority": 50},
            {"id": "c-drops-dns", "direction": "outbound", "policy": "drop", "protocol": "udp",
             "ports": 53, "destination": "10.3.0.0/24"},
            {"id": "c-not-from-a", "direction": "outbound", "policy": "drop", "protocol": "tcp",
             "ports": 8080, "destination": "10.1.0.1"},
        ]},
    },
}


def test_a_forwarded_flow_needs_the_entering_nic_inbound_and_the_leaving_nic_outbound(root):
    doc = parse_data(HAND)
    cases = [  # (src, dst, protocol, port, outcome): why
        ("vm000", "vm002", "tcp", 80, Outcome.OPEN),         # a may send; c accepts (default)
        ("vm000", "vm001", "tcp", 80, Outcome.REJECTED),     # a may send; b refuses
        ("vm002", "vm000", "tcp", 80, Outcome.DROPPED),      # c may not send; a would receive
        ("vm000", "vm002", "tcp", 81, Outcome.DROPPED),      # a may not send 81 (default drop)
        ("vm000", "vm002", "udp", 53, Outcome.DROPPED),      # a may send; c drops dns
        ("vm000", "vm001", "udp", 53, Outcome.OPEN),         # a may send; b accepts (default)
        ("vm000", "vm002", "tcp", 8080, Outcome.OPEN),       # c's rule naming a never matches
        ("vm002", "vm001", "icmp", None, Outcome.OPEN),      # c may send anything
        ("vm001", "vm002", "icmp", None, Outcome.DROPPED),   # b may send nothing
    ]
    with Sandbox([("vm000", "vpc"), ("vm001", "vpc"), ("vm002", "vpc")],
                 prefix=f"sgh{secrets.token_hex(3)}") as sb:
        sb.route_between_nics()
        addrs = {n: (sb.gateway(n, 4), sb.gateway(n, 6)) for n in ("vm000", "vm001", "vm002")}
        assert [a for a, _ in addrs.values()] == ["10.1.0.1", "10.2.0.1", "10.3.0.1"]
        flows = [judge(doc, addrs, s, d, p, port, 4) for s, d, p, port, _ in cases]
        assert [f.expected for f in flows] == [c[4] for c in cases], \
            "the evaluator reads this document differently:\n" + "\n".join(map(str, flows))
        with NftBackend(sb.host_ns) as be:
            bad = run_flows(sb, be, doc, flows)
    assert not bad, "kernel and evaluator disagree:\n" + "\n".join(bad)


def candidates(rs, doc, addrs: dict[str, tuple[str, str]], src: str, dst: str):
    """Protocols and ports worth sending from ``src``'s VM to ``dst``'s: those of the rules
    that name the sender's address on ``src`` (inbound) or the receiver's on ``dst``
    (outbound), the ports next to them, and a few that no rule names."""
    out: dict[tuple[str, int | None, int], None] = {}
    for nic, direction in ((src, "inbound"), (dst, "outbound")):
        for family in (4, 6):
            me = ipaddress.ip_address(addrs[nic][family // 6])
            for d in rs.chain(nic, direction).decisions:
                for m in d.matches:
                    if m.family == family and _covers(doc, m, me):
                        for proto, port in _services(m):
                            out[(proto, port, family)] = None
    for family in (4, 6):
        out.update({("tcp", 9, family): None, ("udp", 9, family): None,
                    (ECHO[family][0], None, family): None})
    return list(out)


def _covers(doc, m: Match, addr) -> bool:
    if m.group is not None:
        return addr in doc.security_groups[m.group].members
    return any(addr in n for n in m.nets)


def _services(m: Match) -> list[tuple[str, int | None]]:
    icmp = ECHO[m.family][0]
    if m.proto in ("tcp", "udp"):
        if m.ports is None:
            return [(m.proto, 22)]
        lo, hi = m.ports[0]
        return [(m.proto, p) for p in dict.fromkeys((lo, hi, lo - 1, hi + 1)) if 0 < p < 65536]
    if m.proto in ("icmp", "icmpv6"):
        return [(icmp, None)]
    if m.proto is None:
        return [("tcp", 8080), ("udp", 5353), (icmp, None)]
    return []


def test_generated_hypervisor_flows_agree_with_the_evaluator_on_both_nics(root):
    nics = [hvgen.nic_name(i) for i in range(VMS)]
    with Sandbox([(n, "vpc") for n in nics], prefix=f"sgh{secrets.token_hex(3)}") as sb:
        sb.route_between_nics()
        addrs = {n: (sb.gateway(n, 4), sb.gateway(n, 6)) for n in nics}
        raw = hvgen.generate(VMS, RULES, seed=SEED, refusals=0.25,
                             addresses=[addrs[n] for n in nics])
        assert hvgen.count_rules(raw) == VMS * RULES
        doc = parse_data(raw)
        rs = compile_document(doc)
        buckets: dict[tuple[str, str], list[Flow]] = {}
        for src in nics:
            for dst in nics:
                if src != dst:
                    for proto, port, family in candidates(rs, doc, addrs, src, dst):
                        f = judge(doc, addrs, src, dst, proto, port, family)
                        buckets.setdefault((f.entering.verdict, f.leaving.verdict), []).append(f)
        rnd = random.Random(SEED)
        flows = [f for key in sorted(buckets)
                 for f in rnd.sample(buckets[key], min(PER_BUCKET, len(buckets[key])))]
        # Both sides are exercised: refused on either NIC alone is blocked, allowed on both
        # passes, and the refusals include drops and rejects on each side.
        seen = Counter((f.entering.verdict, f.leaving.verdict) for f in flows)
        for need in (("accept", "accept"), ("accept", "drop"), ("accept", "reject"),
                     ("drop", "accept"), ("reject", "accept")):
            assert seen[need] >= 3, f"too few flows {need} (entering, leaving): {dict(seen)}"
        assert any(f.entering.reason == "rule" and f.passes for f in flows)
        assert any(f.entering.reason == "inner-access" for f in flows)
        assert any(f.entering.reason == "default" for f in flows)
        assert {f.family for f in flows} == {4, 6}
        assert {f.protocol for f in flows} >= {"tcp", "udp", "icmp", "icmpv6"}
        with NftBackend(sb.host_ns) as be:
            bad = run_flows(sb, be, doc, flows)
    assert not bad, f"kernel and evaluator disagree on {len(flows)} flows:\n" + "\n".join(bad)
