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
from .ir import CounterKey, Decision, Match
from .model import Document

APP_PORTS = {"ssh": 22, "http": 80, "https": 443}
TEST_NETS = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "fd00::/8", "2001:db8::/32"))
# Peers tried, in order, when a rule's network is wide or a peer outside it is wanted.
SPARE_PEERS = {4: ("203.0.113.7", "198.51.100.77", "10.9.0.9", "203.0.113.250"),
               6: ("2001:db8:1::7", "2001:db8:2::7", "fd00:99::9", "2001:db8:3::250")}
MAX_PROBES = 2000


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
class RuleCoverage:
    """One rule (or failsafe entry) on one NIC and direction: the probes it decided and what
    the kernel did with them, or why no probe could be decided by it."""
    nic: str
    direction: str
    key: CounterKey
    probes: int = 0
    verdicts: dict[str, int] = field(default_factory=dict)   # the kernel's outcome -> probes
    mismatches: int = 0
    reason: str | None = None
    moved: int = 0   # an audit rule's: how far its counter moved (at least ``probes``: ok)

    @property
    def probed(self) -> bool:
        return self.probes > 0

    @property
    def audit(self) -> bool:
        return self.key.mode == "audit"

    @property
    def policy(self) -> str:
        return f"audit {self.key.policy}" if self.audit else self.key.policy

    @property
    def name(self) -> str:
        k = self.key
        return k.rule if k.group is None or k.rule.startswith(k.group + "/") else f"{k.group}/{k.rule}"

    def as_dict(self) -> dict:
        return {"nic": self.nic, "direction": self.direction, "group": self.key.group,
                "rule": self.key.rule, "policy": self.key.policy, "mode": self.key.mode,
                "probed": self.probed, "probes": self.probes, "verdicts": self.verdicts,
                "mismatches": self.mismatches, "reason": self.reason,
                **({"counter_moved": self.moved} if self.audit else {})}


@dataclass
class Coverage:
    entries: list[RuleCoverage]

    def rules(self) -> dict[tuple[str | None, str], bool]:
        """Each rule (group, id) and failsafe entry: probed on every NIC it applies to?"""
        out: dict[tuple[str | None, str], bool] = {}
        for e in self.entries:
            key = (e.key.group, e.key.rule)
            out[key] = out.get(key, True) and e.probed
        return out

    @property
    def probed(self) -> int:
        return sum(self.rules().values())

    @property
    def total(self) -> int:
        return len(self.rules())

    @property
    def complete(self) -> bool:
        return all(e.probed for e in self.entries)

    def line(self) -> str:
        n, m = self.probed, self.total
        rest = f" ({m - n} not: see the coverage table)" if n < m else ""
        return f"{n} of {m} rules probed{rest}"

    def table_rows(self) -> list[list[str]]:
        rows = []
        for e in self.entries:
            verdicts = ", ".join(f"{o} {n}" for o, n in sorted(e.verdicts.items())) or "-"
            if not e.probed:
                result = f"not probed: {e.reason}"
            elif e.audit:
                result = f"counter moved {e.moved}" if not e.mismatches else \
                    f"X counter moved {e.moved}, {e.probes} probes reached it"
            else:
                result = "." if not e.mismatches else f"X {e.mismatches}"
            rows.append([e.name, e.nic, "in" if e.direction == "inbound" else "out",
                         e.policy, str(e.probes), verdicts, result])
        return rows

    def as_dict(self) -> dict:
        return {"rules": self.total, "probed": self.probed, "complete": self.complete,
                "entries": [e.as_dict() for e in self.entries]}


COVERAGE_HEAD = ["rule", "nic", "dir", "policy", "probes", "kernel", "result"]
PROBE_HEAD = ["NIC", "DIR", "PEER", "PROTO", "PORT", "EXPECT", "KERNEL", "ORACLE", "COUNTER",
              "DECIDED BY"]


