"""The reconcile loop: keep the kernel in step with the source, whatever happens.

One thread (the process's main thread) owns the backend and handles, in order, what the source
threads and the signal handlers put on one queue:

* a new valid document: compiled and applied in one transaction, saved as last known good,
  then the connections it refuses are cut (revocation);
* an invalid document: refused, logged with its paths; the rules in force stay;
* the source unreachable: logged (on change), retried by the source; the rules in force stay;
  at start, the last known good document is applied instead;
* every ``resync_interval``: the live ruleset is checked against what was applied and restored
  if anyone flushed or edited it (counted, logged); a document the kernel refused is retried;
  a last known good document that could not be saved is saved again;
* :data:`DRIFT` (from whoever learns of a change to the table, see
  :meth:`Daemon.request_drift_check`): the live ruleset is checked at once.

  The check costs nothing in the size of the table while it can: when the kernel's ruleset
  generation is still the one right after the daemon's own commit, nothing changed; when it
  moved but the monitor of the table's notifications reported no change by anyone else since
  the apply, only other tables changed.  Otherwise (a change reported, or no monitor, or a
  backend that cannot tell its generation) the live table is listed and compared with its
  listing after the apply, or -- when that was not read, because the monitor was trusted --
  restored at once.  So an apply is followed by no read of the whole table;
* SIGHUP: the source is read again from scratch and everything is checked at once;
* SIGTERM/SIGINT: exit 0. Nothing is removed: the kernel keeps enforcing the last rules.

systemd: ``READY=1`` after the first successful apply, ``WATCHDOG=1`` from this loop -- and
only while the source makes progress (:meth:`Source.health`), so that a hung loop or a source
that died for good gets the service restarted -- ``STATUS=`` lines, ``STOPPING=1``. Without a
watchdog, a source that makes no progress ends the daemon with status 1 instead.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..backend.kernel import Backend
from ..compiler import compile_document
from ..ir import Ruleset
from ..load import DocumentError
from ..model import Document
from .config import Config, SourceConfig
from .sdnotify import Notifier
from .sources import (Emit, Invalid, Snapshot, Source, SourceEvent, Unavailable, Unchanged,
                      describe)
from .state import Saved, StateStore

try:
    from ..metrics import AgentStats, MetricsServer, build_registry
except ImportError:  # the metrics package is optional: the daemon works without it
    AgentStats = MetricsServer = build_registry = None  # type: ignore[assignment,misc]

log = logging.getLogger("sgagent.daemon")

STARTUP_WAIT = 5.0  # seconds to wait for the source before falling back to the saved document
HEALTH_EVERY = 5.0  # seconds between checks of the source's progress (and at every ping)


class _NullStats:
    def __getattr__(self, name: str) -> Any:
        return lambda *a, **kw: None


@dataclass
class Applied:
    doc: Document
    ruleset: Ruleset
    raw: bytes
    digest: str
    origin: str
    live_text: str | None   # the table as listed right after the apply (None: not read)
    at: float
    generation: int | None = None   # the kernel's ruleset generation right after the apply


class _Signal:
    def __init__(self, name: str) -> None:
        self.name = name


HUP, TERM = _Signal("SIGHUP"), _Signal("SIGTERM")
DRIFT = _Signal("drift")  # someone saw the table change: check it now


class Daemon:
    """``backend``: what applies rulesets (default: nftables in ``cfg.netns``);
    ``source_factory``: makes the source from the function it hands its events to (default:
    the source ``cfg.source`` describes)."""

    def __init__(self, cfg: Config, *, notifier: Notifier | None = None,
                 backend: Backend | None = None,
                 source_factory: Callable[[Emit], Source] | None = None) -> None:
        self.cfg = cfg
        self._make_backend = (lambda: backend) if backend is not None else self._default_backend
        self._make_source = source_factory or (lambda emit: make_source(cfg.source, emit,
                                                                        cfg.netns))
        self.events: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self.notifier = notifier or Notifier()
        self.store = StateStore(cfg.state_dir)
        self.stats: Any = AgentStats("nftables") if AgentStats is not None else _NullStats()
        self.backend: Backend | None = None
        self.revoker: Any = None
        self.source: Source | None = None
        self.metrics_server: Any = None
        self.monitor: Any = None
        self.flow_logs: Any = None
        self.applied: Applied | None = None
        self.desired: Snapshot | None = None
        self.ready = False
        self.repairs = 0
        self.apply_failures = 0
        self._source_down: str | None = None
        self._lkg_tried = False
        self._refused_digest: str | None = None
        self._started = time.monotonic()
        self._unsaved: tuple[bytes, str, str] | None = None   # (raw, digest, origin) not saved
        self._save_error: str | None = None
        self._stuck: str | None = None
        self._drift_requests = 0    # how many times someone reported a change of the table
        self._drift_seen = 0        # ... as of the start of the last apply or check

    def request_drift_check(self) -> None:
        """Ask the loop to compare the live ruleset with the applied one now (thread-safe)."""
        self._drift_requests += 1
        self.events.put(DRIFT)

    # -- lifecycle ----------------------------------------------------------------------------
    def run(self) -> int:
        old = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)}
        signal.signal(signal.SIGHUP, lambda *_: self.events.put(HUP))
        signal.signal(signal.SIGTERM, lambda *_: self.events.put(TERM))
        signal.signal(signal.SIGINT, lambda *_: self.events.put(TERM))
        try:
            self._open()
            return self._loop()
        finally:
            self._close()
            for s, h in old.items():
                signal.signal(s, h)

    def _default_backend(self) -> Backend:
        from ..backends import make_backend
        return make_backend(self.cfg.backend, self.cfg.netns)

    def _open(self) -> None:
        self.backend = self._make_backend()
        self.stats.backend_name = self.backend.name  # sgagent_build_info: what auto picked
        if self.cfg.revocation:
            from .revoke import Revoker
            self.revoker = Revoker(self.cfg.netns)
        self._start_monitor()
        self._start_flow_logs()
        saved = self.store.saved_time()
        if saved is not None:
            self.stats.state_saved(saved)
        self._start_metrics()
        self.source = self._make_source(self.events.put)
        log.info("sgagent daemon starting: source %s, backend %s%s, state %s, resync every %gs, "
                 "revocation %s", self.source.description, self.backend.name,
                 f" in netns {self.cfg.netns}" if self.cfg.netns else "", self.cfg.state_dir,
                 self.cfg.resync_interval, "on" if self.cfg.revocation else "off")
        self.notifier.status("starting: waiting for the source")
        self.source.start()

    def _close(self) -> None:
        for what, fn in (("monitor", lambda: self.monitor and self.monitor.close()),
                         ("flow logs", lambda: self.flow_logs and self.flow_logs.stop()),
                         ("source", lambda: self.source and self.source.stop()),
                         ("metrics", lambda: self.metrics_server and self.metrics_server.close()),
                         ("revoker", lambda: self.revoker and self.revoker.close()),
                         ("backend", lambda: self.backend and self.backend.close())):
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - shutting down: keep going
                log.debug("closing %s: %s", what, exc)
        self.notifier.close()

    def _start_monitor(self) -> None:
        """Listen for the kernel's notifications of changes to the table, so that drift is
        repaired at once, not at the next full check (which stays as the backstop)."""
        assert self.backend is not None
        try:
            monitor = self.backend.watch(self.request_drift_check)
        except Exception as exc:  # noqa: BLE001 - enforcement goes on without it
            log.error("cannot listen for changes of the sgagent table (%s): drift is repaired "
                      "only every %gs", exc, self.cfg.resync_interval)
            return
        self.monitor = monitor

    def _start_flow_logs(self) -> None:
        """Read the kernel's copies of logged packets and write flow records (SEMANTICS 9)."""
        f = self.cfg.flow_logs
        if not f.enabled:
            return
        from ..flowlog.reader import FlowLogReader
        from ..flowlog.sink import FileSink, JournalSink
        from ..ir import NFLOG_GROUP
        try:
            sink = (FileSink(f.directory, f.max_bytes, f.backups) if f.output == "file"
                    else JournalSink())
            self.flow_logs = FlowLogReader(sink, NFLOG_GROUP, None, self.cfg.netns).start()
        except OSError as exc:  # enforcement goes on without it
            log.error("flow logs not written: %s", exc)
            return
        log.info("flow logs to %s", f.directory if f.output == "file" else "the journal")

    def _start_metrics(self) -> None:
        m = self.cfg.metrics
        if not m.enabled:
            return
        if MetricsServer is None or build_registry is None:
            log.warning("metrics are enabled but sgagent.metrics is not available; no metrics")
            return
        # Enforcement matters more than metrics: a metrics endpoint that cannot be set up as
        # configured is logged and left out (never served without its TLS or password).
        try:
            auth = None
            if m.basic_auth is not None:
                with open(m.basic_auth.password_file, encoding="utf-8") as fh:
                    auth = (m.basic_auth.username, fh.read().strip())
            # what logged decisions' rate limits held back, if the backend counts it
            suppressed = getattr(self.backend, "suppressed", None)
            registry = build_registry(self.stats, self.backend.counters,
                                      flowlog=self.flow_logs, read_suppressed=suppressed)
            self.metrics_server = MetricsServer(registry, m.address, m.port,
                                                tls_cert=m.tls_cert, tls_key=m.tls_key,
                                                basic_auth=auth).start()
        except (OSError, ValueError) as exc:
            log.error("metrics not served: %s", exc)
            return
        log.info("metrics on %s://%s:%d/metrics", "https" if m.tls_cert else "http",
                 m.address, m.port)

    # -- the loop -----------------------------------------------------------------------------
    def _loop(self) -> int:
        next_resync = time.monotonic() + self.cfg.resync_interval
        wd = self.notifier.watchdog_interval
        next_ping = next_health = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= next_health or (wd is not None and now >= next_ping):
                next_health = now + HEALTH_EVERY
                if not self._check_progress(wd is not None):
                    return 1
            if wd is not None and now >= next_ping:
                if self._stuck is None:
                    self.notifier.watchdog()
                next_ping = now + wd
            if self.applied is None and not self._lkg_tried and now - self._started >= STARTUP_WAIT:
                self._apply_last_known_good("no answer from the source yet")
            wait = min(next_resync, next_health) - now
            if wd is not None:
                wait = min(wait, next_ping - now)
            if self.applied is None and not self._lkg_tried:
                wait = min(wait, self._started + STARTUP_WAIT - now)
            try:
                ev = self.events.get(timeout=max(0.0, wait))
            except queue.Empty:
                ev = None
            if ev is TERM:
                log.info("SIGTERM: exiting; the rules stay in force")
                self.notifier.stopping()
                return 0
            if ev is HUP:
                log.info("SIGHUP: reading the source again and checking the ruleset")
                self.notifier.reloading()
                assert self.source is not None
                self.source.refresh(force=True)
                self._resync()
                next_resync = time.monotonic() + self.cfg.resync_interval
                if self.ready:
                    self.notifier.notify("READY=1", f"STATUS={self._status_text()}")
                continue
            if ev is DRIFT:
                if self.applied is not None:
                    self._check_drift()
                continue
            if ev is not None:
                self._handle(ev)
            if time.monotonic() >= next_resync:
                assert self.source is not None
                self.source.refresh(force=False)
                self._resync()
                next_resync = time.monotonic() + self.cfg.resync_interval

    def _check_progress(self, watchdog: bool) -> bool:
        """Ask the source whether it makes progress; False: give up (no watchdog to do it)."""
        assert self.source is not None
        problem = self.source.health()
        if problem is None:
            if self._stuck is not None:
                log.warning("the source %s makes progress again", self.source.description)
                self._stuck = None
                self._status()
            return True
        if self._stuck is None:
            self._stuck = problem
            self.stats.source_up(False)
            if not self.source.dead:  # a dead one was counted as such when it died
                self.stats.source_error("stalled")
            if watchdog:
                log.critical("the source %s makes no progress (%s): the watchdog is no longer "
                             "fed, so that systemd restarts the service; the rules in force "
                             "stay", self.source.description, problem)
            else:
                log.critical("the source %s makes no progress (%s) and there is no watchdog: "
                             "exiting with status 1 so that the service manager restarts the "
                             "daemon; the rules in force stay", self.source.description,
                             problem)
            self._status()
        return watchdog

    def _handle(self, ev: SourceEvent) -> None:
        if isinstance(ev, Unavailable):
            self.stats.source_up(False)
            self.stats.source_error(ev.kind)
            if self._source_down != ev.reason:
                log.warning("source %s unavailable: %s; the rules in force stay", ev.origin,
                            ev.reason)
            self._source_down = ev.reason
            if self.applied is None and not self._lkg_tried:
                self._apply_last_known_good(ev.reason)
            self._status()
            return
        if self._source_down is not None:
            log.info("source %s reachable again", ev.origin)
            self._source_down = None
        self.stats.source_up(True)
        if isinstance(ev, Unchanged):
            if self.applied is not None and self.desired is not None \
                    and self.desired.digest == self.applied.digest:
                self.stats.synced()
            self._status()
            return
        if isinstance(ev, Invalid):
            self.stats.invalid_document()
            errs = ev.error.errors
            log.error("refused the document from %s: %d error%s; the rules in force stay",
                      ev.origin, len(errs), "" if len(errs) == 1 else "s")
            for e in ev.error.lines():  # the first few, then a count
                log.error("  %s", e)
            if self.applied is None and not self._lkg_tried:
                self._apply_last_known_good("the source's document is invalid")
            self._status()
            return
        assert isinstance(ev, Snapshot)
        self.desired = ev
        if self.applied is not None and ev.digest == self.applied.digest:
            self.stats.synced()
            self._report_applied(ev)
            return
        if self._apply(ev.doc, ev.raw, ev.digest, ev.origin, "update", since=ev.at):
            self._report_applied(ev)

    def _report_applied(self, ev: Snapshot) -> None:
        """Tell the source which of its documents is enforced (a fleet's status)."""
        try:
            self.source.applied(ev)
        except Exception as exc:  # noqa: BLE001 - a report never stops enforcement
            log.error("the source could not take note of the apply: %s", describe(exc))

    # -- applying -----------------------------------------------------------------------------
    def _apply(self, doc: Document, raw: bytes, digest: str, origin: str, why: str,
               since: float | None = None, save: bool = True) -> bool:
        try:
            previous = (self.applied.doc, self.applied.ruleset) if self.applied else None
            rs = compile_document(doc, previous)
        except Exception as exc:  # noqa: BLE001 - a document the compiler cannot express
            self.stats.invalid_document()
            log.error("refused the document from %s: cannot compile it: %s", origin, exc)
            return False
        t0 = time.perf_counter()
        reported = self._drift_requests
        try:
            # a repair replaces the whole table: a backend that sends only differences from
            # what it last loaded cannot see an edit made behind its back
            result = self.backend.apply(rs, full=why == "repair")
        except Exception as exc:  # noqa: BLE001 - ApplyError, NftError: nothing was changed
            dt = time.perf_counter() - t0
            self.stats.apply_finished(dt, "failure")
            self.apply_failures += 1
            if self._refused_digest != digest or why != "retry":
                log.error("applying the document from %s failed; the previous rules stay in "
                          "force: %s", origin, exc)
            self._refused_digest = digest
            self._status()
            return False
        dt = time.perf_counter() - t0
        self.stats.apply_finished(dt, "success")
        self.stats.ruleset_applied(rs)
        if self.flow_logs is not None:
            self.flow_logs.instance = doc.host.instance
        generation = getattr(result, "generation", None)
        live = None
        if generation is None or self.monitor is None:
            # no way to tell a foreign change by the generation: the listing is the reference
            try:
                live = self.backend.live_text()
            except Exception as exc:  # noqa: BLE001
                log.warning("cannot read the live ruleset back: %s", exc)
                live = ""
        previous = self.applied
        self._drift_seen = reported
        self.applied = Applied(doc, rs, raw, digest, origin, live, time.time(), generation)
        self._refused_digest = None
        rules = sum(len(c.decisions) for c in rs.chains)
        lat = f", {1000 * (time.monotonic() - since):.1f} ms after the source changed" \
            if since is not None else ""
        log.info("applied the document from %s (%s): %d rule decisions on %d NICs in %.1f ms%s",
                 origin, why, rules, len(rs.nics), 1000 * dt, lat)
        # Connections the new rules refuse are cut before the document is saved (writing and
        # syncing it takes 0.2-0.5 s at 100,000 rules); a crash in between leaves the older
        # saved document, as a crash before the save always did.
        if self.revoker is not None and (previous is None or previous.digest != digest
                                         or why == "repair"):
            self._revoke(doc)
        if save:
            self._save(raw, digest, origin)
        self._ready(origin)
        self.stats.synced()
        del previous
        _release_memory(getattr(result, "mode", "full") == "full")
        return True

    def _save(self, raw: bytes, digest: str, origin: str) -> bool:
        """Save the applied document as last known good. On failure the older saved document
        stays what a reboot restores: logged with that consequence, counted, shown in STATUS,
        and tried again at every full check until it works or a newer document replaces it."""
        a = self.applied
        live = kernel = None
        if a is not None and a.digest == digest:
            live = self.backend.fingerprint(a.live_text) if a.live_text is not None else None
            kernel = self._kernel_state(a.generation)
        try:
            self.store.save(raw, origin, live, kernel, known_digest=digest)
        except Exception as exc:  # noqa: BLE001 - OSError mostly; never stops enforcement
            self.stats.state_save_failed()
            why = (exc.strerror or str(exc)) if isinstance(exc, OSError) else describe(exc)
            if self._unsaved is not None and self._unsaved[1] == digest \
                    and self._save_error == why:
                log.debug("saving the last known good document failed again: %s", why)
                return False
            info = self.store.info()
            if info is not None and info.digest == digest:
                log.error("cannot save the last known good document in %s (%s); the copy "
                          "saved at %s is the same document, so a reboot would restore it "
                          "all the same", self.cfg.state_dir, why, info.saved_at)
                self._unsaved = self._save_error = None
                return False
            self._unsaved, self._save_error = (raw, digest, origin), why
            if info is not None:
                log.error("cannot save the last known good document in %s (%s): a reboot "
                          "would restore the older document saved at %s from %s, not the one "
                          "now enforced; retrying at every full check", self.cfg.state_dir,
                          why, info.saved_at, info.origin)
            else:
                log.error("cannot save the last known good document in %s (%s): nothing is "
                          "saved, so a reboot would leave the host without sgagent's rules "
                          "until the source answers; retrying at every full check",
                          self.cfg.state_dir, why)
            self._status()
            return False
        self.stats.state_saved()
        if self._unsaved is not None:
            log.warning("saved the last known good document in %s again (%s)",
                        self.cfg.state_dir, origin)
            self._unsaved = self._save_error = None
            self._status()
        return True

    def _revoke(self, doc: Document) -> None:
        t0 = time.perf_counter()
        try:
            res = self.revoker.revoke(doc)
        except Exception as exc:  # noqa: BLE001 - revocation must never stop enforcement
            log.error("revocation failed: %s", exc)
            return
        self.stats.connections_revoked(res.revoked)
        if res.revoked or res.failed:
            log.info("revoked %d of %d tracked connections the new rules refuse (%.1f ms)%s",
                     res.revoked, res.examined, 1000 * (time.perf_counter() - t0),
                     f"; {res.failed} could not be deleted" if res.failed else "")
            for f in (res.flows or [])[:20]:
                log.info("  revoked %s", f)
        else:
            log.debug("revocation: none of %d tracked connections is refused", res.examined)

    def _apply_last_known_good(self, reason: str) -> None:
        self._lkg_tried = True
        try:
            saved = self.store.load()
        except DocumentError as exc:
            log.error("the saved document is unusable: %s", exc)
            return
        if self._keep_live_table(saved, reason):
            return
        if saved is None:
            log.warning("no usable document yet (%s) and nothing saved in %s; waiting for the "
                        "source", reason, self.cfg.state_dir)
            return
        log.warning("source not usable at start (%s): applying the last known good document "
                    "(saved %s from %s)", reason, saved.saved_at, saved.origin)
        self._apply(saved.document, saved.raw, saved.digest,
                    f"last known good ({saved.origin})", "fallback", save=False)

    def _keep_live_table(self, saved: Saved | None, reason: str) -> bool:
        """At start, with no usable document from the source: if the kernel already enforces
        an sgagent table (the boot restore's, or an earlier run's), keep it rather than load
        the saved document over it -- the saved one may be older, if saving the last applied
        one failed.  When the table is the saved document's (same fingerprint), the daemon
        takes it as applied, so drift is repaired from then on; otherwise the live rules stay
        as they are until the source answers.  False if there is no live table."""
        try:
            listing = self.backend.live_text()
        except Exception as exc:  # noqa: BLE001 - then the saved document is applied
            log.error("cannot read the live ruleset: %s", exc)
            return False
        if not listing:
            return False
        rs = self._saved_table(saved, listing)
        if saved is not None and rs is not None:
            origin = f"last known good ({saved.origin})"
            self._drift_seen = self._drift_requests
            self.applied = Applied(saved.document, rs, saved.raw, saved.digest, origin,
                                   listing, time.time(), self._generation())
            log.warning("source not usable at start (%s): the kernel already enforces the last "
                        "known good document (saved %s from %s); keeping it", reason,
                        saved.saved_at, saved.origin)
            self._ready(origin)
            return True
        what = "no document is saved" if saved is None else \
            f"the saved document (saved {saved.saved_at} from {saved.origin}) is another one"
        log.warning("source not usable at start (%s): the kernel already enforces an sgagent "
                    "table and %s; keeping the live rules until the source answers (they are "
                    "not checked for drift until then)", reason, what)
        self._ready("the sgagent table already loaded")
        return True

    def _saved_table(self, saved: Saved | None, listing: str) -> Ruleset | None:
        """The saved document's ruleset if the live table (``listing``) is exactly what it
        loads: the kernel is still at the state saved with it (nothing committed since), or
        the table has the saved fingerprint, or it lists as the document's table does."""
        if saved is None:
            return None
        try:
            rs = compile_document(saved.document)
        except Exception as exc:  # noqa: BLE001
            log.error("the saved document cannot be compiled: %s", exc)
            return None
        if saved.kernel is not None and saved.kernel == self._kernel_state(self._generation()):
            return rs
        if saved.live is not None and saved.live == self.backend.fingerprint(listing):
            return rs
        try:
            return rs if not self.backend.diff(rs) else None
        except Exception as exc:  # noqa: BLE001 - then it is not taken as the saved one
            log.warning("cannot compare the live table with the saved document's: %s", exc)
            return None

    def _generation(self) -> int | None:
        """The kernel's ruleset generation now (None: the backend cannot tell)."""
        read = getattr(self.backend, "generation", None)
        if read is None:
            return None
        try:
            return read()
        except Exception:  # noqa: BLE001 - then the listing is compared
            return None

    def _kernel_state(self, generation: int | None) -> str | None:
        """Boot, network namespace and ruleset generation, as saved with a document: while
        all three are the same, nothing was committed since it was applied."""
        if generation is None:
            return None
        try:
            boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
            ns = os.stat(f"/run/netns/{self.cfg.netns}" if self.cfg.netns
                         else "/proc/self/ns/net")
        except OSError:
            return None
        return f"{boot} {ns.st_dev}:{ns.st_ino} {self.cfg.netns or ''} {generation}"

    def _ready(self, origin: str) -> None:
        if not self.ready:
            self.ready = True
            self.notifier.ready(self._status_text())
            log.info("ready: the kernel enforces the document from %s", origin)
        else:
            self._status()

    def _resync(self) -> None:
        """The periodic full check: retry a refused document, repair drift, save the last
        known good document if that failed."""
        if self._unsaved is not None and self.applied is not None \
                and self._unsaved[1] == self.applied.digest:
            self._save(*self._unsaved)
        if self.applied is None:
            if self.desired is not None:
                self._apply(self.desired.doc, self.desired.raw, self.desired.digest,
                            self.desired.origin, "retry")
            elif not self._lkg_tried:
                self._apply_last_known_good("no document from the source yet")
            return
        if self.desired is not None and self.desired.digest != self.applied.digest:
            # the kernel refused the newest document: try again; if it still refuses and the
            # table had been tampered with, repair it, which may be what blocked it
            d = self.desired
            if not self._apply(d.doc, d.raw, d.digest, d.origin, "retry") and self._check_drift():
                self._apply(d.doc, d.raw, d.digest, d.origin, "retry")
            return
        self._check_drift()

    def _check_drift(self) -> bool:
        a = self.applied
        assert a is not None
        reported = self._drift_requests
        if a.generation is not None:
            now = self._generation()
            if now == a.generation:
                self._drift_seen = reported   # a report of our own commit's (an overrun)
                return False                  # nothing committed since the apply
            if now is not None and self.monitor is not None and reported == self._drift_seen:
                return False   # other tables' commits: the monitor reported nothing of ours
            if now is None and a.live_text is None:
                log.error("cannot read the kernel's ruleset generation: drift not checked")
                return False
            if a.live_text is None:
                log.warning("drift: the live ruleset is not the one applied (changed by "
                            "another process after generation %d, now %s); restoring it",
                            a.generation, now)
                return self._repair()
        try:
            live = self.backend.live_text()
        except Exception as exc:  # noqa: BLE001
            log.error("cannot read the live ruleset: %s", exc)
            return False
        self._drift_seen = reported
        if live == a.live_text:
            return False
        if not live:
            what = "the sgagent table is gone"
        else:
            # not difflib: it is quadratic (1.5 s for a 15,000-line listing)
            had, has = (a.live_text or "").splitlines(), live.splitlines()
            gone, came = set(had) - set(has), set(has) - set(had)
            first = next((f"-{x}" for x in had if x in gone), None) or \
                next((f"+{x}" for x in has if x in came), "?")
            what = f"{len(gone) + len(came)} lines differ, first: {first.strip()}" \
                if gone or came else "the same lines in another order"
        log.warning("drift: the live ruleset is not the one applied (%s); restoring it", what)
        return self._repair()

    def _repair(self) -> bool:
        a = self.applied
        assert a is not None
        if self._apply(a.doc, a.raw, a.digest, a.origin, "repair", save=False):
            self.repairs += 1
            self.stats.drift_repaired()
            log.warning("drift repaired (%d repair%s since start)", self.repairs,
                        "" if self.repairs == 1 else "s")
            return True
        return False

    # -- status -------------------------------------------------------------------------------
    def _status_text(self) -> str:
        if self.applied is None:
            return "no rules applied yet" + (f"; source down: {self._source_down}"
                                             if self._source_down else "") + (
                f"; the source makes no progress: {self._stuck}" if self._stuck else "")
        rules = sum(len(c.decisions) for c in self.applied.ruleset.chains)
        text = f"enforcing {self.applied.origin} ({rules} rule decisions)"
        if self._source_down:
            text += f"; source down: {self._source_down}"
        if self.desired is not None and self.desired.digest != self.applied.digest:
            text += "; a newer document was refused by the kernel"
        if self._unsaved is not None:
            text += (f"; NOT saved as last known good ({self._save_error}): a reboot would "
                     "restore an older document")
        if self._stuck is not None:
            text += f"; the source makes no progress: {self._stuck}"
        return text

    def _status(self) -> None:
        self.notifier.status(self._status_text())


