"""Prometheus collectors: the kernel's per-rule hit counters, and the agent's own health.

:class:`KernelCollector` reads the kernel **once per scrape** (the ``read_counters`` callable,
normally :meth:`sgagent.nft.backend.NftBackend.counters`) and turns every
:class:`~sgagent.nft.backend.CounterReading` into two samples.  :class:`MonotonicCounters` keeps an
offset per counter identity so that an exported counter never goes backwards while the agent runs
(SEMANTICS section 8), even when the kernel's value drops because someone flushed the table and
the agent re-applied; an identity that disappears from the kernel disappears from the exposition
and its offset is forgotten.

At 10,000 rules a scrape has over 20,000 samples; prometheus_client's generic text encoder needs
about half a second for that, so :class:`MetricsRegistry.exposition` writes the kernel
collector's samples itself (label strings are escaped once per counter identity and cached).
The standard ``collect()`` interface gives the same samples, for ``generate_latest`` and tests.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, InfoMetricFamily)
from prometheus_client.exposition import generate_latest
from prometheus_client.utils import floatToGoString

from .. import __version__
from ..ir import CounterKey
from .stats import APPLY_BUCKETS, AgentStats

__all__ = ["KernelCollector", "AgentCollector", "FlowLogCollector", "MonotonicCounters", "MetricsRegistry",
           "build_registry", "RULE_LABELS", "DEFAULT_LABELS", "CONTENT_TYPE"]

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
RULE_LABELS = ("group", "rule", "nic", "direction", "policy")
DEFAULT_LABELS = ("nic", "direction", "policy")

_HELP = {
    "sgagent_rule_packets_total":
        "Packets decided by a rule, per NIC and direction: the first packet of each accepted "
        "connection, every refused packet (group is empty for failsafe entries).",
    "sgagent_rule_bytes_total": "Bytes of the packets counted by sgagent_rule_packets_total.",
    "sgagent_default_packets_total":
        "Packets decided by a NIC's default for a direction (no rule matched); policy accept "
        "also counts inner access.",
    "sgagent_default_bytes_total": "Bytes of the packets counted by sgagent_default_packets_total.",
    "sgagent_audit_packets_total":
        "Packets an audit rule (mode: audit) would have decided, per NIC and direction; "
        "policy is what it would have done. It decided none of them.",
    "sgagent_audit_bytes_total": "Bytes of the packets counted by sgagent_audit_packets_total.",
    "sgagent_scrape_errors_total":
        "Scrapes in which reading the kernel's counters failed (rule metrics were left out).",
    "sgagent_kernel_read_duration_seconds":
        "Seconds the last read of the kernel's counters took.",
}


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _labelstr(names: Sequence[str], values: Sequence[str]) -> str:
    return "{" + ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values)) + "}"


def is_default(key: CounterKey) -> bool:
    return key.group is None and key.rule == "default"


def rule_labels(key: CounterKey) -> tuple[str, ...]:
    """Label values of a counter identity (``RULE_LABELS`` or, for defaults, ``DEFAULT_LABELS``)."""
    if is_default(key):
        return (key.nic, key.direction, key.policy)
    return (key.group or "", key.rule, key.nic, key.direction, key.policy)


class _State:
    __slots__ = ("raw_p", "raw_b", "off_p", "off_b", "cur_p", "cur_b", "default", "audit",
                 "labels", "labelstr")

    def __init__(self, key: CounterKey) -> None:
        self.raw_p = self.raw_b = self.off_p = self.off_b = self.cur_p = self.cur_b = 0
        self.default = is_default(key)
        self.audit = key.mode == "audit"
        self.labels = rule_labels(key)
        self.labelstr = _labelstr(DEFAULT_LABELS if self.default else RULE_LABELS, self.labels)

    @property
    def packets(self) -> int:
        return self.raw_p + self.off_p

    @property
    def bytes(self) -> int:
        return self.raw_b + self.off_b


class MonotonicCounters:
    """Per counter identity: the last raw kernel values and the offset added to them.

    When a kernel value drops (the counter was recreated from zero), the last raw values are
    added to the offsets: the exported value continues from where it was.  Packets and bytes
    reset together.  An identity missing from a read is forgotten, offset and all -- except
    when a read finds no counter at all: the table is gone (deleted behind the agent's back, or
    not yet re-applied), nothing is exported, and the states wait for the table to come back,
    so a drift repair between two scrapes does not reset every counter.  Not thread-safe;
    :class:`KernelCollector` serialises its use.
    """

    def __init__(self) -> None:
        # Keyed by a plain tuple or the counter's comment, not by CounterKey: its dataclass
        # __hash__ costs ~1.5 us a call, which would be most of an update at 10,000 rules.
        self._state: dict = {}

    def __len__(self) -> int:
        return len(self._state)

    def update(self, readings: Iterable) -> list[_State]:
        """Feed one complete read of the kernel (``CounterReading``s); return the current
        states, in reading order (``.packets``/``.bytes`` are the exported, monotonic values)."""
        return self.update_raw(((r.key.nic, r.key.direction, r.key.group, r.key.rule,
                                 r.key.policy, r.key.mode), r.key, r.packets, r.bytes)
                               for r in readings)

    def update_raw(self, rows: Iterable[tuple]) -> list[_State]:
        """Like :meth:`update`, from ``(ident, key, packets, bytes)`` rows, where ``ident`` is
        any hashable that stands for ``key`` one to one (a tuple of its fields, its comment)."""
        old = self._state
        new: dict = {}
        for ident, key, p, b in rows:
            st = new.get(ident)
            if st is None:
                st = old.get(ident)
                if st is None:
                    st = _State(key)
                st.cur_p, st.cur_b = p, b
                new[ident] = st
            else:                      # the same identity twice in one read: add them up
                st.cur_p += p
                st.cur_b += b
        if not new:                    # no table: export nothing, forget nothing
            return []
        states = list(new.values())
        for st in states:
            if st.cur_p < st.raw_p or st.cur_b < st.raw_b:   # recreated from zero
                st.off_p += st.raw_p
                st.off_b += st.raw_b
            st.raw_p, st.raw_b = st.cur_p, st.cur_b
        self._state = new
        return states


class KernelCollector:
    """The kernel's hit counters, read once per scrape through ``read_counters``."""

    def __init__(self, read_counters: Callable[[], list]) -> None:
        self._read = read_counters
        # A reader that offers read_raw() (NetlinkCounterReader) skips building readings.
        self._read_raw = getattr(read_counters, "read_raw", None)
        self._lock = threading.Lock()
        self._mono = MonotonicCounters()
        self._errors = 0
        self._duration = 0.0
        self._failing: str | None = None

    def _scrape(self) -> tuple[list[_State] | None, int, float]:
        # One lock over read + update: two concurrent scrapes must not feed the offsets out of
        # order (an older read after a newer one would look like a reset).
        with self._lock:
            start = time.perf_counter()
            try:
                if self._read_raw is not None:
                    states: list[_State] | None = self._mono.update_raw(self._read_raw())
                else:
                    states = self._mono.update(self._read())
            except Exception as exc:  # noqa: BLE001 - never let it break the other metrics
                self._errors += 1
                states = None
                msg = f"{type(exc).__name__}: {exc}"
                if self._failing != msg:
                    log.warning("metrics: reading the kernel's counters failed "
                                "(rule metrics left out of this scrape): %s", msg)
                self._failing = msg
            else:
                if self._failing is not None:
                    log.info("metrics: reading the kernel's counters works again")
                self._failing = None
            self._duration = time.perf_counter() - start
            return states, self._errors, self._duration

    # -- the standard collector interface -------------------------------------------------------
    def describe(self) -> list:
        return [
            CounterMetricFamily("sgagent_rule_packets", "", labels=RULE_LABELS),
            CounterMetricFamily("sgagent_rule_bytes", "", labels=RULE_LABELS),
            CounterMetricFamily("sgagent_default_packets", "", labels=DEFAULT_LABELS),
            CounterMetricFamily("sgagent_default_bytes", "", labels=DEFAULT_LABELS),
            CounterMetricFamily("sgagent_audit_packets", "", labels=RULE_LABELS),
            CounterMetricFamily("sgagent_audit_bytes", "", labels=RULE_LABELS),
            CounterMetricFamily("sgagent_scrape_errors", ""),
            GaugeMetricFamily("sgagent_kernel_read_duration_seconds", ""),
        ]

    def collect(self):
        states, errors, duration = self._scrape()
        rp = CounterMetricFamily("sgagent_rule_packets", _HELP["sgagent_rule_packets_total"],
                                 labels=RULE_LABELS)
        rb = CounterMetricFamily("sgagent_rule_bytes", _HELP["sgagent_rule_bytes_total"],
                                 labels=RULE_LABELS)
        dp = CounterMetricFamily("sgagent_default_packets",
                                 _HELP["sgagent_default_packets_total"], labels=DEFAULT_LABELS)
        db = CounterMetricFamily("sgagent_default_bytes", _HELP["sgagent_default_bytes_total"],
                                 labels=DEFAULT_LABELS)
        ap = CounterMetricFamily("sgagent_audit_packets", _HELP["sgagent_audit_packets_total"],
                                 labels=RULE_LABELS)
        ab = CounterMetricFamily("sgagent_audit_bytes", _HELP["sgagent_audit_bytes_total"],
                                 labels=RULE_LABELS)
        for st in states or ():
            p, b = (dp, db) if st.default else (ap, ab) if st.audit else (rp, rb)
            p.add_metric(st.labels, st.packets)
            b.add_metric(st.labels, st.bytes)
        yield from (rp, rb, dp, db, ap, ab)
        yield CounterMetricFamily("sgagent_scrape_errors", _HELP["sgagent_scrape_errors_total"],
                                  value=errors)
        yield GaugeMetricFamily("sgagent_kernel_read_duration_seconds",
                                _HELP["sgagent_kernel_read_duration_seconds"], value=duration)

    # -- the fast path: the same samples, written directly --------------------------------------
    def exposition_text(self) -> str:
        states, errors, duration = self._scrape()
        rules: list[_State] = []
        defaults: list[_State] = []
        audits: list[_State] = []
        for st in states or ():
            (defaults if st.default else audits if st.audit else rules).append(st)
        out: list[str] = []

        def family(name: str, kind: str, items: list, attr_p: bool) -> None:
            out.append(f"# HELP {name} {_HELP[name]}\n# TYPE {name} {kind}\n")
            if attr_p:
                out.extend([f"{name}{st.labelstr} {st.raw_p + st.off_p}\n" for st in items])
            else:
                out.extend([f"{name}{st.labelstr} {st.raw_b + st.off_b}\n" for st in items])

        family("sgagent_rule_packets_total", "counter", rules, True)
        family("sgagent_rule_bytes_total", "counter", rules, False)
        family("sgagent_default_packets_total", "counter", defaults, True)
        family("sgagent_default_bytes_total", "counter", defaults, False)
        family("sgagent_audit_packets_total", "counter", audits, True)
        family("sgagent_audit_bytes_total", "counter", audits, False)
        out.append("# HELP sgagent_scrape_errors_total "
                   f"{_HELP['sgagent_scrape_errors_total']}\n"
                   "# TYPE sgagent_scrape_errors_total counter\n"
                   f"sgagent_scrape_errors_total {errors}\n"
                   "# HELP sgagent_kernel_read_duration_seconds "
                   f"{_HELP['sgagent_kernel_read_duration_seconds']}\n"
                   "# TYPE sgagent_kernel_read_duration_seconds gauge\n"
                   f"sgagent_kernel_read_duration_seconds {floatToGoString(duration)}\n")
        return "".join(out)


