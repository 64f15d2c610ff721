"""An agent's registration in its fleet (``register: true`` under the etcd source): on one etcd
lease that it keeps alive, the agent writes

* ``<prefix>/endpoints/<host>``: ``{"nics": {NIC: [address, ...]}}``, the live addresses of
  its managed NICs, read from the kernel and written again whenever they change; every agent
  counts them as members of the groups those NICs are bound to (:mod:`.assemble`);
* ``<prefix>/status/<host>``: ``{"revision": R, "digest": D, "applied_at": T}`` after each
  apply: the etcd revision the applied document was assembled at, and its digest
  (``sgagent fleet status`` compares it with what the host should have).

When the agent stops, or its host dies, nothing deletes the keys: the lease runs out after its
TTL and etcd deletes them, so the host's addresses leave every group.  An agent restarted
within the TTL takes over without its addresses ever leaving.  A lease that ran out while etcd
was unreachable is granted anew and both keys are written again.

One thread does everything: it waits on the address notifications, a wake-up pipe and the
next keep-alive, whichever comes first.

Supervision, as the sources' (:mod:`sgagent.daemon.sources`): a step that fails (etcd
unreachable, a write refused) is logged and retried with a backoff; registration failing for
longer than the lease's TTL -- the host's addresses have left every group by then, or will
at once -- is logged as an error and ``report``-ed (the etcd source makes it an
``Unavailable`` of kind ``registration``: ``sgagent_source_errors_total{reason="registration"}``),
again every TTL while it lasts; its end is logged and, after such a report, ``report``-ed
(kind ``recovered``: the source says it is current again, if it is).  A thread that dies anyway is logged
with its traceback, reported (kind ``restarted``) and started again after a backoff; one that
dies :data:`~sgagent.daemon.sources.MAX_RESTARTS` times in a row without finishing a step is
given up (kind ``dead``), and :meth:`Registration.health` says so -- as it says when the thread
is stuck -- so that the daemon stops feeding the systemd watchdog."""

from __future__ import annotations

import base64
import json
import logging
import os
import select
import threading
import time
from typing import Any, Callable

from ..daemon.config import Backoff as BackoffConfig
from ..daemon.sources import MAX_RESTARTS, STALL_SLACK, Backoff, describe

log = logging.getLogger(__name__)


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