def coverage(doc: Document, probes: "ProbePlan", report: "Report") -> Coverage:
    """Each rule on each NIC and direction: the probes it decided (an audit rule: the probes
    that reached it, and whether its counter moved for each), or why there were none."""
    entries = []
    reaching: dict[CounterKey, list[Row]] = {}
    for r in report.rows:
        for a in r.oracle.audits:
            key = CounterKey(r.expect.nic, r.expect.direction, a.group, a.rule,  # type: ignore[arg-type]
                             a.policy, "audit")
            reaching.setdefault(key, []).append(r)
    for nic, direction, keys in probes.chains:
        for key in keys:
            audit = key.mode == "audit"
            rows = reaching.get(key, []) if audit else [r for r in report.rows if r.counter == key]
            verdicts: dict[str, int] = {}
            for r in rows:
                verdicts[r.observed] = verdicts.get(r.observed, 0) + 1
            reason = None
            if not rows:
                reason = probes.unprobed.get(key) or \
                    ("no probe reached it" if audit else "no probe was decided by it")
            moved, n = report.audited.get(key, (0, 0))
            bad = int(moved < n) if audit else sum(not r.ok for r in rows)
            entries.append(RuleCoverage(nic, direction, key, len(rows), verdicts, bad, reason,
                                        moved))
    return Coverage(entries)


@dataclass
class Report:
    rows: list[Row]
    stray: list[tuple[CounterKey, int]] = field(default_factory=list)
    # audit counters that moved less than the probes that reached them: (key, delta, probes)
    unaudited: list[tuple[CounterKey, int, int]] = field(default_factory=list)
    coverage: Coverage | None = None
    # every audit counter a probe reached: key -> (how far it moved, the probes reaching it)
    audited: dict[CounterKey, tuple[int, int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows) and not self.stray and not self.unaudited

    @property
    def mismatches(self) -> int:
        return sum(not r.ok for r in self.rows) + len(self.stray) + len(self.unaudited)

    def summary(self) -> str:
        bad = self.mismatches
        out = f"{len(self.rows)} probes, {bad} mismatch{'es' if bad != 1 else ''}"
        return out + (f"; {self.coverage.line()}" if self.coverage is not None else "")

    def probe_rows(self) -> list[list[str]]:
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
        return body

    def stray_lines(self) -> list[str]:
        lines = []
        for key, delta, n in self.unaudited:
            lines.append(f"X counter {key.nic} {key.direction} {key.group}/{key.rule} (audit, "
                         f"would {key.policy}) moved by {delta} but {n} probe"
                         f"{'s' if n != 1 else ''} reached it")
        for key, delta in self.stray:
            who = f"{key.group}/{key.rule}" if key.group else key.rule
            lines.append(f"X counter {key.nic} {key.direction} {who} ({key.policy}) moved by "
                         f"{delta} but decided no probe")
        return lines

    def show(self) -> None:
        """The probe table, the stray counters, the coverage table and the summary line, on
        stdout: drawn on a terminal, plain in a pipe."""
        from .console import line, table
        table(PROBE_HEAD, self.probe_rows())
        for s in self.stray_lines():
            line(s, "bold red")
        if self.coverage is not None:
            print()
            table(COVERAGE_HEAD, self.coverage.table_rows(), title="coverage")
        line(self.summary(), "green" if self.ok else "bold red")

    def table(self) -> str:
        """The probe table, stray counters and summary as plain text."""
        body = self.probe_rows()
        widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h)
                  for i, h in enumerate(PROBE_HEAD)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(PROBE_HEAD, widths)).rstrip()]
        lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)).rstrip() for b in body]
        lines += self.stray_lines()
        lines.append(self.summary())
        return "\n".join(lines)

    def as_json(self) -> str:
        return json.dumps({
            "ok": self.ok,
            "summary": self.summary(),
            **({"coverage": self.coverage.as_dict()} if self.coverage is not None else {}),
            "rows": [{**asdict(r.expect), "observed": r.observed, "kernel_ok": r.kernel_ok,
                      "oracle_ok": r.oracle_ok, "counter_ok": r.counter_ok, "delta": r.delta}
                     for r in self.rows],
            "stray": [{**k._asdict(), "delta": d} for k, d in self.stray],
            "unaudited": [{**k._asdict(), "delta": d, "probes": n} for k, d, n in self.unaudited],
        }, indent=2)