class AgentCollector:
    """The agent's health, from one :meth:`AgentStats.snapshot` per scrape."""

    def __init__(self, stats: AgentStats) -> None:
        self._stats = stats

    def describe(self) -> list:
        return [
            InfoMetricFamily("sgagent_build", ""),
            HistogramMetricFamily("sgagent_apply_duration_seconds", ""),
            CounterMetricFamily("sgagent_applies", "", labels=("result",)),
            GaugeMetricFamily("sgagent_source_up", ""),
            GaugeMetricFamily("sgagent_last_sync_timestamp_seconds", ""),
            CounterMetricFamily("sgagent_source_errors", "", labels=("reason",)),
            CounterMetricFamily("sgagent_invalid_documents", ""),
            CounterMetricFamily("sgagent_drift_repairs", ""),
            CounterMetricFamily("sgagent_revoked_connections", ""),
            GaugeMetricFamily("sgagent_rules", "", labels=("nic", "direction")),
            CounterMetricFamily("sgagent_state_save_errors", ""),
            GaugeMetricFamily("sgagent_state_last_save_timestamp_seconds", ""),
        ]

    def collect(self):
        s = self._stats.snapshot()
        info = InfoMetricFamily("sgagent_build", "The running sgagent: version and backend.",
                                labels=("version", "backend"))
        info.add_metric((__version__, s.backend), {})
        yield info
        buckets = [(floatToGoString(le), n) for le, n in zip(APPLY_BUCKETS, s.apply_bucket_counts)]
        buckets.append(("+Inf", s.apply_count))
        yield HistogramMetricFamily(
            "sgagent_apply_duration_seconds",
            "Seconds each apply of a ruleset to the kernel took (successful or not).",
            buckets=buckets, sum_value=s.apply_sum)
        applies = CounterMetricFamily("sgagent_applies", "Applies of a ruleset, by result.",
                                      labels=("result",))
        for result, n in s.applies:
            applies.add_metric((result,), n)
        yield applies
        yield GaugeMetricFamily("sgagent_source_up",
                                "1 if the last fetch or watch of the document source worked.",
                                value=1 if s.source_up else 0)
        yield GaugeMetricFamily("sgagent_last_sync_timestamp_seconds",
                                "Unix time of the last successful sync with the source "
                                "(0: never).", value=s.last_sync)
        errors = CounterMetricFamily("sgagent_source_errors",
                                     "Failed fetches or watches of the document source, by reason.",
                                     labels=("reason",))
        for reason, n in s.source_errors:
            errors.add_metric((reason,), n)
        yield errors
        yield CounterMetricFamily("sgagent_invalid_documents",
                                  "Documents refused as invalid (the last good one stays).",
                                  value=s.invalid_documents)
        yield CounterMetricFamily("sgagent_drift_repairs",
                                  "Times the live ruleset differed from the wanted one and was "
                                  "re-applied.", value=s.drift_repairs)
        yield CounterMetricFamily("sgagent_revoked_connections",
                                  "Live connections cut because a change no longer allows them.",
                                  value=s.revoked_connections)
        rules = GaugeMetricFamily("sgagent_rules",
                                  "Rule decisions enforced per NIC and direction (failsafe "
                                  "entries included, defaults not).", labels=("nic", "direction"))
        for nic, direction, n in s.rules:
            rules.add_metric((nic, direction), n)
        yield rules
        yield CounterMetricFamily("sgagent_state_save_errors",
                                  "Failed saves of the last known good document (a reboot "
                                  "would restore the older one saved before).",
                                  value=s.state_save_errors)
        yield GaugeMetricFamily("sgagent_state_last_save_timestamp_seconds",
                                "Unix time the last known good document was last saved "
                                "(0: nothing saved).", value=s.last_save)


