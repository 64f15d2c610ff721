"""What the daemon reports about itself: applies, the source, drift, revocations, the saved
last known good document.

:class:`AgentStats` is a plain, thread-safe accumulator.  It knows nothing about Prometheus;
the collector in :mod:`sgagent.metrics.collector` takes a consistent :meth:`AgentStats.snapshot`
once per scrape.  No method ever raises on a value it can clamp, so reporting can never break the
daemon's enforcement path (a wrong ``result`` is a programming error and raises ``ValueError``).
"""

from __future__ import annotations

import bisect
import math
import re
import threading
import time
from dataclasses import dataclass

__all__ = ["AgentStats", "StatsSnapshot", "APPLY_BUCKETS", "APPLY_RESULTS", "MAX_REASONS"]

# Seconds.  A small document applies in a few milliseconds, 10,000 rules in about a second.
APPLY_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                                    10.0, 30.0, 60.0)
APPLY_RESULTS = ("success", "failure")
MAX_REASONS = 32          # distinct source error reasons kept; more are counted as "other"
_REASON_MAX_LEN = 40
_REASON_BAD = re.compile(r"[^a-z0-9_]+")


def _reason_token(reason: str) -> str:
    token = _REASON_BAD.sub("_", str(reason).strip().lower()).strip("_")[:_REASON_MAX_LEN]
    return token or "unknown"


@dataclass(frozen=True)
class StatsSnapshot:
    backend: str
    apply_bucket_counts: tuple[int, ...]   # cumulative, one per APPLY_BUCKETS entry
    apply_count: int
    apply_sum: float
    applies: tuple[tuple[str, int], ...]   # (result, count)
    source_up: bool
    last_sync: float                       # 0.0: never synced
    source_errors: tuple[tuple[str, int], ...]
    invalid_documents: int
    drift_repairs: int
    revoked_connections: int
    rules: tuple[tuple[str, str, int], ...]  # (nic, direction, rule decisions)
    state_save_errors: int = 0
    last_save: float = 0.0                 # 0.0: nothing saved


class AgentStats:
    """Thread-safe counters and gauges the daemon updates; read once per scrape."""

    def __init__(self, backend_name: str = "nftables") -> None:
        self.backend_name = backend_name
        self._lock = threading.Lock()
        self._buckets = [0] * len(APPLY_BUCKETS)   # non-cumulative
        self._apply_count = 0
        self._apply_sum = 0.0
        self._applies = {r: 0 for r in APPLY_RESULTS}
        self._source_up = False
        self._last_sync = 0.0
        self._source_errors: dict[str, int] = {}
        self._invalid = 0
        self._drift = 0
        self._revoked = 0
        self._rules: tuple[tuple[str, str, int], ...] = ()
        self._save_errors = 0
        self._last_save = 0.0

    # -- what the daemon calls ---------------------------------------------------------------
    def apply_finished(self, seconds: float, result: str) -> None:
        """One apply (attempt) took ``seconds``; ``result`` is "success" or "failure"."""
        if result not in self._applies:
            raise ValueError(f"apply result must be one of {APPLY_RESULTS}, not {result!r}")
        seconds = float(seconds)
        if not math.isfinite(seconds) or seconds < 0:
            seconds = 0.0
        i = bisect.bisect_left(APPLY_BUCKETS, seconds)   # le-buckets: value <= bound
        with self._lock:
            if i < len(self._buckets):
                self._buckets[i] += 1
            self._apply_count += 1
            self._apply_sum += seconds
            self._applies[result] += 1

    def source_up(self, up: bool) -> None:
        with self._lock:
            self._source_up = bool(up)

    def synced(self, when: float | None = None) -> None:
        """The last successful sync with the source happened at ``when`` (default: now)."""
        when = time.time() if when is None else float(when)
        with self._lock:
            if math.isfinite(when):
                self._last_sync = when

    def source_error(self, reason: str) -> None:
        """One failed fetch/watch of the source; ``reason`` a short token ("timeout", ...)."""
        token = _reason_token(reason)
        with self._lock:
            if token not in self._source_errors and len(self._source_errors) >= MAX_REASONS:
                token = "other"
            self._source_errors[token] = self._source_errors.get(token, 0) + 1

    def invalid_document(self) -> None:
        with self._lock:
            self._invalid += 1

    def drift_repaired(self) -> None:
        with self._lock:
            self._drift += 1

    def connections_revoked(self, n: int) -> None:
        n = int(n)
        if n <= 0:
            return
        with self._lock:
            self._revoked += n

    def state_saved(self, when: float | None = None) -> None:
        """The last known good document was saved at ``when`` (default: now)."""
        when = time.time() if when is None else float(when)
        with self._lock:
            if math.isfinite(when):
                self._last_save = when

    def state_save_failed(self) -> None:
        """Saving the last known good document failed (the older saved one stays)."""
        with self._lock:
            self._save_errors += 1

    def ruleset_applied(self, ruleset) -> None:
        """The :class:`sgagent.ir.Ruleset` now in force (``None``: nothing is enforced)."""
        rules = () if ruleset is None else tuple(
            (c.nic, c.direction, len(c.decisions)) for c in ruleset.chains)
        with self._lock:
            self._rules = rules

    # -- what the collector reads ------------------------------------------------------------
    def snapshot(self) -> StatsSnapshot:
        with self._lock:
            cumulative, total = [], 0
            for n in self._buckets:
                total += n
                cumulative.append(total)
            return StatsSnapshot(
                backend=self.backend_name,
                apply_bucket_counts=tuple(cumulative),
                apply_count=self._apply_count,
                apply_sum=self._apply_sum,
                applies=tuple(self._applies.items()),
                source_up=self._source_up,
                last_sync=self._last_sync,
                source_errors=tuple(sorted(self._source_errors.items())),
                invalid_documents=self._invalid,
                drift_repairs=self._drift,
                revoked_connections=self._revoked,
                rules=self._rules,
                state_save_errors=self._save_errors,
                last_save=self._last_save,
            )