# --- running --------------------------------------------------------------------------------

def check(doc: Document, expectations: list[Expectation], *, timeout: float = 1.0,
          prefix: str | None = None, sandbox=None, backend=None,
          rendering: str = "sets", backend_name: str = "nftables", progress=None,
          verdicts: list[Verdict] | None = None) -> Report:
    """Apply ``doc`` in a sandbox (a fresh one, or ``sandbox`` whose NICs match the
    document's, through ``backend`` if given so that it applies a difference), probe, and
    compare with ``expectations`` (and the evaluator's ``verdicts`` of them, if known)."""
    from .backends import make_backend
    from .sandbox import Sandbox

    if sandbox is not None:
        if backend is not None:
            return _check_in(sandbox, backend, doc, expectations, timeout)
        with make_backend(backend_name, sandbox.host_ns, rendering) as be:
            return _check_in(sandbox, be, doc, expectations, timeout)
    nics = [(n.name, n.role) for n in doc.host.nics]
    if progress is not None:
        progress.stage("sandbox")
    with Sandbox(nics, prefix=prefix or f"sgv{secrets.token_hex(3)}") as sb:
        with make_backend(backend_name, sb.host_ns, rendering) as be:
            return _check_in(sb, be, doc, expectations, timeout, progress, verdicts)


def _check_in(sb, backend, doc: Document, expectations: list[Expectation],
              timeout: float, progress=None, verdicts: list[Verdict] | None = None) -> Report:
    rs = compile_document(doc)
    _start_servers(sb, expectations)
    if progress is not None:
        progress.stage("apply")
    backend.apply(rs)
    forget_connections(sb.host_ns)
    before = _counts(backend)
    if progress is not None:
        progress.stage("probe", total=len(expectations))
    observed = _probe(sb, expectations, timeout, progress)
    after = _counts(backend)
    return compare(doc, expectations, observed, before, after, verdicts)


def forget_connections(ns: str) -> None:
    """Empty the namespace's connection tracking table, so that earlier probes in a reused
    sandbox do not pass as established connections."""
    from . import netns

    subprocess.run(netns.argv_in(ns, ["conntrack", "-F"]), capture_output=True, timeout=10)


def compare(doc: Document, expectations: list[Expectation], observed: list[str],
            before: dict[CounterKey, int], after: dict[CounterKey, int],
            verdicts: list[Verdict] | None = None) -> Report:
    rows = []
    if verdicts is None:
        verdicts = [evaluate(doc, e.packet()) for e in expectations]
    for e, seen, v in zip(expectations, observed, verdicts):
        rows.append(Row(e, seen, v, counter_of(e, v)))
    decided = Counter(r.counter for r in rows if r.counter is not None)
    # Audit rules count the packets that reach them (SEMANTICS section 9), deciding none.
    audited = Counter(CounterKey(r.expect.nic, r.expect.direction, a.group, a.rule, a.policy,  # type: ignore[arg-type]
                                 "audit") for r in rows for a in r.oracle.audits)
    deltas = {k: after.get(k, 0) - before.get(k, 0) for k in set(before) | set(after)}
    for r in rows:
        if r.counter is None:
            continue
        r.delta = deltas.get(r.counter, 0)
        n = decided[r.counter]
        # An accepted connection counts its first packet only; refused traffic every packet.
        r.counter_ok = r.delta == n if r.counter.policy == "accept" else r.delta >= n
    stray = sorted(((k, d) for k, d in deltas.items()
                    if d and k not in decided and k not in audited),
                   key=lambda kd: (kd[0].nic, kd[0].direction, kd[0].group or "", kd[0].rule))
    # Each probe that reaches an audit rule moves its counter (a refused one maybe more than
    # once: retransmissions reach it again).
    unaudited = sorted(((k, deltas.get(k, 0), n) for k, n in audited.items()
                        if deltas.get(k, 0) < n),
                       key=lambda t: (t[0].nic, t[0].direction, t[0].group or "", t[0].rule))
    return Report(rows, stray, unaudited=unaudited,
                  audited={k: (deltas.get(k, 0), n) for k, n in audited.items()})


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


