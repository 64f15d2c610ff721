"""Proof with real packets: build a sandbox that stands in for the host and its peers, apply a
document there with the real backend, probe it, and compare what the kernel did (verdicts and
counters) with what the evaluator says.  ``sgagent verify`` and the conformance tests share it.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import json
import secrets
import subprocess
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

from .compiler import compile_document
from .evaluator import Packet, Verdict, evaluate
from .ir import CounterKey, Match
from .model import Document

APP_PORTS = {"ssh": 22, "http": 80, "https": 443}
TEST_NETS = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "fd00::/8", "2001:db8::/32"))
# Peers tried, in order, when a rule's network is wide or a peer outside it is wanted.
SPARE_PEERS = {4: ("203.0.113.7", "198.51.100.77", "10.9.0.9", "203.0.113.250"),
               6: ("2001:db8:1::7", "2001:db8:2::7", "fd00:99::9", "2001:db8:3::250")}
MAX_PROBES = 400


@dataclass(frozen=True)
class Expectation:
    nic: str
    direction: str            # inbound | outbound
    peer: str
    protocol: str             # tcp | udp | icmp | icmpv6 | ssh | http | https
    port: int | None = None
    outcome: str = "open"     # open | dropped | rejected; for ssh/http/https: open | blocked
    group: str | None = None  # the deciding rule's group (None: default, failsafe)
    rule: str = "default"     # the deciding rule's id

    @property
    def app(self) -> bool:
        return self.protocol in APP_PORTS

    @property
    def l4(self) -> str:
        return "tcp" if self.app else self.protocol

    @property
    def dport(self) -> int | None:
        if self.app:
            return self.port or APP_PORTS[self.protocol]
        return self.port

    def packet(self) -> Packet:
        icmp = {"icmp": 8, "icmpv6": 128}.get(self.protocol)
        return Packet(self.nic, self.direction, ipaddress.ip_address(self.peer),  # type: ignore[arg-type]
                      self.l4, self.dport, icmp)


def outcome_of(verdict: str, app: bool) -> str:
    if app:
        return "open" if verdict == "accept" else "blocked"
    return {"accept": "open", "drop": "dropped", "reject": "rejected"}[verdict]


def counter_of(e: Expectation, v: Verdict) -> CounterKey | None:
    if v.reason == "allowance":
        return None
    return CounterKey(e.nic, e.direction, v.group, v.rule, v.verdict)  # type: ignore[arg-type]


@dataclass
class Row:
    expect: Expectation
    observed: str
    oracle: Verdict
    counter: CounterKey | None
    delta: int = 0
    counter_ok: bool = True

    @property
    def kernel_ok(self) -> bool:
        return self.observed == self.expect.outcome

    @property
    def oracle_ok(self) -> bool:
        e, v = self.expect, self.oracle
        return outcome_of(v.verdict, e.app) == e.outcome and (v.group, v.rule) == (e.group, e.rule)

    @property
    def ok(self) -> bool:
        return self.kernel_ok and self.oracle_ok and self.counter_ok


@dataclass
class Report:
    rows: list[Row]
    stray: list[tuple[CounterKey, int]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows) and not self.stray

    def table(self) -> str:
        head = ["NIC", "DIR", "PEER", "PROTO", "PORT", "EXPECT", "KERNEL", "ORACLE", "COUNTER",
                "DECIDED BY"]
        body = []
        for r in self.rows:
            e = r.expect
            decided = (e.rule if not e.group or e.rule.startswith(e.group + "/")
                       else f"{e.group}/{e.rule}")
            body.append([
                e.nic, "in" if e.direction == "inbound" else "out", e.peer, e.protocol,
                str(e.dport or "-"), e.outcome,
                "." if r.kernel_ok else f"X {r.observed}",
                "." if r.oracle_ok else f"X {r.oracle.verdict} {r.oracle.group or ''}/{r.oracle.rule}",
                "." if r.counter_ok else f"X +{r.delta}",
                decided,
            ])
        widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h)
                  for i, h in enumerate(head)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()]
        lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)).rstrip() for b in body]
        for key, delta in self.stray:
            who = f"{key.group}/{key.rule}" if key.group else key.rule
            lines.append(f"X counter {key.nic} {key.direction} {who} ({key.policy}) moved by "
                         f"{delta} but decided no probe")
        bad = sum(not r.ok for r in self.rows) + len(self.stray)
        lines.append(f"{len(self.rows)} probes, {bad} mismatch{'es' if bad != 1 else ''}")
        return "\n".join(lines)

    def as_json(self) -> str:
        return json.dumps({
            "ok": self.ok,
            "rows": [{**asdict(r.expect), "observed": r.observed, "kernel_ok": r.kernel_ok,
                      "oracle_ok": r.oracle_ok, "counter_ok": r.counter_ok, "delta": r.delta}
                     for r in self.rows],
            "stray": [{**k._asdict(), "delta": d} for k, d in self.stray],
        }, indent=2)


# --- running --------------------------------------------------------------------------------

def check(doc: Document, expectations: list[Expectation], *, timeout: float = 1.0,
          prefix: str | None = None, sandbox=None, backend=None,
          rendering: str = "sets", backend_name: str = "nftables") -> Report:
    """Apply ``doc`` in a sandbox (a fresh one, or ``sandbox`` whose NICs match the
    document's, through ``backend`` if given so that it applies a difference), probe, and
    compare with ``expectations``."""
    from .backends import make_backend
    from .sandbox import Sandbox

    if sandbox is not None:
        if backend is not None:
            return _check_in(sandbox, backend, doc, expectations, timeout)
        with make_backend(backend_name, sandbox.host_ns, rendering) as be:
            return _check_in(sandbox, be, doc, expectations, timeout)
    nics = [(n.name, n.role) for n in doc.host.nics]
    with Sandbox(nics, prefix=prefix or f"sgv{secrets.token_hex(3)}") as sb:
        with make_backend(backend_name, sb.host_ns, rendering) as be:
            return _check_in(sb, be, doc, expectations, timeout)


def _check_in(sb, backend, doc: Document, expectations: list[Expectation],
              timeout: float) -> Report:
    rs = compile_document(doc)
    _start_servers(sb, expectations)
    backend.apply(rs)
    forget_connections(sb.host_ns)
    before = _counts(backend)
    observed = _probe(sb, expectations, timeout)
    after = _counts(backend)
    return compare(doc, expectations, observed, before, after)


def forget_connections(ns: str) -> None:
    """Empty the namespace's connection tracking table, so that earlier probes in a reused
    sandbox do not pass as established connections."""
    from . import netns

    subprocess.run(netns.argv_in(ns, ["conntrack", "-F"]), capture_output=True, timeout=10)


def compare(doc: Document, expectations: list[Expectation], observed: list[str],
            before: dict[CounterKey, int], after: dict[CounterKey, int]) -> Report:
    rows = []
    for e, seen in zip(expectations, observed):
        v = evaluate(doc, e.packet())
        rows.append(Row(e, seen, v, counter_of(e, v)))
    decided = Counter(r.counter for r in rows if r.counter is not None)
    deltas = {k: after.get(k, 0) - before.get(k, 0) for k in set(before) | set(after)}
    for r in rows:
        if r.counter is None:
            continue
        r.delta = deltas.get(r.counter, 0)
        n = decided[r.counter]
        # An accepted connection counts its first packet only; refused traffic every packet.
        r.counter_ok = r.delta == n if r.counter.policy == "accept" else r.delta >= n
    stray = sorted(((k, d) for k, d in deltas.items() if d and k not in decided),
                   key=lambda kd: (kd[0].nic, kd[0].direction, kd[0].group or "", kd[0].rule))
    return Report(rows, stray)


def _counts(backend) -> dict[CounterKey, int]:
    return {r.key: r.packets for r in backend.counters()}


def _start_servers(sb, expectations: list[Expectation]) -> None:
    if any(e.protocol == "ssh" for e in expectations):
        sb.start_sshd(22)
    for e in expectations:
        if e.protocol in ("http", "https"):
            sb.start_http(e.dport, tls=e.protocol == "https")
    for e in expectations:
        if e.protocol in ("tcp", "udp"):
            side = "host" if e.direction == "inbound" else e.nic
            if e.protocol == "tcp":
                sb.ensure_tcp_listener(side, e.port)
            else:
                sb.ensure_udp_echo(side, e.port)


def _probe(sb, expectations: list[Expectation], timeout: float) -> list[str]:
    from .sandbox import Probe

    results: list[str | None] = [None] * len(expectations)
    plain = [(i, e) for i, e in enumerate(expectations) if not e.app]
    outcomes = sb.probe_many([Probe(e.nic, e.direction, e.peer, e.protocol, e.port)
                              for _, e in plain], timeout=timeout)
    for (i, _), o in zip(plain, outcomes):
        results[i] = o.value

    def app(e: Expectation) -> str:
        if e.protocol == "ssh":
            ok = sb.ssh_ok(e.nic, e.peer, timeout=max(timeout, 1.0) * 3)
        else:
            ok = sb.http_ok(e.nic, e.peer, e.dport, tls=e.protocol == "https",
                            timeout=max(timeout, 1.0) * 3)
        return "open" if ok else "blocked"

    apps = [(i, e) for i, e in enumerate(expectations) if e.app]
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        for (i, _), res in zip(apps, pool.map(lambda ie: app(ie[1]), apps)):
            results[i] = res
    return [r or "?" for r in results]


# --- the matrix `verify` derives from a document ------------------------------------------------

def derive(doc: Document, reserved: Iterable[str] = ()) -> list[Expectation]:
    """Probes around every rule: its peer and one outside it, its ports and the ones next to
    them, plus the defaults; each with the evaluator's verdict as the expectation."""
    taken = {ipaddress.ip_address(a) for a in reserved}
    rs = compile_document(doc)
    families = (4,) if doc.host.network == "classic" else (4, 6)
    seen: dict[tuple, None] = {}
    for chain in rs.chains:
        for decision in chain.decisions:
            for m in decision.matches:
                for peer in _peers_in(doc, m, taken)[:2]:
                    for proto, port in _services(m):
                        seen[(chain.nic, chain.direction, peer, proto, port)] = None
                outside = _peer_outside(doc, m, taken)
                if outside is not None:
                    proto, port = _services(m)[0]
                    seen[(chain.nic, chain.direction, outside, proto, port)] = None
        for family in families:
            peer = str(_spare(family, taken, lambda a: False))
            for proto, port in (("tcp", 9), ("udp", 9), ("icmp" if family == 4 else "icmpv6", None)):
                seen[(chain.nic, chain.direction, peer, proto, port)] = None
        for group in chain.inner_access:
            for member in doc.security_groups[group].members[:1]:
                if member not in taken:
                    seen[(chain.nic, chain.direction, str(member), "tcp", 9)] = None
    out = []
    for nic, direction, peer, proto, port in list(seen)[:MAX_PROBES]:
        e = Expectation(nic, direction, peer, proto, port)
        v = evaluate(doc, e.packet())
        out.append(Expectation(nic, direction, peer, proto, port,
                               outcome_of(v.verdict, False), v.group, v.rule))
    return out


def _services(m: Match) -> list[tuple[str, int | None]]:
    icmp = "icmp" if m.family == 4 else "icmpv6"
    if m.proto in ("tcp", "udp"):
        if m.ports is None:
            return [(m.proto, 22), (m.proto, 40000)]
        out = []
        for lo, hi in m.ports[:3]:
            for p in (lo, hi, lo - 1, hi + 1):
                if 1 <= p <= 65535 and (m.proto, p) not in out:
                    out.append((m.proto, p))
        return out
    if m.proto in ("icmp", "icmpv6"):
        return [(icmp, None)]
    if m.proto is None:
        return [("tcp", 8080), ("udp", 5353), (icmp, None)]
    return []  # gre and other protocols are not probed


def _peers_in(doc: Document, m: Match, taken: set) -> list[str]:
    if m.group is not None:
        members = [a for a in doc.security_groups[m.group].members
                   if a.version == m.family and a not in taken]
        return [str(a) for a in members[:2]]
    out = []
    for net in m.nets[:2]:
        addr = _inside(net, taken)
        if addr is not None:
            out.append(str(addr))
    return out


def _inside(net, taken: set):
    for spare in SPARE_PEERS[net.version]:
        a = ipaddress.ip_address(spare)
        if a in net and a not in taken:
            return a
    if net.num_addresses == 1:
        return None if net.network_address in taken else net.network_address
    for offset in (7, 1, 2, 3, 4, 5, 6, 8, 9):
        if offset < net.num_addresses:
            a = net.network_address + offset
            if a not in taken:
                return a
    return None


def _peer_outside(doc: Document, m: Match, taken: set) -> str | None:
    if m.group is not None:
        members = set(doc.security_groups[m.group].members)
        base = next((a for a in members if a.version == m.family), None)
        if base is None:
            return None
        for step in range(1, 50):
            a = base + step
            if a not in members and a not in taken and any(a in t for t in TEST_NETS):
                return str(a)
        return None
    if any(n.prefixlen == 0 for n in m.nets):
        return None
    for net in m.nets[:1]:
        for a in (net.broadcast_address + 1, net.network_address - 1):
            if (a.version == net.version and not any(a in n for n in m.nets) and a not in taken
                    and any(a in t for t in TEST_NETS)):
                return str(a)
    a = _spare(m.family, taken, lambda x: any(x in n for n in m.nets))
    return str(a) if a is not None else None


def _spare(family: int, taken: set, excluded: Callable) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    for spare in SPARE_PEERS[family]:
        a = ipaddress.ip_address(spare)
        if a not in taken and not excluded(a):
            return a
    return None


def run_verify(doc: Document, *, timeout: float, as_json: bool, echo: Callable[[str], None]) -> bool:
    from .sandbox.addressing import plan_nics

    reserved = []
    for plan in plan_nics([(n.name, n.role) for n in doc.host.nics]):
        for family in (4, 6):
            reserved += [str(plan.host(family).ip), str(plan.gateway(family))]
    expectations = derive(doc, reserved)
    report = check(doc, expectations, timeout=timeout)
    echo(report.as_json() if as_json else report.table())
    return report.ok