class MetricsRegistry(CollectorRegistry):
    """A registry that remembers its collectors in order and writes the text format fast.

    ``generate_latest(registry)`` works as usual; :meth:`exposition` gives the same text (the
    Prometheus text format 0.0.4), using a collector's ``exposition_text()`` where it has one.
    """

    def __init__(self) -> None:
        super().__init__(auto_describe=False)
        self._ordered: list = []
        self._order_lock = threading.Lock()

    def register(self, collector) -> None:
        super().register(collector)
        with self._order_lock:
            self._ordered.append(collector)

    def unregister(self, collector) -> None:
        super().unregister(collector)
        with self._order_lock:
            self._ordered.remove(collector)

    def exposition(self) -> bytes:
        with self._order_lock:
            collectors = list(self._ordered)
        parts = []
        for c in collectors:
            try:
                fast = getattr(c, "exposition_text", None)
                parts.append(fast() if fast is not None else generate_latest(c).decode())
            except Exception:  # noqa: BLE001 - one broken collector must not hide the rest
                log.exception("metrics: collector %r failed; left out of this scrape", c)
        return "".join(parts).encode()


class FlowLogCollector:
    """Flow logs (SEMANTICS section 9): records the reader wrote and lost, and per logged
    decision the records its rate limit suppressed (read from the kernel once per scrape
    through ``read_suppressed``; monotonic like the rule counters)."""

    def __init__(self, reader=None, read_suppressed: Callable[[], list] | None = None) -> None:
        self._reader = reader
        self._read = read_suppressed
        self._lock = threading.Lock()
        self._mono = MonotonicCounters()

    def describe(self) -> list:
        return [CounterMetricFamily("sgagent_log_records", ""),
                CounterMetricFamily("sgagent_log_lost", ""),
                CounterMetricFamily("sgagent_log_suppressed", "", labels=RULE_LABELS)]

    def collect(self):
        if self._reader is not None:
            yield CounterMetricFamily("sgagent_log_records",
                                      "Flow records the agent wrote.", value=self._reader.records)
            yield CounterMetricFamily("sgagent_log_lost",
                                      "Times the kernel dropped logged packets because the "
                                      "reader fell behind (each may be many records).",
                                      value=self._reader.lost)
        fam = CounterMetricFamily("sgagent_log_suppressed",
                                  "Flow records a logged rule's rate limit held back, per NIC "
                                  "and direction (group and rule empty: the NIC's default).",
                                  labels=RULE_LABELS)
        if self._read is not None:
            with self._lock:
                try:
                    states = self._mono.update(self._read())
                except Exception as exc:  # noqa: BLE001 - never break the other metrics
                    log.warning("metrics: reading the suppressed-record counters failed: %s", exc)
                    states = []
            for st in states:
                labels = st.labels if not st.default else ("", "default", *st.labels)
                fam.add_metric(labels, st.packets)
        yield fam


def build_registry(stats: AgentStats, read_counters: Callable[[], list], *,
                   process: bool = True, flowlog=None,
                   read_suppressed: Callable[[], list] | None = None) -> MetricsRegistry:
    """A registry with the kernel's hit counters (read once per scrape through
    ``read_counters``), the agent's health from ``stats``, flow-log figures (``flowlog``, the
    daemon's reader, and ``read_suppressed``) and (``process``) the standard ``process_*``
    metrics of this process."""
    registry = MetricsRegistry()
    registry.register(AgentCollector(stats))
    registry.register(KernelCollector(read_counters))
    if flowlog is not None or read_suppressed is not None:
        registry.register(FlowLogCollector(flowlog, read_suppressed))
    if process:
        ProcessCollector(registry=registry)
    return registry