def _probe(sb, expectations: list[Expectation], timeout: float, progress=None) -> list[str]:
    from .sandbox import Probe

    results: list[str | None] = [None] * len(expectations)
    plain = [(i, e) for i, e in enumerate(expectations) if not e.app]
    outcomes = sb.probe_many([Probe(e.nic, e.direction, e.peer, e.protocol, e.port)
                              for _, e in plain], timeout=timeout)
    for (i, _), o in zip(plain, outcomes):
        results[i] = o.value
    if progress is not None:
        progress.advance(len(plain))

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
            if progress is not None:
                progress.advance()
    return [r or "?" for r in results]


# --- the matrix `verify` derives from a document ------------------------------------------------

@dataclass
class ProbePlan:
    """The probes of a document, and for each rule that no probe can be decided by, why."""
    expectations: list[Expectation]
    chains: list[tuple[str, str, tuple[CounterKey, ...]]]   # (nic, direction, rule counters)
    unprobed: dict[CounterKey, str]
    verdicts: list[Verdict]                                 # the evaluator's, of each probe


def derive(doc: Document, reserved: Iterable[str] = ()) -> list[Expectation]:
    return plan_probes(doc, reserved).expectations


def plan_probes(doc: Document, reserved: Iterable[str] = (),
                budget: int = MAX_PROBES) -> ProbePlan:
    """Probes around every rule: first, for each rule, one packet that the rule itself decides,
    found in the partition (so a peer inside a network an earlier rule refuses is not taken
    for a wide rule's peer: the probe goes where the rule decides); then its peers and their
    neighbours (just inside and just outside each network, members and the address after
    them), its ports and the ones next to them, and the defaults.  Each expectation is the
    evaluator's verdict.  At most ``budget`` probes, the deciding ones first."""
    from .lint import Painting, name_of

    taken = {ipaddress.ip_address(a) for a in reserved}
    rs = compile_document(doc)
    groups = {g.name: g for g in rs.groups}
    families = (4,) if doc.host.network == "classic" else (4, 6)
    first: dict[tuple, CounterKey] = {}  # a probe each decision decides -> the decision
    seen: dict[tuple, None] = {}
    unprobed: dict[CounterKey, str] = {}
    chains = []
    for chain in rs.chains:
        painting = Painting(chain, groups)
        keys = []
        where = (chain.nic, chain.direction)
        audits = []
        for i, decision in enumerate(chain.decisions):
            keys.append(decision.counter)
            probe = "" if decision.audit else \
                _deciding_probe(doc, painting, i, decision, taken, families)
            if decision.audit:
                audits.append(decision)  # a probe reaching it: below, among the chain's
            elif isinstance(probe, tuple):
                first.setdefault(where + probe, decision.counter)
            else:
                reason = probe
                if i not in painting.won and any(
                        m.family in families for m in decision.matches):
                    others = painting.deciders(i)
                    if others:
                        reason = "shadowed: " + ", ".join(
                            sorted({name_of(chain.decisions[j].counter) for j in others})) + \
                            " before it decide" + ("s" if len(others) == 1 else "") + \
                            " everything it matches (sgagent lint)"
                unprobed[decision.counter] = reason
            for m in decision.matches:
                if m.family not in families:
                    continue
                services = _services(m)
                for peer in _peers_in(doc, m, taken)[:3]:
                    for proto, port in services:
                        seen[where + (peer, proto, port)] = None
                if services:
                    for outside in _peers_outside(doc, m, taken)[:2]:
                        seen[where + (outside, *services[0])] = None
        planned = [k[2:] for k in (*first, *seen) if k[:2] == where][:MAX_AUDIT_TRIES] \
            if audits else []
        for decision in audits:
            if len(first) >= budget:  # no room for its probe: not worth the evaluator's time
                unprobed[decision.counter] = f"over the probe budget of {budget}"
                continue
            probe = _reaching_probe(doc, where, decision, taken, families, planned)
            if isinstance(probe, tuple):
                first.setdefault(where + probe, decision.counter)
            else:
                unprobed[decision.counter] = probe
        chains.append((chain.nic, chain.direction, tuple(keys)))
        for family in families:
            peer = str(_spare(family, taken, lambda a: False))
            for proto, port in (("tcp", 9), ("udp", 9), ("icmp" if family == 4 else "icmpv6", None)):
                seen[(chain.nic, chain.direction, peer, proto, port)] = None
        for group in chain.inner_access:
            for member in doc.security_groups[group].members[:1]:
                if member not in taken:
                    seen[(chain.nic, chain.direction, str(member), "tcp", 9)] = None
    wanted = list(first) + [k for k in seen if k not in first]
    for key in list(first.values())[budget:]:
        unprobed.setdefault(key, f"over the probe budget of {budget}")
    out, verdicts = [], []
    for nic, direction, peer, proto, port in wanted[:budget]:
        e = Expectation(nic, direction, peer, proto, port)
        v = evaluate(doc, e.packet())
        out.append(Expectation(nic, direction, peer, proto, port,
                               outcome_of(v.verdict, False), v.group, v.rule))
        verdicts.append(v)
    return ProbePlan(out, chains, unprobed, verdicts)