def _release_memory(collect: bool = True) -> None:
    """After an apply the previous document, its parse and its render are garbage: collect
    them (``collect``: a full collection, after an apply that replaced the table; it takes
    seconds at 100,000 rules, so a change-sized apply leaves the cycles to the collector's
    own schedule) and hand the freed heap back to the system (glibc keeps it otherwise), so
    that an idle daemon's RSS reflects what it holds, not its peak."""
    import ctypes
    import gc
    if collect:
        gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def setup_logging(level: str) -> None:
    """Plain lines on stderr (journald adds time and unit); ``<N>`` priority prefixes when
    stderr is the journal, so that errors show as errors there."""
    journal = bool(os.environ.get("JOURNAL_STREAM"))
    prio = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
            logging.CRITICAL: 2}

    class _Fmt(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            text = super().format(record)
            if journal:
                return "\n".join(f"<{prio.get(record.levelno, 6)}>{line}"
                                 for line in text.splitlines())
            return text

    handler = logging.StreamHandler()
    # Libraries stay quiet below WARNING even at log_level debug (pyroute2 resets its own
    # logger's level when imported, so a filter on the handler rather than logger levels).
    noisy = ("urllib3", "httpx", "httpcore", "watchfiles", "pyroute2", "etcd3gw", "asyncio")
    handler.addFilter(lambda r: r.levelno >= logging.WARNING
                      or not r.name.startswith(noisy))
    fmt = "%(levelname)s %(message)s" if journal else \
        "%(asctime)s.%(msecs)03d %(levelname)s %(message)s"
    handler.setFormatter(_Fmt(fmt, datefmt="%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))


def run(cfg: Config) -> int:
    setup_logging(cfg.log_level)
    daemon = Daemon(cfg)
    try:
        return daemon.run()
    except Exception:
        if daemon.ready:  # a crash while enforcing: logged, exit 1 for Restart=on-failure
            log.exception("the daemon crashed; the rules stay in force")
            return 1
        raise


def make_source(cfg: SourceConfig, emit: Emit, netns: str | None = None) -> Source:
    """The source the config names (its module imported only when used); ``netns`` is where
    the kernel's addresses are read for a fleet's registration."""
    if cfg.file is not None:
        from .source_file import FileSource
        return FileSource(cfg.file, emit)
    if cfg.https is not None:
        from .source_https import HttpsSource
        return HttpsSource(cfg.https, emit)
    assert cfg.etcd is not None
    from .source_etcd import EtcdSource
    return EtcdSource(cfg.etcd, emit, netns)