class Registration:
    """``client()`` makes an etcd3gw client; ``watch`` follows the kernel's addresses (an
    :class:`~sgagent.fleet.addresses.AddressWatch`, or anything with its methods);
    ``report(kind, reason)`` hears of failures (see the module), from the registration's
    thread."""

    def __init__(self, client: Callable[[], Any], prefix: str, host: str, ttl: int,
                 watch: Any, report: Callable[[str, str], None] | None = None,
                 restart_backoff: BackoffConfig | None = None) -> None:
        self._make_client, self.ttl, self.watch = client, ttl, watch
        self._report = report or (lambda kind, reason: None)
        self._restart_backoff = restart_backoff or BackoffConfig()
        self.endpoint_key = f"{prefix}/endpoints/{host}"
        self.status_key = f"{prefix}/status/{host}"
        self.lease: int | None = None
        self.grants = 0
        self._client: Any = None
        self._nics: list[str] | None = None   # not known before the first valid binding
        self._status: dict[str, Any] | None = None
        self._written: dict[str, bytes | None] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reread = True
        self.steps = 0                         # steps finished (with their wait)
        self.failing_since: float | None = None
        self.restarts = 0
        self._reported_at = 0.0
        self._beat = time.monotonic()
        self._dead: str | None = None
        self._owed = False  # a failure was reported: its end is reported too
        self._rfd, self._wfd = os.pipe()
        self._thread = threading.Thread(target=self._run, name="fleet-registration", daemon=True)

    # -- what the source tells it (any thread) -------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def follow(self, nics: list[str]) -> None:
        """Register the addresses of these NICs (the managed NICs of the applied binding)."""
        with self._lock:
            if nics == self._nics:
                return
            self._nics, self._reread = list(nics), True
        self._wake()

    def applied(self, revision: int, digest: str) -> None:
        with self._lock:
            self._status = {"revision": revision, "digest": digest,
                            "applied_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self._wake()

    def stop(self) -> None:
        """Stop keeping the lease alive (it runs out after its TTL: see the module)."""
        self._stop.set()
        self._wake()
        self._thread.join(5)
        for fd in (self._rfd, self._wfd):
            os.close(fd)
        self.watch.close()

    def health(self) -> str | None:
        """None while the thread makes progress (failing steps included: they are reported
        instead); otherwise why not -- it died for good, or is stuck."""
        if self._dead is not None:
            return self._dead
        if self._stop.is_set() or not self._thread.is_alive():
            return None
        idle = time.monotonic() - self._beat
        if idle > self.ttl + STALL_SLACK:
            return f"fleet registration: no step finished for {idle:.0f}s"
        return None

    @property
    def dead(self) -> bool:
        return self._dead is not None

    def _wake(self) -> None:
        try:
            os.write(self._wfd, b"x")
        except OSError:  # closed, or the pipe is full: it is awake anyway
            pass

    # -- the thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        """:meth:`_loop`, started again after a backoff if it dies (see the module)."""
        backoff = Backoff(self._restart_backoff)
        in_a_row = 0
        while not self._stop.is_set():
            steps = self.steps
            try:
                self._loop()
                return
            except BaseException as exc:  # noqa: BLE001 - a dying thread must be visible
                if self._stop.is_set():
                    return
                in_a_row = 1 if self.steps != steps else in_a_row + 1
                what = f"fleet registration thread died ({describe(exc)})"
                if in_a_row > MAX_RESTARTS:
                    self._dead = (f"{what}, {in_a_row} times in a row without finishing a "
                                  "step; not restarted")
                    log.critical("%s: %s", self.endpoint_key, self._dead, exc_info=True)
                    self._report("dead", self._dead)
                    return
                delay = backoff.next()
                self.restarts += 1
                log.error("%s: %s; restarting it in %.1fs", self.endpoint_key, what, delay,
                          exc_info=True)
                self._report("restarted", what)
                self._owed = True
                with self._lock:
                    self._reread = True
                end = time.monotonic() + delay
                while not self._stop.wait(min(1.0, max(0.0, end - time.monotonic()))):
                    self._beat = time.monotonic()
                    if time.monotonic() >= end:
                        break

    def _loop(self) -> None:
        addresses: dict[str, list[str]] = {}
        next_keepalive = 0.0
        delay = 0.2
        while not self._stop.is_set():
            try:
                with self._lock:
                    reread, self._reread = self._reread, False
                    nics, status = self._nics, self._status
                if nics is None and status is None:  # nothing to register yet
                    self._beat = time.monotonic()
                    self._wait(self.ttl / 3)
                    continue
                if reread and nics is not None:
                    addresses = self.watch.read(nics)
                if self.lease is None:
                    self._grant()
                    next_keepalive = time.monotonic() + self.ttl / 3
                if nics is not None:
                    self._put(self.endpoint_key, {"nics": addresses})
                if status is not None:
                    self._put(self.status_key, status)
                if time.monotonic() >= next_keepalive:
                    self._keepalive()
                    next_keepalive = time.monotonic() + self.ttl / 3
                delay = 0.2
                timeout = max(0.0, next_keepalive - time.monotonic())
                self._succeeded()
            except Exception as exc:  # noqa: BLE001 - etcd unreachable: try again, backing off
                log.warning("fleet registration %s: %s; retrying in %.1fs", self.endpoint_key,
                            _reason(exc), delay)
                self._failed(_reason(exc))
                self._client = None
                self._reread = True  # the addresses may not have been read
                if "lease not found" in str(exc):
                    self.lease = None  # it ran out: granted anew at the next step
                timeout, delay = delay, min(delay * 2, max(1.0, self.ttl / 3))
            self._wait(timeout)
            self.steps += 1  # a step and its wait: the thread can go on

    def _succeeded(self) -> None:
        self._beat = time.monotonic()
        if self.failing_since is not None:
            log.warning("fleet registration %s written again after %.0fs of failures",
                        self.endpoint_key, time.monotonic() - self.failing_since)
            self.failing_since = None
        if self._owed:
            self._owed = False
            self._report("recovered", f"fleet registration {self.endpoint_key} written again")

    def _failed(self, reason: str) -> None:
        now = self._beat = time.monotonic()
        if self.failing_since is None:
            self.failing_since, self._reported_at = now, now
            return
        if now - self.failing_since > self.ttl and now - self._reported_at >= self.ttl:
            first = self._reported_at == self.failing_since
            self._reported_at = now
            text = (f"fleet registration {self.endpoint_key} failing for "
                    f"{now - self.failing_since:.0f}s, longer than its lease ({self.ttl}s): "
                    f"this host's addresses have left every group ({reason})")
            if first:
                log.error("%s", text)
            self._report("registration", text)
            self._owed = True

    def _wait(self, timeout: float | None) -> None:
        """Until a wake-up, an address notification or ``timeout`` seconds."""
        ready, _, _ = select.select([self._rfd, self.watch], [], [], timeout)
        if self._rfd in ready:
            os.read(self._rfd, 4096)
        if self.watch in ready and self.watch.drain():
            with self._lock:
                self._reread = True

    def _etcd(self) -> Any:
        if self._client is None:
            self._client = self._make_client()
        return self._client

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        c = self._etcd()
        return c.post(c.get_url(path), json=body)

    def _grant(self) -> None:
        r = self._post("/lease/grant", {"TTL": self.ttl})
        if r.get("error"):
            raise RuntimeError(f"lease grant: {r['error']}")
        self.lease = int(r["ID"])
        self.grants += 1
        self._written.clear()  # the keys went with the old lease (if any): write them again
        log.info("fleet: registered as %s on lease %x (TTL %ds)", self.endpoint_key,
                 self.lease, self.ttl)

    def _keepalive(self) -> None:
        assert self.lease is not None
        r = self._post("/lease/keepalive", {"ID": self.lease})
        ttl = int((r.get("result") or {}).get("TTL") or 0)
        if ttl <= 0:
            log.warning("fleet: lease %x ran out (etcd unreachable for longer than its TTL?); "
                        "registering again", self.lease)
            self.lease = None
            self._wake()

    def _put(self, key: str, value: dict[str, Any]) -> None:
        raw = json.dumps(value, sort_keys=True).encode()
        if self._written.get(key) == raw:
            return
        if key == self.endpoint_key:
            log.info("fleet: %s = %s", key, raw.decode())
        self._post("/kv/put", {"key": _b64(key), "value": _b64(raw), "lease": self.lease})
        self._written[key] = raw


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if "Connection refused" in text:
        text = "connection refused"
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__