def _deciding_probe(doc: Document, painting, i: int, decision: Decision, taken: set,
                    families: tuple[int, ...]) -> tuple[str, str, int | None] | str:
    """(peer, protocol, port) of a packet that decision ``i`` decides, or why there is none."""
    plans = painting.plans
    if not decision.matches:
        return "can never match here (its ICMP family is not its peers' family)"
    why = []
    for m in decision.matches:
        if m.family not in families:
            why.append("IPv6 peers are not probed on a classic host")
            continue
        plan = plans[m.family]
        if m.group is not None:
            members = sorted(plan.members.get(m.group, ()))
            if not members:
                why.append(f"its peer group {m.group} has no IPv{m.family} members")
                continue
            for a in members:
                addr = ipaddress.ip_address(a) if m.family == 4 else ipaddress.IPv6Address(a)
                if not _usable(addr, taken):
                    why.append(f"its peers are addresses the sandbox keeps for itself")
                    continue
                found = _probe_in_row(plan.row_at(a), i, m.family)
                if isinstance(found, tuple):
                    return (str(addr),) + found
                why.append(found)
            continue
        for net in m.nets:
            for lo, hi, row in painting.segments_over(m.family, int(net.network_address),
                                                      int(net.broadcast_address)):
                found = _probe_in_row(row, i, m.family)
                if not isinstance(found, tuple):
                    why.append(found)
                    continue
                addr = _address_in(lo, hi, m.family, taken,
                                   lambda a: plan.decide(int(a), _PROTO[found[0]],
                                                         found[1] or ECHO[m.family]) == i)
                if addr is None:
                    why.append("its peers are addresses the sandbox keeps for itself")
                    continue
                return (str(addr),) + found
    return _reason(why) or "never decides a packet"


MAX_AUDIT_TRIES = 24  # packets the evaluator tries for an audit rule before giving up


def _reaching_probe(doc: Document, where: tuple[str, str], decision: Decision, taken: set,
                    families: tuple[int, ...], planned: list[tuple]
                    ) -> tuple[str, str, int | None] | str:
    """(peer, protocol, port) of a packet that reaches audit decision ``decision`` and that it
    matches (its counter must move: SEMANTICS section 9), or why there is none.  Tried: the
    rule's own peers and ports, then the chain's other probes; the evaluator decides."""
    key = decision.counter
    why: list[str] = []
    tries: list[tuple] = []
    if not decision.matches:
        return "can never match here (its ICMP family is not its peers' family)"
    for m in decision.matches:
        if m.family not in families:
            why.append("IPv6 peers are not probed on a classic host")
            continue
        services = _services(m)
        if not services:
            why.append(f"matches only protocols the sandbox does not probe ({m.proto})")
            continue
        peers = _peers_in(doc, m, taken)
        if not peers:
            why.append(f"its peer group {m.group} has no IPv{m.family} members"
                       if m.group is not None else
                       "its peers are addresses the sandbox keeps for itself")
        tries += [(peer, proto, port) for peer in peers[:3] for proto, port in services]
    if not tries:
        return _reason(why) or "no packet of the sandbox's matches it"
    for t in list(dict.fromkeys(tries[:MAX_AUDIT_TRIES] + planned))[:MAX_AUDIT_TRIES]:
        v = evaluate(doc, Expectation(*where, *t).packet())
        if any((a.group, a.rule, a.policy) == (key.group, key.rule, key.policy)
               for a in v.audits):
            return t
    return ("reached by no probe it matches: a rule before it decides each of them "
            "(sgagent explain)")


_PROTO = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58}
ECHO = {4: 8, 6: 128}


def _reason(why: list[str]) -> str:
    """The most telling of the reasons collected (a protocol beats 'never decides')."""
    for w in why:
        if w.startswith("decides only"):
            return w
    return why[0] if why else ""


def _probe_in_row(row, i: int, family: int) -> tuple[str, int | None] | str:
    """(protocol, port) of a box of ``row`` that owner ``i`` decides and the sandbox can send:
    tcp or udp to a port, an ICMP echo request; else why not."""
    icmp = 1 if family == 4 else 58
    mine = [b for b in row if b[4] == i]
    if not mine:
        return "never decides a packet"
    for proto, name in ((6, "tcp"), (17, "udp")):
        for plo, phi, vlo, vhi, _ in mine:
            if plo <= proto <= phi and max(vlo, 1) <= vhi:
                return name, max(vlo, 1)
    for plo, phi, vlo, vhi, _ in mine:
        if plo <= icmp <= phi and vlo <= ECHO[family] <= vhi:
            return ("icmp" if family == 4 else "icmpv6"), None
    if any(plo <= icmp <= phi for plo, phi, *_ in mine):
        return "decides only ICMP types other than echo request (the sandbox sends echo requests)"
    return "decides only protocols the sandbox does not probe (it sends tcp, udp and ICMP echo)"


def _address_in(lo: int, hi: int, family: int, taken: set, good: Callable) -> object | None:
    """A usable address in [lo, hi]: a spare peer, else one of the test networks, else the
    first ones of the range; ``good`` must hold for it (member addresses have rows of their
    own)."""
    make = ipaddress.IPv4Address if family == 4 else ipaddress.IPv6Address
    candidates = [ipaddress.ip_address(a) for a in SPARE_PEERS[family]]
    for t in TEST_NETS:
        if t.version != family:
            continue
        t_lo, t_hi = max(lo, int(t.network_address)), min(hi, int(t.broadcast_address))
        candidates += [make(t_lo + k) for k in (7, 1, 2, 3, 9, 0) if t_lo + k <= t_hi]
    candidates += [make(lo + k) for k in (7, 1, 2, 3, 9, 0) if lo + k <= hi]
    candidates += [make(hi - k) for k in (1, 0) if hi - k >= lo]
    for a in candidates:
        if lo <= int(a) <= hi and _usable(a, taken) and good(a):
            return a
    return None


def _usable(a, taken: set) -> bool:
    return not (a in taken or a.is_loopback or a.is_multicast or a.is_unspecified
                or a.is_link_local or a.is_reserved
                or a.version == 4 and int(a) >> 24 == 0
                or a.version == 6 and a.ipv4_mapped is not None)


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
    """The rule's own peers: members, or for each network a spare peer in it and the
    addresses just inside its ends."""
    if m.group is not None:
        members = [a for a in doc.security_groups[m.group].members
                   if a.version == m.family and _usable(a, taken)]
        return [str(a) for a in members[:2]]
    out = []
    for net in m.nets[:2]:
        addr = _inside(net, taken)
        if addr is not None:
            out.append(str(addr))
        if net.num_addresses > 2:
            for a in (net.network_address + 1, net.broadcast_address - 1):
                if _usable(a, taken) and str(a) not in out:
                    out.append(str(a))
    return out


def _inside(net, taken: set):
    for spare in SPARE_PEERS[net.version]:
        a = ipaddress.ip_address(spare)
        if a in net and _usable(a, taken):
            return a
    if net.num_addresses == 1:
        return net.network_address if _usable(net.network_address, taken) else None
    for offset in (7, 1, 2, 3, 4, 5, 6, 8, 9):
        if offset < net.num_addresses:
            a = net.network_address + offset
            if _usable(a, taken):
                return a
    return None


def _peers_outside(doc: Document, m: Match, taken: set) -> list[str]:
    """Addresses just outside the rule's peers: after a member, just before and just after
    each network (in a test network), else a spare peer outside them all."""
    if m.group is not None:
        members = set(doc.security_groups[m.group].members)
        base = next((a for a in members if a.version == m.family), None)
        if base is None:
            return []
        for step in range(1, 50):
            a = base + step
            if a not in members and _usable(a, taken) and any(a in t for t in TEST_NETS):
                return [str(a)]
        return []
    out = []
    for net in m.nets[:2]:
        if net.prefixlen == 0:
            continue
        for a in (net.broadcast_address + 1, net.network_address - 1):
            try:
                a = ipaddress.ip_address(a)
            except ValueError:
                continue
            if (not any(a in n for n in m.nets) and _usable(a, taken)
                    and any(a in t for t in TEST_NETS) and str(a) not in out):
                out.append(str(a))
    if not out:
        a = _spare(m.family, taken, lambda x: any(x in n for n in m.nets))
        if a is not None:
            out.append(str(a))
    return out


def _spare(family: int, taken: set, excluded: Callable) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    for spare in SPARE_PEERS[family]:
        a = ipaddress.ip_address(spare)
        if a not in taken and not excluded(a):
            return a
    return None


def reserved_addresses(doc: Document) -> list[str]:
    """The sandbox's own addresses for this document's NICs (host, gateway, broadcast): never
    a peer."""
    from .sandbox.addressing import plan_nics

    out = []
    for plan in plan_nics([(n.name, n.role) for n in doc.host.nics]):
        for family in (4, 6):
            out += [str(plan.host(family).ip), str(plan.gateway(family))]
        out.append(str(plan.host4.network.broadcast_address))
    return out


def run_verify(doc: Document, *, timeout: float, progress=None,
               backend_name: str = "nftables") -> "Report":
    """Probe ``doc`` in a fresh sandbox: the report, with its coverage."""
    if progress is not None:
        progress.stage("plan")
    probes = plan_probes(doc, reserved_addresses(doc))
    report = check(doc, probes.expectations, timeout=timeout, progress=progress,
                   backend_name=backend_name, verdicts=probes.verdicts)
    report.coverage = coverage(doc, probes, report)
    return report
